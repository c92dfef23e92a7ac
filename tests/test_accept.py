"""The sampler chain and the acceptance walk, against naive references."""
import numpy as np
import pytest

from aded_edge.accept import Sampling, make_chooser, rejected_choices, sampling_distribution, walk_tree
from aded_edge.draft import DraftTree


def naive_distribution(logits, s):
    """llama.cpp: top_k -> top_p -> min_p -> temp -> softmax, written the slow way."""
    cand = sorted(((float(l), i) for i, l in enumerate(logits)), key=lambda x: (-x[0], x[1]))
    if s.top_k > 0:
        cand = cand[: s.top_k]
    if s.top_p < 1.0:
        z = sum(np.exp(l - cand[0][0]) for l, _ in cand)
        cum, keep = 0.0, []
        for l, i in cand:
            keep.append((l, i))
            cum += np.exp(l - cand[0][0]) / z
            if cum >= s.top_p:
                break
        cand = keep
    if s.min_p > 0:
        cand = [(l, i) for l, i in cand if l >= cand[0][0] + np.log(s.min_p)]
    w = [np.exp((l - cand[0][0]) / s.temp) for l, _ in cand]
    return {i: x / sum(w) for (_, i), x in zip(cand, w)}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("s", [Sampling(0.8, 40, 0.95, 0.05), Sampling(1.0, 0, 1.0, 0.0), Sampling(0.5, 5, 0.5, 0.1),
                               Sampling(1.3, 100, 0.9, 0.0), Sampling(0.7, 1, 0.95, 0.05)])
def test_distribution_matches_naive(seed, s):
    logits = np.random.default_rng(seed).normal(0, 3, 300).astype(np.float32)
    ids, p = sampling_distribution(logits, s)
    want = naive_distribution(logits, s)
    assert sorted(ids.tolist()) == sorted(want)
    assert np.allclose([want[i] for i in ids], p)


def test_negative_temperature_is_full_softmax():
    logits = np.array([1.0, 2.0, 3.0])
    ids, p = sampling_distribution(logits, Sampling(-1.0, 1, 0.1, 0.9))
    assert np.allclose(p, np.exp(logits) / np.exp(logits).sum())


def test_draws_follow_the_distribution():
    logits = np.array([2.0, 1.0, 0.0, -5.0])
    s = Sampling(1.0, 0, 1.0, 0.0, seed=3)
    draw = make_chooser(s)
    counts = np.bincount([draw(logits) for _ in range(20000)], minlength=4) / 20000
    _, p = sampling_distribution(logits, s)
    assert np.allclose(counts[:3], p[:3], atol=0.015)


def tree(tokens, parents):
    depth = []
    for p in parents:
        depth.append(1 if p < 0 else depth[p] + 1)
    n = len(tokens)
    return DraftTree(np.array(tokens, np.int32), np.array(parents, np.int32), np.array(depth, np.int32),
                     np.ones(n, np.float32), np.ones(n, np.int32))


def logits_for(choice_by_row, vocab=10):
    def row(i):
        x = np.zeros(vocab)
        x[choice_by_row[i]] = 1.0
        return x
    return row


def chosen(choice_by_row, chooser):
    """choice(i) for walk_tree: the chooser applied to row i's logits."""
    row = logits_for(choice_by_row)
    return lambda i: chooser(row(i))


def argmax_rows(choice_by_row):
    """Every batch row's argmax, as AdedLlama passes it to rejected_choices."""
    row = logits_for(choice_by_row)
    return np.array([int(np.argmax(row(i))) for i in range(max(choice_by_row) + 1)])


def test_walk_accepts_longest_matching_path_plus_bonus():
    #        pending -> 5 -> 6 -> 7
    #                \-> 8 -> 9
    t = tree([5, 8, 6, 9, 7], [-1, -1, 0, 1, 2])
    greedy = make_chooser(Sampling(temp=0.0))
    # model: after pending 8, after 8 -> 9, after 9 -> 3 (not in tree)
    acc, out = walk_tree(t, chosen({0: 8, 2: 9, 4: 3}, greedy))
    assert acc == [1, 3] and out == [8, 9, 3]
    acc, out = walk_tree(t, chosen({0: 5, 1: 6, 3: 7, 5: 2}, greedy))
    assert acc == [0, 2, 4] and out == [5, 6, 7, 2]
    acc, out = walk_tree(t, chosen({0: 4}, greedy))
    assert acc == [] and out == [4]
    acc, out = walk_tree(tree([], []), chosen({0: 1}, greedy))
    assert acc == [] and out == [1]


def test_rejected_choices_are_the_models_argmax_after_each_rejected_node():
    #        pending(4) -> 5 -> 6 -> 7
    #                   \-> 8 -> 9
    t = tree([5, 8, 6, 9, 7], [-1, -1, 0, 1, 2])
    choices = {0: 8, 1: 1, 2: 9, 3: 2, 4: 3, 5: 0}   # row 1 + j: the model after node j
    acc, _ = walk_tree(t, chosen(choices, make_chooser(Sampling(temp=0.0))))
    assert acc == [1, 3]
    a, b, c = rejected_choices(t, acc, argmax_rows(choices), pending=4)
    # nodes 0 (5 after the pending 4), 2 (6 after 5), 4 (7 after 6) were rejected
    assert list(zip(a.tolist(), b.tolist(), c.tolist())) == [(4, 5, 1), (5, 6, 2), (6, 7, 0)]
    a, b, c = rejected_choices(t, [0, 2, 4], argmax_rows(choices), pending=4)
    assert list(zip(a.tolist(), b.tolist(), c.tolist())) == [(4, 8, 9), (8, 9, 3)]
    assert all(len(x) == 0 for x in rejected_choices(tree([], []), [], argmax_rows({0: 1}), pending=4))
