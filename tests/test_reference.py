"""The ADED reference drafter (draftretriever 0.1.1): conversion of its output into DraftTree,
and drafting from a real datastore built by the wheel."""
import random
import sys

import numpy as np
import pytest

from aded_edge.draft import DraftTree
from aded_edge.reference import ReferenceDrafter, paths_to_tree, retrieve_indices_to_parents

A, B, C, D, E = 1, 2, 3, 4, 5
N_VOCAB = 500


def assert_valid_tree(tree: DraftTree, max_nodes: int, max_depth: int):
    n = len(tree)
    assert n <= max_nodes
    for arr, dtype in ((tree.tokens, np.int32), (tree.parents, np.int32), (tree.depth, np.int32),
                       (tree.prob, np.float32), (tree.visits, np.int32)):
        assert arr.dtype == dtype and arr.shape == (n,)
    siblings = set()
    for i in range(n):
        p = int(tree.parents[i])
        assert -1 <= p < i, "parents precede children"
        assert tree.depth[i] == (1 if p < 0 else tree.depth[p] + 1)
        assert 1 <= tree.depth[i] <= max_depth
        assert (p, int(tree.tokens[i])) not in siblings, "duplicate sibling"
        siblings.add((p, int(tree.tokens[i])))
        assert 0 < tree.prob[i] <= (1.0 if p < 0 else tree.prob[p]) + 1e-7
    assert (tree.visits == 1).all()


def first_chain(tree: DraftTree) -> list[int]:
    chain, node = [], -1
    while True:
        child = next((j for j in range(len(tree)) if tree.parents[j] == node), None)
        if child is None:
            return chain
        chain.append(int(tree.tokens[child]))
        node = child


def shape(parents) -> tuple:
    """Canonical shape of a tree given by parent indices (-1: root), for isomorphism checks."""
    children: dict[int, list[int]] = {}
    for i, p in enumerate(parents):
        children.setdefault(int(p), []).append(i)

    def sub(node):
        return tuple(sorted(sub(c) for c in children.get(node, [])))
    return sub(-1)


# ---------------------------------------------------------------- conversion (no wheel needed)

# what Reader.search returned on the synthetic corpus below (paths right-padded with -2)
PATHS = [[3, 4, 280, 111], [3, 4, -2, -2], [3, 4, 290, 314], [3, 4, 254, 243], [3, 4, 377, 212],
         [3, 4, 290, -2]]
RETRIEVE = [[0, 1, 2, 6, 10], [0, 1, 2, 5, 9], [0, 1, 2, 4, 8], [0, 1, 2, 3, 7]]


def test_paths_to_tree_exact():
    t = paths_to_tree(PATHS)
    assert t.tokens.tolist() == [3, 4, 290, 254, 280, 377, 243, 111, 314, 212]
    assert t.parents.tolist() == [-1, 0, 1, 1, 1, 1, 3, 4, 2, 5]
    assert t.depth.tolist() == [1, 2, 3, 3, 3, 3, 4, 4, 4, 4]
    assert np.allclose(t.prob, [1, 1, 2 / 6, 1 / 6, 1 / 6, 1 / 6, 1 / 6, 1 / 6, 1 / 6, 1 / 6])
    assert t.visits.tolist() == [1] * 10
    assert_valid_tree(t, 10, 4)


def test_paths_to_tree_branching_root_and_caps():
    t = paths_to_tree(np.array([[5, 6], [7, -2], [5, 8]]))
    assert t.tokens.tolist() == [5, 7, 6, 8]
    assert t.parents.tolist() == [-1, -1, 0, 0]
    assert t.depth.tolist() == [1, 1, 2, 2]
    assert np.allclose(t.prob, [2 / 3, 1 / 3, 1 / 3, 1 / 3])

    head = paths_to_tree(PATHS, max_nodes=4)
    assert head.tokens.tolist() == [3, 4, 290, 254] and head.parents.tolist() == [-1, 0, 1, 1]
    shallow = paths_to_tree(PATHS, max_depth=2)
    assert shallow.tokens.tolist() == [3, 4] and shallow.parents.tolist() == [-1, 0]
    assert np.allclose(shallow.prob, [1, 1])
    for empty in (paths_to_tree([]), paths_to_tree([[-2, -2]]), paths_to_tree(PATHS, max_nodes=0),
                  paths_to_tree(PATHS, max_depth=0)):
        assert len(empty) == 0


