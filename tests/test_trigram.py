"""Tri-gram matrix kernels against naive pure-Python references, and its file format."""
import zipfile

import numpy as np
import pytest

from aded_edge.draft import probe_tree
from aded_edge.trigram import BACKOFF, MatrixFileError, TrigramMatrix, count_static


class NaiveAdaptive:
    """Dict-of-lists model of the adaptive table with the same slot and eviction rules."""

    def __init__(self, v, k, inc, cap):
        self.v, self.k, self.inc, self.cap, self.rows = v, k, inc, cap, {}

    def bump(self, key, tok):
        row = self.rows.setdefault(key, [])
        for slot in row:
            if slot[0] == tok:
                slot[1] = min(slot[1] + self.inc, self.cap)
                return
        if len(row) < self.k:
            row.append([tok, self.inc])
            return
        lightest = min(range(len(row)), key=lambda j: (row[j][1], j))
        if row[lightest][1] <= self.inc:
            row[lightest] = [tok, self.inc]

    def update(self, t, start=0):
        for i in range(max(start, 1), len(t)):
            if i >= 2:
                self.bump((t[i - 2], t[i - 1]), t[i])
            self.bump((None, t[i - 1]), t[i])

    def successors(self, a, b, top_k):
        row = [list(s) for s in self.rows.get((a, b)) or []]
        bigram = self.rows.get((None, b)) or []
        if not row:
            row = [list(s) for s in bigram]
        elif len(row) < self.k:  # a sparse tri-gram row is filled from its bigram, heaviest first
            weight, bi_total = sum(w for _, w in row), sum(w for _, w in bigram)
            have = {t for t, _ in row}
            others = sorted((s for s in bigram if s[0] not in have), key=lambda s: -s[1])
            row += [[t, BACKOFF * weight * w / bi_total] for t, w in others[:self.k - len(row)]]
        total = sum(w for _, w in row)  # a probability is over the whole row, whatever top_k keeps
        row = sorted(row, key=lambda s: -s[1])[:top_k]
        return [t for t, _ in row], [w / total for _, w in row]


def _rows_equal(m, naive, v):
    for (a, b) in naive.rows:
        if a is None:
            continue
        toks, probs = m.successors(a, b, m.top_k)
        want_t, want_p = naive.successors(a, b, m.top_k)
        got, want = sorted(zip(toks.tolist(), probs.tolist())), sorted(zip(want_t, want_p))
        assert [t for t, _ in got] == [t for t, _ in want]
        assert np.allclose([p for _, p in got], [p for _, p in want], atol=1e-5)


