"""MCTS draft trees: validity on random matrices, caps, and the batch layout kernel."""
import numpy as np
import pytest

from aded_edge.config import DraftConfig
from aded_edge.draft import DraftTree, build_draft, tree_layout
from aded_edge.trigram import TrigramMatrix


def random_matrix(seed, v=60, n=3000, top_k=12):
    rng = np.random.default_rng(seed)
    m = TrigramMatrix(v, top_k=top_k)
    # a skewed stream: repeated phrases plus noise, so rows have a few strong successors
    phrases = [rng.integers(0, v, rng.integers(2, 8)).tolist() for _ in range(20)]
    stream = []
    while len(stream) < n:
        stream += phrases[rng.integers(0, len(phrases))] if rng.random() < 0.8 else [int(rng.integers(0, v))]
    m.update(stream)
    return m, stream


def _path(tree, i):
    """The tokens from the root to node i."""
    out = []
    while i >= 0:
        out.append(int(tree.tokens[i]))
        i = int(tree.parents[i])
    return out[::-1]


def assert_valid_tree(tree: DraftTree, matrix, context, cfg, max_nodes):
    n = len(tree)
    assert n <= max_nodes
    assert tree.tokens.dtype == np.int32 and tree.parents.dtype == np.int32
    seen = set()
    for i in range(n):
        p = int(tree.parents[i])
        assert -1 <= p < i, "parents must precede children"
        assert tree.depth[i] == (1 if p < 0 else tree.depth[p] + 1)
        assert 1 <= tree.depth[i] <= cfg.max_depth
        key = (p, int(tree.tokens[i]))
        assert key not in seen, "duplicate sibling"
        seen.add(key)
        a, b = (context[-2], context[-1]) if p < 0 else (
            (context[-1] if tree.parents[p] < 0 else int(tree.tokens[tree.parents[p]])), int(tree.tokens[p]))
        succ, probs = matrix.successors(a, b, cfg.top_k)
        assert tree.tokens[i] in succ.tolist(), "every child is a matrix successor of its parent pair"
        parent_prob = 1.0 if p < 0 else tree.prob[p]
        j = succ.tolist().index(tree.tokens[i])
        assert tree.prob[i] == pytest.approx(parent_prob * probs[j], rel=1e-5)
        if p >= 0:
            assert tree.visits[i] <= tree.visits[p]