def test_retrieve_indices_to_parents():
    parents = retrieve_indices_to_parents(RETRIEVE)
    assert parents.tolist() == [-1, 0, 1, 1, 1, 1, 2, 3, 4, 5]
    # the verification tree the reference builds is the trie paths_to_tree builds
    assert shape(parents) == shape(paths_to_tree(PATHS).parents)
    assert retrieve_indices_to_parents([[0, 1, 3], [0, 2, -1]]).tolist() == [-1, -1, 0]
    assert retrieve_indices_to_parents([]).tolist() == []
    with pytest.raises(ValueError):
        retrieve_indices_to_parents([[0, 1, 2], [0, 3, 2]])   # node 2 under two parents
    with pytest.raises(ValueError):
        retrieve_indices_to_parents([[0, 2, -1]])             # node 1 never reached


def test_missing_wheel_names_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "draftretriever", None)   # makes `import draftretriever` fail
    with pytest.raises(ImportError, match=r"draftretriever==0\.1\.1"):
        ReferenceDrafter([[1, 2, 3]], N_VOCAB, tmp_path)


# ---------------------------------------------------------------- real datastore (needs the wheel)

def corpus(seed=0):
    """50 streams of background tokens (100..399), each with A B C D in it: in the corpus (A, B)
    is always followed by C and (B, C) by D; what follows D varies."""
    rng = random.Random(seed)
    streams = []
    for _ in range(50):
        s = [rng.randrange(100, 400) for _ in range(30)]
        s[10:14] = [A, B, C, D]
        streams.append(s)
    return streams


def corpus_trigrams(streams):
    return {tuple(s[i:i + 3]) for s in streams for i in range(len(s) - 2)}


@pytest.fixture
def drafter(tmp_path):
    pytest.importorskip("draftretriever", reason="the reference wheel draftretriever==0.1.1 is not installed")
    return ReferenceDrafter(corpus(), N_VOCAB, tmp_path / "ref")


def test_draft_follows_corpus_sequence(drafter):
    trigrams = corpus_trigrams(corpus())
    for _ in range(20):   # the reference's MCTS is randomised: check every draw
        t = drafter.draft([9, 9, A, B])
        assert_valid_tree(t, 64, 4)
        assert t.tokens[:2].tolist() == [C, D] and t.parents[:2].tolist() == [-1, 0]
        assert t.tokens[t.depth == 1].tolist() == [C] and t.tokens[t.depth == 2].tolist() == [D]
        assert first_chain(t)[:2] == [C, D]
        assert t.prob[0] == 1.0 and len(t) > 2
        for i in range(len(t)):   # every edge is a tri-gram of the corpus
            p = int(t.parents[i])
            a, b = (A, B) if p < 0 else ((B if t.parents[p] < 0 else int(t.tokens[t.parents[p]])),
                                         int(t.tokens[p]))
            assert (a, b, int(t.tokens[i])) in trigrams


def test_tree_is_the_reference_verification_tree(drafter):
    for _ in range(10):
        t = drafter.draft([9, 9, A, B], max_nodes=64)
        paths, _mask, _tree_indices, position_ids, retrieve = drafter.last_search
        parents = retrieve_indices_to_parents(retrieve)
        assert len(t) == len(parents) == len(position_ids) - 1
        assert shape(t.parents) == shape(parents)
        depth = np.zeros(len(parents), np.int32)
        for i, p in enumerate(parents):
            depth[i] = 1 if p < 0 else depth[p] + 1
        assert depth.tolist() == list(position_ids[1:])


@pytest.mark.parametrize("max_nodes,max_depth", [(1, 4), (2, 4), (3, 2), (8, 4), (64, 1), (64, 3), (5, 8)])
def test_caps(drafter, max_nodes, max_depth):
    for _ in range(5):
        t = drafter.draft([9, 9, A, B], max_nodes=max_nodes, max_depth=max_depth)
        assert_valid_tree(t, max_nodes, max_depth)
        assert t.tokens[:min(2, max_nodes, max_depth)].tolist() == [C, D][:min(2, max_nodes, max_depth)]
    # an unseen context and too short a history give an empty tree (the wheel itself would abort)
    assert len(drafter.draft([9, 9, 7, 8])) == 0
    assert len(drafter.draft([A])) == 0 and len(drafter.draft([])) == 0
    assert len(drafter.draft([9, A, B], max_nodes=0)) == 0