@pytest.mark.parametrize("seed,v,k,n", [(0, 5, 2, 300), (1, 50, 3, 2000), (2, 1000, 12, 5000), (3, 3, 12, 40)])
def test_adaptive_update_matches_naive(seed, v, k, n):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, v, n).tolist()
    m = TrigramMatrix(v, top_k=k, increment=0.5, cap=2.0)
    naive = NaiveAdaptive(v, k, 0.5, 2.0)
    m.update(t[: n // 2])
    m.update(t, start=n // 2)  # incremental update sees the same tri-grams as one pass
    naive.update(t)
    _rows_equal(m, naive, v)
    assert m.adaptive_rows == len(naive.rows)


def test_adaptive_table_grows_past_its_initial_size():
    rng = np.random.default_rng(7)
    t = rng.integers(0, 40000, 30000).tolist()
    m = TrigramMatrix(40000, top_k=4)
    m.update(t)
    naive = NaiveAdaptive(40000, 4, m.increment, m.cap)
    naive.update(t)
    assert m.adaptive_rows == len(naive.rows) > 4096
    _rows_equal(m, naive, 40000)


@pytest.mark.parametrize("seed,v,k,n", [(0, 5, 2, 300), (1, 50, 3, 2000), (4, 40000, 4, 12000)])
def test_update_grams_matches_naive(seed, v, k, n):
    """Single grams (a, b) -> c, a = -1 adding the bigram only, mixed with runs of text; the last
    case outgrows the initial table."""
    rng = np.random.default_rng(seed)
    m = TrigramMatrix(v, top_k=k, increment=0.5, cap=2.0)
    naive = NaiveAdaptive(v, k, 0.5, 2.0)
    text = rng.integers(0, v, n // 4).tolist()
    m.update(text)
    naive.update(text)
    a = rng.integers(-1, v, n)
    b, c = rng.integers(0, v, n), rng.integers(0, v, n)
    m.update_grams(a, b, c)
    for x, y, z in zip(a.tolist(), b.tolist(), c.tolist()):
        if x >= 0:
            naive.bump((x, y), z)
        naive.bump((None, y), z)
    _rows_equal(m, naive, v)
    assert m.adaptive_rows == len(naive.rows)
    for y in b[:50].tolist():   # the bigram rows too (a = -1 asks for the bigram alone)
        toks, probs = m.successors(-1, y, m.top_k)
        want_t, want_p = naive.successors(None, y, m.top_k)
        got, want = sorted(zip(toks.tolist(), probs.tolist())), sorted(zip(want_t, want_p))
        assert [t for t, _ in got] == [t for t, _ in want]
        assert np.allclose([p for _, p in got], [p for _, p in want], atol=1e-5)


def test_update_grams_rejects_bad_input():
    m = TrigramMatrix(10)
    for a, b, c in (([-2], [1], [2]), ([10], [1], [2]), ([1], [10], [2]), ([1], [1], [-1]), ([1, 2], [1], [2])):
        with pytest.raises(ValueError):
            m.update_grams(a, b, c)
    m.update_grams([], [], [])
    assert m.adaptive_rows == 0


def test_update_rejects_out_of_range_tokens():
    m = TrigramMatrix(10)
    with pytest.raises(ValueError):
        m.update([1, 2, 10])
    with pytest.raises(ValueError):
        m.update([[1, 2], [3, 4]])


def test_successors_fall_back_to_bigram_and_merge_static():
    from aded_edge.trigram import CONTEXT_WEIGHT
    m = TrigramMatrix(10, top_k=4)
    m.update([1, 2, 3, 1, 2, 3, 5, 2, 4])
    toks, probs = m.successors(7, 2)          # (7, 2) never seen: bigram of 2 -> {3: 2x, 4: 1x}
    assert toks.tolist() == [3, 4] and np.allclose(probs, [2 / 3, 1 / 3])
    # tri-gram (1, 2) -> 3 only (weight 1.0): sparser than the row width 4, so the bigram's other
    # successor 4 fills it at BACKOFF x the row's weight x its share of the bigram (0.5 / 1.5)
    toks, probs = m.successors(1, 2)
    fill = BACKOFF * 1.0 * (0.5 / 1.5)
    assert toks.tolist() == [3, 4] and np.allclose(probs, np.array([1.0, fill]) / (1.0 + fill))
    keys, ptr, succ, prob = count_static([[1, 2, 9, 1, 2, 9, 1, 2, 3]], 10, top_k=4)
    m.set_static(keys, ptr, succ, prob)
    # adaptive 3: 1.0 x CONTEXT_WEIGHT (+1/3 static); static 9: 2/3; then the fill from the merged
    # bigram of 2 (3: 4 + 1/3, 4: 0.5 x 4, 9: 2/3): 4 alone is new
    toks, probs, seen = m.successors(1, 2, seen=True)
    row = np.array([CONTEXT_WEIGHT + 1 / 3, 2 / 3])
    bigram = np.array([CONTEXT_WEIGHT + 1 / 3, 0.5 * CONTEXT_WEIGHT, 2 / 3])
    fill = BACKOFF * row.sum() * bigram[1] / bigram.sum()
    assert toks.tolist() == [3, 9, 4]
    assert np.allclose(probs, np.append(row, fill) / (row.sum() + fill))
    assert seen.tolist() == [True, False, False]  # 3 seen after (1, 2) in this context; 9 only in the corpus
    assert probs.sum() == pytest.approx(1.0)
    full = TrigramMatrix(10, top_k=1)          # a row as wide as the adaptive rows gets no fill
    full.update([1, 2, 3, 5, 2, 4])
    assert full.successors(1, 2)[0].tolist() == [3] and probe_tree(full, [1, 2]).prob[0] == pytest.approx(1.0)


def test_probability_is_over_every_successor_whatever_top_k_asks():
    """P(successor | pair) does not depend on how many successors are asked for: the probe's
    one-node tree (draft.probe_tree) and the MCTS rollouts (top_k = 1) get the chance the tree's expansion
    gives the same node, so a bin of the reach calibration means one thing for all of them."""
    m = TrigramMatrix(10, top_k=4)
    m.update([1, 2, 3, 1, 2, 4, 1, 2, 3, 1, 2, 5])
    toks, probs = m.successors(1, 2)
    assert toks.tolist() == [3, 4, 5] and np.allclose(probs, [0.5, 0.25, 0.25])
    for k in (1, 2):
        toks, probs = m.successors(1, 2, top_k=k)
        assert toks.tolist() == [3, 4][:k] and np.allclose(probs, [0.5, 0.25][:k])
    probe = probe_tree(m, [1, 2])
    assert (probe.tokens.tolist(), probe.seen.tolist()) == ([3], [1]) and probe.prob[0] == pytest.approx(0.5)
    assert probe_tree(m, [7, 2]).prob[0] == pytest.approx(0.5)      # bigram fallback of 2: 3 twice in four


def naive_static(streams, v, top_k, min_count):
    from collections import Counter
    tri, bi = Counter(), Counter()
    for s in streams:
        for i in range(2, len(s)):
            tri[(s[i - 2], s[i - 1], s[i])] += 1
        for i in range(1, len(s)):
            bi[(s[i - 1], s[i])] += 1
    rows = {}
    for (a, b, c), n in tri.items():
        rows.setdefault(a * v + b, []).append((c, n))
    for (b, c), n in bi.items():
        rows.setdefault(v * v + b, []).append((c, n))
    out = {}
    for key, succ in rows.items():
        total = sum(n for _, n in succ)
        kept = sorted(succ, key=lambda s: (-s[1], s[0]))
        kept = [(c, n / total) for c, n in kept if n >= min_count][:top_k]
        if kept:
            out[key] = kept
    return out


@pytest.mark.parametrize("seed,v,top_k,min_count", [(0, 4, 2, 1), (1, 30, 3, 2), (2, 500, 12, 1), (3, 7, 1, 3)])
def test_count_static_matches_naive(seed, v, top_k, min_count):
    rng = np.random.default_rng(seed)
    streams = [rng.integers(0, v, rng.integers(0, 400)).tolist() for _ in range(5)] + [[], [1], [1, 2]]
    keys, ptr, succ, prob = count_static(streams, v, top_k=top_k, min_count=min_count)
    want = naive_static(streams, v, top_k, min_count)
    assert keys.tolist() == sorted(want)
    for r, key in enumerate(keys):
        got = list(zip(succ[ptr[r]:ptr[r + 1]].tolist(), prob[ptr[r]:ptr[r + 1]].tolist()))
        assert [c for c, _ in got] == [c for c, _ in want[key]] or sorted(p for _, p in got) == sorted(p for _, p in want[key])
        assert np.allclose(sorted(p for _, p in got), sorted(p for _, p in want[key]), atol=1e-6)


@pytest.mark.parametrize("n", [0, 1, 7, 5000])
def test_static_index_finds_every_key_and_only_those(n):
    from aded_edge.trigram import _static_row
    rng = np.random.default_rng(n)
    keys = np.unique(rng.integers(0, 1 << 40, n))
    m = TrigramMatrix(1 << 20)
    m.set_static(keys, np.arange(keys.size + 1), np.zeros(keys.size, np.int32), np.ones(keys.size, np.float32))
    assert m.s_index.size >= 2 * keys.size and (m.s_index >= 0).sum() == keys.size
    assert [_static_row(m.s_keys, m.s_index, k) for k in keys.tolist()] == list(range(keys.size))
    others = np.setdiff1d(rng.integers(0, 1 << 40, 2000), keys)
    assert all(_static_row(m.s_keys, m.s_index, k) == -1 for k in others.tolist())


def test_count_static_does_not_span_streams():
    keys, ptr, succ, prob = count_static([[1, 2], [3, 4]], 5)
    assert (1 * 5 + 2) not in keys.tolist()          # no tri-gram (1, 2) -> 3 across streams
    assert 5 * 5 + 2 not in keys.tolist()             # no bigram 2 -> 3 either


def test_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(3)
    m = TrigramMatrix(300, fingerprint="abc", top_k=5)
    m.update(rng.integers(0, 300, 3000).tolist())
    m.set_static(*count_static([rng.integers(0, 300, 2000).tolist()], 300, top_k=5))
    path = tmp_path / "m.npz"
    m.save(path)
    back = TrigramMatrix.load(path, n_vocab=300, fingerprint="abc")
    for a in range(0, 300, 7):
        for b in range(0, 300, 11):
            t1, p1 = m.successors(a, b)
            t2, p2 = back.successors(a, b)
            assert t1.tolist() == t2.tolist() and np.allclose(p1, p2)
    back.update([1, 2, 3])  # the loaded table is still writable
    assert not list(tmp_path.glob("*.tmp"))


def test_load_refuses_foreign_corrupt_and_truncated_files(tmp_path):
    m = TrigramMatrix(300, fingerprint="abc")
    m.update(list(range(100)))
    path = tmp_path / "m.npz"
    m.save(path)
    with pytest.raises(MatrixFileError, match="another model"):
        TrigramMatrix.load(path, n_vocab=301)
    with pytest.raises(MatrixFileError, match="another model"):
        TrigramMatrix.load(path, n_vocab=300, fingerprint="xyz")
    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(MatrixFileError, match="corrupt or truncated"):
        TrigramMatrix.load(tmp_path / "cut.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a matrix at all")
    with pytest.raises(MatrixFileError, match="corrupt or truncated"):
        TrigramMatrix.load(tmp_path / "junk.npz")
    with pytest.raises(MatrixFileError, match="not found"):
        TrigramMatrix.load(tmp_path / "missing.npz")
    # a well-formed archive with inconsistent content
    with zipfile.ZipFile(path) as z, zipfile.ZipFile(tmp_path / "bad.npz", "w") as out:
        for name in z.namelist():
            blob = z.read(name)
            if name == "a_rows.npy":
                arr = np.load(z.open(name)) + 10_000
                import io
                buf = io.BytesIO()
                np.save(buf, arr)
                blob = buf.getvalue()
            out.writestr(name, blob)
    with pytest.raises(MatrixFileError, match="inconsistent"):
        TrigramMatrix.load(tmp_path / "bad.npz")


def test_save_parts_separately_and_keep_the_heaviest_rows(tmp_path, monkeypatch):
    import aded_edge.trigram as trigram
    rng = np.random.default_rng(5)
    m = TrigramMatrix(200, fingerprint="f", top_k=4)
    m.update([1, 2, 3] * 40 + rng.integers(0, 200, 500).tolist())   # (1, 2) -> 3 is by far the heaviest
    m.set_static(*count_static([rng.integers(0, 200, 500).tolist()], 200, top_k=4))
    m.save(tmp_path / "s.npz", part="static", corpus="test")
    m.save(tmp_path / "a.npz", part="adaptive")
    s, a = TrigramMatrix.load(tmp_path / "s.npz"), TrigramMatrix.load(tmp_path / "a.npz")
    assert s.adaptive_rows == 0 and s.static_rows == m.static_rows
    assert a.static_rows == 0 and a.adaptive_rows == m.adaptive_rows
    assert TrigramMatrix.read_meta(tmp_path / "s.npz")["corpus"] == "test"
    monkeypatch.setattr(trigram, "MAX_SAVED_ROWS", 10)
    m.save(tmp_path / "small.npz", part="adaptive")
    small = TrigramMatrix.load(tmp_path / "small.npz")
    assert small.adaptive_rows == 10
    toks, _, seen = small.successors(1, 2, seen=True)
    assert toks[seen].tolist() == [3]      # the tri-gram row kept (the rest: its bigram's fill)
    with pytest.raises(ValueError):
        m.save(tmp_path / "x.npz", part="nope")


def test_other_format_versions_are_refused_with_a_way_out(tmp_path, monkeypatch):
    import aded_edge.trigram as trigram
    m = TrigramMatrix(50)
    monkeypatch.setattr(trigram, "FORMAT_VERSION", 1)
    m.save(tmp_path / "old.npz")
    monkeypatch.undo()
    with pytest.raises(MatrixFileError, match="version 1.*rebuild"):
        TrigramMatrix.load(tmp_path / "old.npz")