@pytest.mark.parametrize("seed", range(8))
def test_mcts_trees_are_valid(seed):
    m, stream = random_matrix(seed)
    rng = np.random.default_rng(seed + 100)
    for cfg in (DraftConfig(), DraftConfig(max_nodes=8, max_depth=3, n_simulations=40),
                DraftConfig(max_nodes=200, max_depth=8, n_simulations=400, top_k=4)):
        for _ in range(10):
            i = int(rng.integers(2, len(stream)))
            ctx = stream[i - 2:i]
            tree = build_draft(m, ctx, cfg)
            assert_valid_tree(tree, m, ctx, cfg, cfg.max_nodes)
            assert len(tree) > 0  # every context token of the stream has a bigram row
            for k in (0, 1, len(tree) // 2):
                head = tree.head(k)
                assert_valid_tree(head, m, ctx, cfg, k)


def test_tighter_caps_and_unknown_context():
    m, stream = random_matrix(1)
    tree = build_draft(m, stream[-2:], DraftConfig(), max_nodes=5, max_depth=2)
    assert len(tree) <= 5 and (tree.depth <= 2).all()
    assert len(build_draft(m, stream[-2:], DraftConfig(), max_nodes=0)) == 0
    fresh = TrigramMatrix(60)
    assert len(build_draft(fresh, [1, 2], DraftConfig())) == 0
    assert len(build_draft(m, [stream[0]], DraftConfig())) >= 0  # one token of context works
    with pytest.raises(ValueError):
        build_draft(m, [], DraftConfig())
    with pytest.raises(ValueError):
        build_draft(m, [1, 60], DraftConfig())


def test_most_likely_chain_is_drafted_first():
    m = TrigramMatrix(20)
    m.update([1, 2, 3, 4, 5, 6] * 5)
    tree = build_draft(m, [1, 2], DraftConfig())
    assert tree.tokens[:4].tolist() == [3, 4, 5, 6]
    assert tree.parents[:4].tolist() == [-1, 0, 1, 2]


def naive_layout(parents):
    n = len(parents)
    leaves = [j for j in range(n) if j not in set(parents)]
    rows = [[] for _ in range(n + 1)]
    for sid, leaf in enumerate(leaves):
        node = leaf
        while node >= 0:
            rows[node + 1].append(sid)
            node = parents[node]
        rows[0].append(sid)
    return rows if n else [[0]]


@pytest.mark.parametrize("seed", range(5))
def test_tree_layout_matches_naive(seed):
    m, stream = random_matrix(seed)
    tree = build_draft(m, stream[5:7], DraftConfig(max_nodes=30))
    for k in (0, 1, 5, len(tree)):
        t = tree.head(k)
        seq = np.zeros((65, 64), np.int32)
        n_seq = np.zeros(65, np.int32)
        n_leaves = tree_layout(t, seq, n_seq)
        want = naive_layout(t.parents.tolist())
        assert n_leaves == len(want[0])
        for r, ids in enumerate(want):
            assert seq[r, :n_seq[r]].tolist() == ids
    if n_leaves > 1:
        with pytest.raises(ValueError, match="more leaves"):   # fewer sequence ids than leaves
            tree_layout(t, np.zeros((65, n_leaves - 1), np.int32), np.zeros(65, np.int32))


@pytest.mark.parametrize("seed", range(4))
def test_chain_first_puts_the_heaviest_chain_in_front_and_stays_a_tree(seed):
    from aded_edge.draft import chain_first
    m, stream = random_matrix(seed)
    cfg = DraftConfig(max_nodes=30)
    ctx = stream[10:12]
    tree = build_draft(m, ctx, cfg)
    weight = np.random.default_rng(seed).random(len(tree))
    t = chain_first(tree, weight)
    assert_valid_tree(t, m, ctx, cfg, cfg.max_nodes)
    j = 0                                     # the front chain: node j is a child of node j - 1
    while j < len(t) and t.parents[j] == j - 1:
        j += 1
    assert j >= 1 and (j - 1) not in t.parents.tolist()  # the chain runs until a node without children
    def path_weight(leaf):                    # summed weight from the root to a leaf of `tree`
        total = 0.0
        while leaf >= 0:
            total, leaf = total + weight[leaf], int(tree.parents[leaf])
        return total
    front = next(i for i in range(len(tree)) if _path(tree, i) == _path(t, j - 1))  # its leaf in `tree`
    leaves = [i for i in range(len(tree)) if i not in tree.parents.tolist()]
    assert path_weight(front) == pytest.approx(max(path_weight(leaf) for leaf in leaves))
    assert sorted(zip(t.tokens.tolist(), t.depth.tolist())) == sorted(zip(tree.tokens.tolist(), tree.depth.tolist()))


def test_nodes_know_whether_their_path_was_seen_in_this_context():
    from aded_edge.trigram import count_static
    m = TrigramMatrix(50, top_k=4)
    m.set_static(*count_static([[1, 2, 9, 8, 7] * 5], 50, top_k=4))   # the corpus says 1 2 -> 9 -> 8
    m.update([1, 2, 3, 4, 5])                                          # this context says 1 2 -> 3 -> 4
    tree = build_draft(m, [1, 2], DraftConfig(max_nodes=16))
    path = {}
    for i in range(len(tree)):
        p = tree.parents[i]
        path[i] = (path[p] if p >= 0 else ()) + (int(tree.tokens[i]),)
    seen = {path[i]: bool(tree.seen[i]) for i in range(len(tree))}
    assert seen[(3,)] and seen[(3, 4)]
    assert not seen[(9,)] and not seen.get((9, 8), False)
    assert len(tree.head(3).seen) == 3 and tree.take(np.arange(len(tree))).seen.tolist() == tree.seen.tolist()


def test_context_lookup_finds_the_latest_earlier_occurrence_never_itself():
    from aded_edge.draft import ContextLookup
    lk = ContextLookup([1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8])
    assert lk.chain(4) == ([], 0)            # (3, 7, 8) never occurred before the end
    lk.extend([1, 2, 3])
    assert lk.chain(4) == ([7, 8, 1, 2], 3)  # the latest earlier (1, 2, 3) was followed by 7 8 ...
    assert lk.chain(1) == ([7], 3)
    lk2 = ContextLookup([5, 6, 7])
    assert lk2.chain(3) == ([], 0)           # the suffix alone is not a match
    lk2.extend([5, 6, 7])
    assert lk2.chain(3) == ([5, 6, 7], 3)


def test_a_copy_stops_after_an_end_token():
    from aded_edge.draft import ContextLookup
    end = 2                                  # e.g. <|im_end|>: the user's message ends, the template goes on
    prompt = [1, 30, 31, 32, 33, 34, end, 40, 41, 42]
    lk = ContextLookup(prompt + [30, 31, 32], ends={end, 1})
    assert lk.chain(8) == ([33, 34, end], 3)         # the answer may end where its input did, not go on
    assert ContextLookup(prompt + [30, 31, 32]).chain(8) == ([33, 34, end, 40, 41, 42, 30, 31], 3)
    lk.extend([33])
    assert lk.chain(8) == ([34, end], 3)


def test_a_copy_is_short_until_the_text_follows_it():
    from aded_edge.draft import FRESH_DEPTH, RESYNC_AFTER, ContextLookup
    source = list(range(100, 160))
    lk = ContextLookup(source + [7] + source[:3])
    assert lk.chain(32) == (source[3:3 + FRESH_DEPTH], 3)       # a bare 3-token match: a short chain
    lk.extend(source[3:3 + RESYNC_AFTER])                       # the text follows it ...
    at = 3 + RESYNC_AFTER
    assert lk.chain(32) == (source[at:at + 32], 3)              # ... and is offered the whole copy depth


def test_context_lookup_copies_the_occurrence_whose_preceding_text_matches_longest():
    from aded_edge.draft import ContextLookup
    text = [5, 1, 2, 3, 4, 4, 6, 1, 2, 3, 7, 7, 0, 5, 1, 2, 3]
    lk = ContextLookup(text)
    assert lk.chain(3) == ([4, 4, 6], 3)     # "5 1 2 3" matches 4 tokens there, "6 1 2 3" only 3
    lk.extend([9, 6, 1, 2, 3])
    assert lk.chain(2) == ([7, 7], 3)        # now the end reads "6 1 2 3": the other occurrence
    assert lk.chain(0) == ([], 0)


def test_context_lookup_resumes_the_copy_after_an_edit_near_where_it_left_off():
    from aded_edge.draft import RESYNC_AFTER, RESYNC_WINDOW, ContextLookup
    source = list(range(100, 140))           # the input: 40 distinct tokens
    text = source + [7] + source[:10]        # the answer has copied 10 of them so far
    assert RESYNC_AFTER <= 4 and 3 <= RESYNC_WINDOW < 19   # (the distances below)
    lk = ContextLookup(text)
    assert lk.chain(2) == ([110, 111], 3)    # copying: the last three tokens are in the input
    lk.extend([110, 111, 112, 113])          # the answer follows the copy ...
    lk.extend([99, 98, 116])                 # ... then an edit: 114 115 became 99 98, then the input again
    assert lk.chain(3) == ([117, 118, 119], 1)       # resumed after the last token, at the copy point
    lk.extend([555])
    assert lk.chain(3) == ([], 0)            # 555 is nowhere in the input: no copy
    strict = ContextLookup(text, min_order=2)
    strict.chain(2)
    strict.extend([110, 111, 112, 113, 99, 98, 116])
    assert strict.chain(3) == ([], 0)        # one token of match is not enough for it
    strict.extend([117])
    assert strict.chain(3) == ([118, 119, 120], 2)
    spurious = ContextLookup(text)           # a copy the answer never followed is not resumed
    spurious.chain(2)
    spurious.extend([99, 98, 116])
    assert spurious.chain(3) == ([], 0)
    for last, expected in ((124, ([125], 1)), (108, ([], 0))):
        lk = ContextLookup(source + [7] + source[:3])
        assert lk.chain(1) == ([103], 3)
        lk.extend([103, 104, 105, 106])      # followed up to source[7] ...
        lk.extend(list(range(200, 220)) + [last])   # ... then 20 new tokens: the copy point is near source[28]
        assert lk.chain(1) == expected       # 124 lies 3 tokens from it, 108 19 tokens
    assert ContextLookup(text[-12:]).chain(2) == ([], 0)   # no copy yet: nothing to resume


def _drafted_chains(lookup, output, n=6):
    """The copy chain offered before each token of output is written (as decoding asks)."""
    chains = []
    for x in output:
        chains.append(lookup.chain(n)[0])
        lookup.extend([x])
    return chains


def test_context_lookup_applies_the_edits_the_text_makes_to_its_later_copies():
    from aded_edge.draft import ContextLookup
    head = [1, 2, 3, 4, 5, 6]
    # a rename: 20 becomes 20 99 (a token inserted after it) wherever it occurs
    source = head + [10, 20, 11, 12, 20, 13, 14, 15, 20, 16, 17, 18, 20, 19, 30, 31, 32]
    out = [y for x in source for y in ((x, 99) if x == 20 else (x,))]
    chains = _drafted_chains(ContextLookup(source + [7], min_order=2), out)
    later = chains[out.index(13):]           # after the text made the edit once
    pairs = [(c[k], c[k + 1]) for c in later for k in range(len(c) - 1) if c[k] == 20]
    assert pairs and all(b == 99 for _, b in pairs)   # every later copy of 20 is drafted renamed
    assert chains[out.index(14)] == [14, 15, 20, 99, 16, 17]
    assert chains[out.index(16)] == [16, 17, 18, 20, 99, 19]   # on its copy right after the insertion
    # a re-indent: 60 after a newline 50 becomes 70
    source = head + [50, 60, 11, 12, 50, 60, 13, 14, 15, 50, 60, 16, 17, 50, 60, 18, 19]
    out = [70 if x == 60 else x for x in source]
    chains = _drafted_chains(ContextLookup(source + [7], min_order=2), out)
    later = [c for c in chains[out.index(13):] if 50 in c[:-1]]
    assert later and all(c[c.index(50) + 1] == 70 and 60 not in c for c in later)
    # an edit the text does not make again is forgotten: the third 20 stays 20
    source = head + [10, 20, 11, 12, 20, 13, 14, 15, 20, 16, 17, 18, 20, 19, 30, 31, 32]
    out = head + [10, 20, 99, 11, 12, 20, 99, 13, 14, 15, 20, 16, 17, 18]
    lookup = ContextLookup(source + [7], min_order=2)
    chains = _drafted_chains(lookup, out)
    assert chains[out.index(16)][:2] == [99, 16]      # the edit was still expected there ...
    assert lookup.chain(3)[0] == [20, 19, 30]         # ... and is not any more


def test_context_lookup_keeps_the_copy_it_follows_over_a_shorter_match_in_its_own_text():
    """A re-indented copy: each of the answer's lines ends like its last one (9 50, then the new
    indent 70), so the answer's own earlier line matches its last three tokens; the copy the
    answer has followed, edit applied, for longer than that match goes on to the next line."""
    from aded_edge.draft import ContextLookup
    head = [1, 2, 3, 4, 5, 6]
    source = head + [9, 50, 60, 21, 22, 23, 24, 9, 50, 60, 31, 32, 33, 34, 9, 50, 60, 41, 42, 43, 44, 8]
    out = [70 if x == 60 else x for x in source]
    chains = _drafted_chains(ContextLookup(source + [7]), out)
    second, third = out.index(31), out.index(41)
    assert chains[second][:2] == [31, 32] and chains[third][:2] == [41, 42]
    # a longer match elsewhere still wins: the answer repeats its own first line, not the input
    lookup = ContextLookup(source + [7])
    _drafted_chains(lookup, out[:second])
    lookup.extend([21, 22, 23, 24, 9, 50, 70])       # line 1 again, as the answer wrote it
    assert lookup.chain(2)[0] == [21, 22]


def test_a_reindented_line_is_copied_and_its_indentation_learnt():
    """An answer that re-indents its input (wraps a function into a class): each line starts with
    another indentation token (62 where the input has 60; both spaces only), so its first three
    tokens occur nowhere. The occurrence that differs only in an indentation token of the same
    class is copied, and the new indentation is drafted for the lines that follow."""
    from aded_edge.draft import ContextLookup
    blanks = {60: -1, 61: -1, 62: -1, 63: -1, 64: -2}
    lines = [[21, 22, 23, 24, 25, 26, 9], [31, 32, 33, 34, 35, 36, 9], [41, 42, 43, 44, 45, 46, 9]]
    source = [1, 2, 3, 4, 5] + [x for line in lines for x in [60] + line] + [8]
    lookup = ContextLookup(source + [7, 11, 12], indents=blanks)
    lookup.extend([62, 21, 22])                       # the first line, indented anew
    chain, order = lookup.chain(12)
    assert order == 3 and chain[:5] == [23, 24, 25, 26, 9]
    assert chain[5:7] == [62, 31]                     # the next line with the answer's indentation
    assert ContextLookup(source + [7, 11, 12, 62, 21, 22]).chain(12) == ([], 0)   # (exact keys only: nothing)
    # an exact occurrence still wins over one that differs in blanks
    exact = ContextLookup(source + [62, 21, 22, 77, 78, 7, 11, 12, 62, 21, 22], indents=blanks)
    assert exact.chain(2)[0] == [77, 78]
    # another class (a line break and spaces, where the input has spaces alone) or no indentation
    for first in (64, 65):
        assert ContextLookup(source + [7, 11, 12, first, 21, 22], indents=blanks).chain(4) == ([], 0)


def test_indentation_tokens_match_each_other_when_ranking_occurrences():
    """Two lines share their last four tokens; the earlier one is indented like the text's line up
    to its indentation token (60 there, 62 here), so it matches the text longer and is copied,
    where an exact comparison would tie and take the latest."""
    from aded_edge.draft import ContextLookup
    source = [1, 2, 60, 30, 40, 41, 42, 50, 51, 3, 4, 70, 30, 40, 41, 42, 52, 53, 5]
    text = source + [9, 62, 30, 40, 41, 42]
    assert ContextLookup(text, indents={60: -1, 62: -1}).chain(2)[0] == [50, 51]
    assert ContextLookup(text).chain(2)[0] == [52, 53]


def test_indent_class_groups_indentation_by_its_line_breaks():
    from aded_edge.draft import indent_class
    assert indent_class(b"    ") == indent_class(b"\t") == indent_class(b" ") == -1
    assert indent_class(b"\n    ") == indent_class(b"\r\n  ") == -2 and indent_class(b"\n\n  ") == -3
    for other in (b"", b"\n", b"\n\n", b" x", b"x ", b"\n  y"):
        assert indent_class(other) == 0, other


def test_chain_first_with_weights_fronts_the_chain_of_largest_summed_weight():
    from aded_edge.draft import chain_first
    # root children 0 (weight .9, a leaf) and 1 (.6, with a chain 2 -> 3 of .5 and .5 below it)
    tree = DraftTree(np.array([10, 11, 12, 13], np.int32), np.array([-1, -1, 1, 2], np.int32),
                     np.array([1, 1, 2, 3], np.int32), np.ones(4, np.float32), np.ones(4, np.int32))
    t = chain_first(tree, np.array([0.9, 0.6, 0.5, 0.5]))
    assert t.tokens.tolist() == [11, 12, 13, 10] and t.parents.tolist() == [-1, 0, 1, -1]
    assert chain_first(tree, np.array([0.9, 0.6, 0.1, 0.1])).tokens.tolist()[0] == 10  # 0.9 > 0.8


def test_copy_chain_is_merged_into_the_tree_as_a_valid_tree():
    from aded_edge.draft import with_copy_chain
    m, stream = random_matrix(3)
    cfg = DraftConfig(max_nodes=16, max_depth=4)
    tree = build_draft(m, stream[-2:], cfg)
    first = int(tree.tokens[np.flatnonzero(tree.parents == -1)[0]])
    chain = [first, 59, 58, 57]              # starts on an existing root child, then leaves the tree
    merged = with_copy_chain(tree, chain, 2)
    siblings = set()
    for i in range(len(merged)):             # a tree: parents first, depths consistent, no twin siblings
        p = int(merged.parents[i])
        assert -1 <= p < i and merged.depth[i] == (1 if p < 0 else merged.depth[p] + 1)
        assert (p, int(merged.tokens[i])) not in siblings
        siblings.add((p, int(merged.tokens[i])))
    path, node = [], -1
    for tok in chain:                        # the chain is a root-to-leaf path, every node marked copied = 2
        hit = [j for j in range(len(merged)) if merged.parents[j] == node and merged.tokens[j] == tok]
        assert len(hit) == 1 and merged.copied[hit[0]] == 2
        node = hit[0]
        path.append(node)
    assert len(merged) - len(tree) == sum(j >= len(tree) for j in path)
    assert merged.seen[path[0]] == tree.seen[path[0]]            # a node the search found keeps its kind
    assert all(merged.seen[j] == 2 for j in path if j >= len(tree))  # new nodes have no matrix kind
    off = np.setdiff1d(np.arange(len(tree)), path)
    assert (merged.copied[off] == 0).all() and (merged.seen[:len(tree)] == tree.seen).all()
    assert (merged.tokens[:len(tree)] == tree.tokens).all()
    assert with_copy_chain(tree, []) is tree


def test_probe_is_the_matrix_best_guess_with_the_copy_chain_hung_below_the_root():
    from aded_edge.draft import probe_tree, with_copy_chain
    m, stream = random_matrix(5)
    fields = ("tokens", "parents", "depth", "prob", "visits", "seen", "copied")
    for i in range(40):
        context = stream[i * 7:i * 7 + 2]
        tok, p, seen = m.successors(*context, top_k=1, seen=True)
        n = len(tok)
        one = DraftTree(tok, np.full(n, -1, np.int32), np.ones(n, np.int32), p, np.ones(n, np.int32),
                        seen.astype(np.uint8))
        for chain, order in (([], 0), ([int(tok[0]) if n else 1, 4, 5], 3), ([9, 8], 1)):
            probe, expected = probe_tree(m, context, chain, order), with_copy_chain(one, chain, order)
            for f in fields:
                assert np.array_equal(getattr(probe, f), getattr(expected, f)), (i, chain, f)
    assert len(probe_tree(TrigramMatrix(60), [1, 2])) == 0            # an empty matrix guesses nothing
    assert probe_tree(TrigramMatrix(60), [1, 2], [7, 8], 2).tokens.tolist() == [7, 8]