def test_constructor_defaults_cap_draft(tmp_path):
    pytest.importorskip("draftretriever", reason="the reference wheel draftretriever==0.1.1 is not installed")
    d = ReferenceDrafter(corpus(), N_VOCAB, tmp_path, max_nodes=3, max_depth=2)
    t = d.draft(np.array([9, 9, A, B], np.int32))
    assert_valid_tree(t, 3, 2)
    assert t.tokens[:2].tolist() == [C, D]


def test_search_adapts_to_context(drafter):
    """The reference adapts inside search: a tri-gram of the context (A B E, never in the corpus)
    becomes a draft edge at once, and stays in the reader for later drafts."""
    before = drafter.draft([9, 9, A, B])
    assert E not in before.tokens.tolist()
    drafter.update([A, B, E])   # documented no-op: it must not change anything
    assert E not in drafter.draft([9, 9, A, B]).tokens.tolist()
    adapted = drafter.draft([9, A, B, E, A, B])
    assert sorted(adapted.tokens[adapted.depth == 1].tolist()) == [C, E]
    later = drafter.draft([9, 9, A, B])
    assert sorted(later.tokens[later.depth == 1].tolist()) == [C, E]


def test_restore_takes_the_reader_back_to_its_snapshot(drafter):
    """bench --repeat: the reader's adaptation persists, so without restore a repeated prompt
    would draft what the reference learnt from its own earlier run of the same text. restore()
    forgets what was searched since snapshot() and keeps what was searched before it."""
    fresh = drafter.snapshot()
    drafter.draft([9, A, B, E, A, B])                     # A B E, never in the corpus, adapted in
    adapted = drafter.snapshot()
    assert E in drafter.draft([9, 9, A, B]).tokens.tolist()
    for _ in range(2):                                    # a snapshot serves any number of restores
        drafter.restore(fresh)
        for _ in range(5):
            assert drafter.draft([9, 9, A, B]).tokens[:2].tolist() == [C, D]
            assert E not in drafter.draft([9, 9, A, B]).tokens.tolist()
        drafter.restore(adapted)                          # the searches before it are searched again
        t = drafter.draft([9, 9, A, B])
        assert sorted(t.tokens[t.depth == 1].tolist()) == [C, E]


def test_rebuild_in_same_dir_and_vocab_check(tmp_path):
    pytest.importorskip("draftretriever", reason="the reference wheel draftretriever==0.1.1 is not installed")
    rng = random.Random(1)
    big = [[rng.randrange(100, 400) for _ in range(2000)] for _ in range(5)]
    ReferenceDrafter(big, N_VOCAB, tmp_path)
    small = ReferenceDrafter(corpus(), N_VOCAB, tmp_path)   # replaces the larger index file
    t = small.draft([9, 9, A, B])
    assert t.tokens[:2].tolist() == [C, D]
    with pytest.raises(ValueError):
        ReferenceDrafter([[1, 2, N_VOCAB]], N_VOCAB, tmp_path)
    with pytest.raises(ValueError):
        small.draft([1, N_VOCAB])


def test_reader_keeps_twelve_most_frequent_successors(tmp_path):
    """The reference's Reader keeps the 12 most probable successors of each pair (top_k = 12)."""
    pytest.importorskip("draftretriever", reason="the reference wheel draftretriever==0.1.1 is not installed")
    streams = [[7, 8, 200 + i] for i in range(20) for _ in range(i + 1)]   # 200 + i seen i + 1 times
    d = ReferenceDrafter(streams, N_VOCAB, tmp_path)
    for _ in range(5):
        t = d.draft([9, 7, 8])
        assert_valid_tree(t, 64, 4)
        assert sorted(t.tokens.tolist()) == list(range(208, 220)) and (t.depth == 1).all()
