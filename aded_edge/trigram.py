"""The tri-gram matrix: (t-2, t-1) -> top-K successors with weights, static from a corpus plus
adapted while decoding.

Two parts, queried together:
- static: built once from a corpus, pruned to the top-K successors per pair, stored as CSR
  (sorted pair keys, row pointers, successor ids, conditional probabilities);
- adaptive: an open-addressing hash of pair -> K slots (token, weight), raised by every tri-gram
  the prompt and the accepted output contain. It lives as long as the process (and can be saved).

A pair key is a*V + b for a tri-gram context (a, b); the bigram fallback of b uses V*V + b, so both
share one table. Public functions validate and convert; the @njit kernels take only arrays.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numba import njit

FORMAT_VERSION = 2
MAX_SAVED_ROWS = 1 << 18   # adaptive rows kept on disk (the heaviest); bounds the warm-start file
CONTEXT_WEIGHT = 4.0       # an adapted weight counts this many times a corpus probability when merged
EMPTY = -1
MAX_STATIC_ROW = 255       # successors a static row may keep (count_static's top_k limit)
BACKOFF = 0.4              # weight of a sparse tri-gram row's bigram fill, relative to the row (see _successors)


class MatrixFileError(ValueError):
    """A matrix file that is missing, corrupt, truncated or built for another model."""


# ----------------------------------------------------------------------------- kernels

@njit(cache=True, inline="always")
def _slot(key, mask):
    # splitmix64 finaliser, folded to the table size
    h = np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)
    h ^= h >> np.uint64(31)
    return np.int64(h & np.uint64(mask))


@njit(cache=True)
def _probe(keys, key):
    """Slot holding `key`, or the empty slot where it would be inserted (linear probing)."""
    mask = keys.shape[0] - 1
    i = _slot(key, mask)
    while keys[i] != EMPTY and keys[i] != key:
        i = (i + 1) & mask
    return i


@njit(cache=True)
def _find_row(keys, rowof, key):
    """Row of `key` in the adaptive hash, or -1."""
    i = _probe(keys, key)
    return rowof[i] if keys[i] == key else -1


@njit(cache=True)
def _find_or_insert_row(keys, rowof, succ, n_rows, key):
    """Row of `key`, inserting an empty row if new; -1 when the table must grow first."""
    i = _probe(keys, key)
    if keys[i] == key:
        return rowof[i]
    r = n_rows[0]
    if r >= succ.shape[0] or 2 * (r + 1) > keys.shape[0]:
        return -1
    keys[i] = key
    rowof[i] = r
    n_rows[0] = r + 1
    return r


@njit(cache=True)
def _rehash(src_keys, src_rowof, keys, rowof):
    """Insert every used (key, row) slot of the source table into an empty larger table."""
    for s in range(src_keys.shape[0]):
        key = src_keys[s]
        if key == EMPTY:
            continue
        i = _probe(keys, key)
        keys[i] = key
        rowof[i] = src_rowof[s]


@njit(cache=True)
def _bump(succ, w, row, tok, inc, cap):
    """Raise weight of tok in row; a new token takes an empty slot or evicts the lightest
    slot that is not heavier than a fresh entry (least-frequently seen, newest wins ties)."""
    k = succ.shape[1]
    lightest = 0
    for j in range(k):
        if succ[row, j] == tok:
            w[row, j] = min(w[row, j] + inc, cap)
            return
        if succ[row, j] == EMPTY:
            succ[row, j] = tok
            w[row, j] = inc
            return
        if w[row, j] < w[row, lightest]:
            lightest = j
    if w[row, lightest] <= inc:
        succ[row, lightest] = tok
        w[row, lightest] = inc


@njit(cache=True, inline="always")
def _add_gram(keys, rowof, succ, w, n_rows, a, b, c, n_vocab, inc, cap):
    """Raise the bigram b -> c and, when a >= 0, the tri-gram (a, b) -> c. False (nothing
    changed) when the table is full and must grow first."""
    rb = _find_or_insert_row(keys, rowof, succ, n_rows, np.int64(n_vocab) * np.int64(n_vocab) + np.int64(b))
    if rb < 0:
        return False
    if a >= 0:
        rt = _find_or_insert_row(keys, rowof, succ, n_rows, np.int64(a) * n_vocab + np.int64(b))
        if rt < 0:
            return False
        _bump(succ, w, rt, c, inc, cap)
    _bump(succ, w, rb, c, inc, cap)
    return True


@njit(cache=True)
def _adapt(keys, rowof, succ, w, n_rows, tokens, start, n_vocab, inc, cap):
    """Add the tri-grams and bigrams that end at tokens[start:]. Returns the first index not yet
    processed (len(tokens) when done; smaller when the table is full and must grow)."""
    for i in range(max(start, 1), tokens.shape[0]):
        a = np.int64(tokens[i - 2]) if i >= 2 else np.int64(-1)
        if not _add_gram(keys, rowof, succ, w, n_rows, a, tokens[i - 1], tokens[i], n_vocab, inc, cap):
            return i
    return tokens.shape[0]


@njit(cache=True)
def _adapt_grams(keys, rowof, succ, w, n_rows, a, b, c, start, n_vocab, inc, cap):
    """Add the tri-grams (a[i], b[i]) -> c[i] (none where a[i] < 0) and bigrams b[i] -> c[i] for
    i >= start. Returns the first index not yet processed, as _adapt does."""
    for i in range(start, c.shape[0]):
        if not _add_gram(keys, rowof, succ, w, n_rows, a[i], b[i], c[i], n_vocab, inc, cap):
            return i
    return c.shape[0]


@njit(cache=True)
def _index_static(s_keys, index):
    """Fill the static part's hash index: slot -> row (-1: empty), linear probing from _slot."""
    mask = index.shape[0] - 1
    for r in range(s_keys.shape[0]):
        i = _slot(s_keys[r], mask)
        while index[i] >= 0:
            i = (i + 1) & mask
        index[i] = r


@njit(cache=True)
def _static_row(s_keys, s_index, key):
    """Row of key in the static part, or -1. Through the hash index: a binary search over a
    corpus matrix's millions of keys touched about twenty cache lines, each a miss right after a
    llama_decode has swept the caches (SmolLM2's matrix: 0.5 us against 0.1 us per lookup)."""
    mask = s_index.shape[0] - 1
    i = _slot(key, mask)
    while True:
        r = s_index[i]
        if r < 0 or s_keys[r] == key:
            return r
        i = (i + 1) & mask


@njit(cache=True)
def _merge_row(key, keys, rowof, succ, w, s_keys, s_ptr, s_succ, s_prob, s_index, out_tok, out_w, out_seen):
    """Union of the adaptive and static successors of one pair key into out_* (out_seen: 1 when
    the adaptive part holds the successor, i.e. it was seen in this context); returns count."""
    n = 0
    r = _find_row(keys, rowof, key)
    if r >= 0:
        for j in range(succ.shape[1]):
            if succ[r, j] != EMPTY:
                out_tok[n] = succ[r, j]
                out_w[n] = w[r, j] * CONTEXT_WEIGHT
                out_seen[n] = 1
                n += 1
    s = _static_row(s_keys, s_index, key)
    if s >= 0:
        for j in range(s_ptr[s], s_ptr[s + 1]):
            t = s_succ[j]
            found = False
            for m in range(n):
                if out_tok[m] == t:
                    out_w[m] += s_prob[j]
                    found = True
                    break
            if not found and n < out_tok.shape[0]:
                out_tok[n] = t
                out_w[n] = s_prob[j]
                out_seen[n] = 0
                n += 1
    return n


@njit(cache=True)
def _successors(a, b, n_vocab, keys, rowof, succ, w, s_keys, s_ptr, s_succ, s_prob, s_index,
                top_k, out_tok, out_p, out_seen):
    """Top-k successors of the context (a, b) with probabilities summing to 1, best first;
    out_seen[i] = 1 when the tri-gram (a, b, successor) was seen in this context (adaptive part).
    Falls back to the bigram of b when the pair was never seen, and fills a row sparser than the
    adaptive row width with the bigram's best other successors (stupid backoff: a tri-gram seen
    once or twice says little; in replay of recorded outputs it lifts tokens per step of 64-node
    trees by 2-7%). Returns the count."""
    buf_tok = np.empty(succ.shape[1] + MAX_STATIC_ROW, np.int32)  # the whole merged row
    buf_w = np.empty(buf_tok.shape[0], np.float32)
    buf_seen = np.zeros(buf_tok.shape[0], np.uint8)
    n = 0
    if a >= 0:
        n = _merge_row(np.int64(a) * n_vocab + b, keys, rowof, succ, w,
                       s_keys, s_ptr, s_succ, s_prob, s_index, buf_tok, buf_w, buf_seen)
    if n == 0:
        n = _merge_row(np.int64(n_vocab) * n_vocab + b, keys, rowof, succ, w,
                       s_keys, s_ptr, s_succ, s_prob, s_index, buf_tok, buf_w, buf_seen)
        buf_seen[:n] = 0  # a bigram fallback is never a tri-gram of this context
    elif BACKOFF > 0 and n < succ.shape[1]:
        # a sparse tri-gram row: its bigram's successors fill it up to the adaptive row width,
        # at BACKOFF times the row's weight in all (so the probability of a pair seen once is < 1)
        bi_tok = np.empty(buf_tok.shape[0], np.int32)
        bi_w = np.empty(buf_tok.shape[0], np.float32)
        bi_seen = np.zeros(buf_tok.shape[0], np.uint8)
        nb = _merge_row(np.int64(n_vocab) * n_vocab + b, keys, rowof, succ, w,
                        s_keys, s_ptr, s_succ, s_prob, s_index, bi_tok, bi_w, bi_seen)
        row_w, bi_total = 0.0, 0.0
        for i in range(n):
            row_w += buf_w[i]
        for i in range(nb):
            bi_total += bi_w[i]
        if bi_total <= 0:
            nb = 0
        n_tri = n
        for i in np.argsort(-bi_w[:nb], kind="mergesort"):  # heaviest first, the earliest on ties
            if n == succ.shape[1]:
                break
            held = False  # already in the tri-gram row
            for j in range(n_tri):
                if buf_tok[j] == bi_tok[i]:
                    held = True
                    break
            if not held:
                buf_tok[n] = bi_tok[i]
                buf_w[n] = BACKOFF * row_w * bi_w[i] / bi_total
                buf_seen[n] = 0
                n += 1
    # selection sort of the best top_k (n is small); probabilities over all n successors
    m = min(n, top_k)
    total = 0.0
    for i in range(n):
        total += buf_w[i]
    for i in range(m):
        best = i
        for j in range(i + 1, n):
            if buf_w[j] > buf_w[best]:
                best = j
        buf_tok[i], buf_tok[best] = buf_tok[best], buf_tok[i]
        buf_w[i], buf_w[best] = buf_w[best], buf_w[i]
        buf_seen[i], buf_seen[best] = buf_seen[best], buf_seen[i]
    for i in range(m):
        out_tok[i] = buf_tok[i]
        out_p[i] = buf_w[i] / total if total > 0 else 1.0 / m
        out_seen[i] = buf_seen[i]
    return m


@njit(cache=True)
def _gram_keys(tokens, n_vocab, out):
    """Keys of every tri-gram ((a*V + b)*V + c) and bigram ((V*V + b)*V + c) in tokens, where
    -1 separates streams (no gram spans a separator). Returns the number of keys written."""
    v = np.int64(n_vocab)
    base = v * v
    n = 0
    for i in range(1, tokens.shape[0]):
        c = np.int64(tokens[i])
        b = np.int64(tokens[i - 1])
        if c < 0 or b < 0:
            continue
        out[n] = (base + b) * v + c
        n += 1
        if i >= 2 and tokens[i - 2] >= 0:
            out[n] = (np.int64(tokens[i - 2]) * v + b) * v + c
            n += 1
    return n


@njit(cache=True)
def _top_successors(grams, n_vocab, top_k, min_count):
    """Sorted gram keys -> CSR (keys, ptr, succ, prob) of the top_k successors (count desc, id asc
    on ties) with count >= min_count of every pair; prob = count / all counts of the pair."""
    v = np.int64(n_vocab)
    n = grams.shape[0]
    # distinct grams with their counts, in key order (so pairs are contiguous)
    g_succ = np.empty(n, np.int32)
    g_count = np.empty(n, np.int64)
    g_pair = np.empty(n, np.int64)
    m = 0
    i = 0
    while i < n:
        j = i
        while j < n and grams[j] == grams[i]:
            j += 1
        g_pair[m] = grams[i] // v
        g_succ[m] = np.int32(grams[i] % v)
        g_count[m] = j - i
        m += 1
        i = j
    s_keys = np.empty(m, np.int64)
    s_ptr = np.zeros(m + 1, np.int64)
    s_succ = np.empty(m, np.int32)
    s_prob = np.empty(m, np.float32)
    rows, e = 0, 0
    i = 0
    while i < m:
        j = i
        total = 0
        while j < m and g_pair[j] == g_pair[i]:
            total += g_count[j]
            j += 1
        order = np.argsort(-g_count[i:j], kind="mergesort")  # stable: equal counts keep id order
        kept = 0
        for o in order:
            if kept == top_k or g_count[i + o] < min_count:
                break
            s_succ[e] = g_succ[i + o]
            s_prob[e] = g_count[i + o] / total
            e += 1
            kept += 1
        if kept > 0:
            s_keys[rows] = g_pair[i]
            rows += 1
            s_ptr[rows] = e
        i = j
    return s_keys[:rows].copy(), s_ptr[:rows + 1].copy(), s_succ[:e].copy(), s_prob[:e].copy()


# ----------------------------------------------------------------------------- wrappers

def _as_tokens(tokens, n_vocab: int) -> np.ndarray:
    if isinstance(tokens, list) and len(tokens) <= 64 and all(type(t) is int for t in tokens):
        # the per-step path: a few token ids, checked in Python (cheaper than numpy here)
        if tokens and (min(tokens) < 0 or max(tokens) >= n_vocab):
            raise ValueError(f"token ids must be in [0, {n_vocab})")
        return np.array(tokens, dtype=np.int32)
    arr = np.ascontiguousarray(np.asarray(tokens, dtype=np.int64))
    if arr.ndim != 1:
        raise ValueError("tokens must be a 1-D sequence of token ids")
    if arr.size and (arr.min() < 0 or arr.max() >= n_vocab):
        raise ValueError(f"token ids must be in [0, {n_vocab})")
    return arr.astype(np.int32)


def count_static(streams, n_vocab: int, top_k: int = 12, min_count: int = 1):
    """CSR arrays (keys, ptr, succ, prob) of the top_k successors of every tri-gram context and
    every bigram context (key V*V + b) seen in the token streams; tri-grams never span streams."""
    if not 1 <= top_k <= MAX_STATIC_ROW or min_count < 1:
        raise ValueError(f"top_k must be in 1..{MAX_STATIC_ROW} and min_count >= 1")
    parts = []
    for stream in streams:
        parts.append(_as_tokens(stream, n_vocab))
        parts.append(np.full(1, -1, np.int32))
    tokens = np.concatenate(parts) if parts else np.empty(0, np.int32)
    keys = np.empty(2 * tokens.shape[0], np.int64)
    keys = keys[:_gram_keys(tokens, n_vocab, keys)]
    keys.sort()
    return _top_successors(keys, n_vocab, top_k, min_count)


@dataclass
class TrigramMatrix:
    """Static corpus matrix + adaptive context matrix of one model's vocabulary."""
    n_vocab: int                       # vocabulary size of the model the ids come from
    fingerprint: str = ""              # hash of the model's vocabulary (see llama.vocab_fingerprint)
    top_k: int = 12                    # successor slots per adaptive row
    increment: float = 0.5             # weight added per observed tri-gram
    cap: float = 4.0                   # ceiling of an adaptive weight
    # adaptive part (open addressing, load factor <= 0.5)
    keys: np.ndarray = field(default=None, repr=False)   # int64 pair key per slot, -1 empty
    rowof: np.ndarray = field(default=None, repr=False)  # int32 row index per slot
    succ: np.ndarray = field(default=None, repr=False)   # int32 [rows, top_k] successor ids, -1 empty
    w: np.ndarray = field(default=None, repr=False)      # float32 [rows, top_k] weights
    n_rows: np.ndarray = field(default=None, repr=False)  # int64[1] rows in use
    # static part (CSR, from a corpus)
    s_keys: np.ndarray = field(default=None, repr=False)  # int64 sorted pair keys
    s_ptr: np.ndarray = field(default=None, repr=False)   # int64 row pointers
    s_succ: np.ndarray = field(default=None, repr=False)  # int32 successor ids
    s_prob: np.ndarray = field(default=None, repr=False)  # float32 P(successor | pair)
    s_index: np.ndarray = field(default=None, repr=False)  # int32 hash slot -> static row, -1 empty (set_static)

    def __post_init__(self):
        if self.n_vocab <= 0 or self.n_vocab > 2_000_000:  # (V*V + b)*V + c must fit in int64
            raise ValueError("n_vocab must be in 1..2,000,000")
        if self.keys is None:
            self._alloc(1 << 12)
        if self.s_keys is None:
            self.set_static(np.empty(0, np.int64), np.zeros(1, np.int64),
                            np.empty(0, np.int32), np.empty(0, np.float32))

    def _alloc(self, rows: int) -> None:
        self.keys = np.full(2 * rows, EMPTY, np.int64)
        self.rowof = np.zeros(2 * rows, np.int32)
        self.succ = np.full((rows, self.top_k), EMPTY, np.int32)
        self.w = np.zeros((rows, self.top_k), np.float32)
        self.n_rows = np.zeros(1, np.int64)

    def _grow(self) -> None:
        old_keys, old_rowof = self.keys, self.rowof
        old_succ, old_w, n = self.succ, self.w, int(self.n_rows[0])
        self._alloc(2 * old_succ.shape[0])
        self.succ[:n], self.w[:n] = old_succ[:n], old_w[:n]
        _rehash(old_keys, old_rowof, self.keys, self.rowof)
        self.n_rows[0] = n

    @property
    def adaptive_rows(self) -> int:
        return int(self.n_rows[0])

    @property
    def static_rows(self) -> int:
        return int(self.s_keys.shape[0])

    def set_static(self, s_keys, s_ptr, s_succ, s_prob) -> None:
        s_keys = np.ascontiguousarray(s_keys, np.int64)
        s_ptr = np.ascontiguousarray(s_ptr, np.int64)
        if s_ptr.shape[0] != s_keys.shape[0] + 1 or (s_keys.size and np.any(np.diff(s_keys) <= 0)):
            raise ValueError("static matrix: keys must be strictly increasing with len(ptr) = len(keys) + 1")
        self.s_keys, self.s_ptr = s_keys, s_ptr
        self.s_succ = np.ascontiguousarray(s_succ, np.int32)
        self.s_prob = np.ascontiguousarray(s_prob, np.float32)
        # hash index of the keys (load factor <= 0.5): 4 bytes per slot, 16 MB for 1.5M rows
        self.s_index = np.full(1 << max(1, int(2 * s_keys.size).bit_length()), -1, np.int32)
        _index_static(s_keys, self.s_index)

    def static_arrays(self):
        return self.s_keys, self.s_ptr, self.s_succ, self.s_prob

    def set_adaptive(self, other: "TrigramMatrix") -> None:
        """Take over the adaptive table (and its settings) of another matrix of this vocabulary."""
        if other.n_vocab != self.n_vocab:
            raise ValueError("adaptive table of another vocabulary")
        self.top_k, self.increment, self.cap = other.top_k, other.increment, other.cap
        self.keys, self.rowof, self.succ, self.w, self.n_rows = other.keys, other.rowof, other.succ, other.w, other.n_rows

    def update(self, tokens, start: int = 0) -> None:
        """Raise the weights of every tri-gram (and bigram) ending at tokens[start:]."""
        arr = _as_tokens(tokens, self.n_vocab)
        self._adapt_all(_adapt, arr.shape[0], max(int(start), 0), arr)

    def update_grams(self, a, b, c) -> None:
        """Raise the weights of the tri-grams (a[i], b[i]) -> c[i] and bigrams b[i] -> c[i], one by
        one (a[i] = -1: no tri-gram context, the bigram only): grams that are not a run of text,
        such as the model's own choice after a draft node it did not accept."""
        a = np.asarray(a, dtype=np.int64)
        b, c = _as_tokens(b, self.n_vocab), _as_tokens(c, self.n_vocab)
        if not a.shape == b.shape == c.shape or a.ndim != 1:
            raise ValueError("update_grams needs three 1-d arrays of one length")
        if a.size and (a.min() < -1 or a.max() >= self.n_vocab):
            raise ValueError("token ids out of the matrix vocabulary")
        self._adapt_all(_adapt_grams, c.shape[0], 0, a, b, c)

    def _adapt_all(self, kernel, n: int, start: int, *data) -> None:
        """Run an adaptation kernel over items start..n-1 of `data`, growing the table whenever
        the kernel stops because it is full (the arrays are re-read after each growth)."""
        i = start
        while i < n:
            i = kernel(self.keys, self.rowof, self.succ, self.w, self.n_rows, *data, i,
                       self.n_vocab, np.float32(self.increment), np.float32(self.cap))
            if i < n:
                self._grow()

    def successors(self, a: int, b: int, top_k: int | None = None, seen: bool = False):
        """(tokens, probabilities) of the best successors of the context (a, b); a may be -1.
        With seen=True also a bool array: the tri-gram was seen in this context."""
        k = self.top_k if top_k is None else int(top_k)
        if not (0 <= b < self.n_vocab) or not (-1 <= a < self.n_vocab) or k < 1:
            raise ValueError("successors: token ids out of range or top_k < 1")
        out_tok = np.empty(k, np.int32)
        out_p = np.empty(k, np.float32)
        out_seen = np.zeros(k, np.uint8)
        n = _successors(np.int64(a), np.int64(b), self.n_vocab, *self.kernel_arrays(), k, out_tok, out_p, out_seen)
        if seen:
            return out_tok[:n], out_p[:n], out_seen[:n].astype(bool)
        return out_tok[:n], out_p[:n]

    def kernel_arrays(self):
        """The arrays every drafting kernel takes, in kernel argument order."""
        return (self.keys, self.rowof, self.succ, self.w,
                self.s_keys, self.s_ptr, self.s_succ, self.s_prob, self.s_index)

    # ------------------------------------------------------------------ persistence
    def save(self, path, part: str = "all", **info) -> None:
        """Write the static part, the adaptive part or both ("static", "adaptive", "all")
        atomically: a temporary file in the same folder, then a rename. `info` goes into the
        file's metadata (corpus, token counts, ...)."""
        if part not in ("all", "static", "adaptive"):
            raise ValueError("part must be 'all', 'static' or 'adaptive'")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(format="aded-edge-trigram", version=FORMAT_VERSION, part=part, n_vocab=self.n_vocab,
                    fingerprint=self.fingerprint, top_k=self.top_k, increment=self.increment, cap=self.cap,
                    **info)
        arrays = {}
        if part in ("all", "adaptive"):
            n = self.adaptive_rows
            used = np.flatnonzero(self.keys != EMPTY)
            rows = self.rowof[used]
            if n > MAX_SAVED_ROWS:  # keep the heaviest rows, renumbered densely
                keep = np.zeros(n, bool)
                keep[np.argsort(-self.w[:n].sum(axis=1), kind="stable")[:MAX_SAVED_ROWS]] = True
                renumber = np.cumsum(keep) - 1
                used, rows = used[keep[rows]], renumber[rows[keep[rows]]]
                succ, w = self.succ[:n][keep], self.w[:n][keep]
            else:
                succ, w = self.succ[:n], self.w[:n]
            arrays.update(a_keys=self.keys[used], a_rows=rows.astype(np.int32), a_succ=succ, a_w=w)
        if part in ("all", "static"):
            arrays.update(s_keys=self.s_keys, s_ptr=self.s_ptr, s_succ=self.s_succ, s_prob=self.s_prob)
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @staticmethod
    def read_meta(path) -> dict:
        """The metadata of a matrix file, checked for format and version, without its arrays."""
        return _read(path, arrays=False)[0]

    @classmethod
    def load(cls, path, n_vocab: int | None = None, fingerprint: str | None = None) -> "TrigramMatrix":
        """Read a matrix file; with n_vocab/fingerprint given, refuse one made for another model."""
        meta, arrays = _read(path, arrays=True)
        if n_vocab is not None and meta["n_vocab"] != n_vocab or (
                fingerprint and meta["fingerprint"] and meta["fingerprint"] != fingerprint):
            raise MatrixFileError(f"{path} was built for another model (vocabulary {meta['n_vocab']}, "
                                  f"fingerprint {meta['fingerprint'][:12]}); rebuild it for this model")
        try:
            m = cls(n_vocab=int(meta["n_vocab"]), fingerprint=str(meta["fingerprint"]), top_k=int(meta["top_k"]),
                    increment=float(meta["increment"]), cap=float(meta["cap"]))
            k = m.top_k
            a_succ = arrays.get("a_succ", np.empty((0, k), np.int32))
            a_keys = np.ascontiguousarray(arrays.get("a_keys", np.empty(0, np.int64)), np.int64)
            a_rows = np.ascontiguousarray(arrays.get("a_rows", np.empty(0, np.int32)), np.int32)
            n = a_succ.shape[0]
            if a_succ.ndim != 2 or a_succ.shape[1] != k:
                raise ValueError("adaptive rows have the wrong width")
            if a_keys.shape != a_rows.shape or (a_rows.size and (a_rows.min() < 0 or a_rows.max() >= n)):
                raise ValueError("row index out of range")
            if np.unique(a_keys).size != a_keys.size or (a_keys.size and a_keys.min() < 0):
                raise ValueError("duplicate or negative pair keys")
            m._alloc(1 << max(12, int(np.ceil(np.log2(max(n, 1)))) + 1))
            m.succ[:n], m.w[:n] = a_succ, arrays.get("a_w", np.empty((0, k), np.float32))
            _rehash(a_keys, a_rows, m.keys, m.rowof)
            m.n_rows[0] = n
            if "s_keys" in arrays:
                m.set_static(arrays["s_keys"], arrays["s_ptr"], arrays["s_succ"], arrays["s_prob"])
            if m.s_ptr[-1] != m.s_succ.shape[0] or m.s_succ.shape != m.s_prob.shape:
                raise ValueError("static rows do not match their pointers")
            if m.s_succ.size and (m.s_succ.min() < 0 or m.s_succ.max() >= m.n_vocab):
                raise ValueError("successor id out of range")
        except (KeyError, ValueError, IndexError, TypeError) as e:
            raise MatrixFileError(f"matrix file {path} is inconsistent ({e}); rebuild it or delete it") from None
        return m


def _read(path, arrays: bool):
    """(meta, {name: array}) of a matrix file; MatrixFileError for anything but a readable file
    of this format version."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            data = {k: z[k] for k in z.files if k != "meta"} if arrays else {}
    except FileNotFoundError:
        raise MatrixFileError(f"matrix file not found: {path}") from None
    except Exception as e:  # zip, json or npy decoding errors all mean the same thing here
        raise MatrixFileError(f"matrix file {path} is corrupt or truncated ({type(e).__name__}); "
                              f"rebuild it or delete it") from None
    if not isinstance(meta, dict) or meta.get("format") != "aded-edge-trigram":
        raise MatrixFileError(f"{path} is not an aded-edge matrix file")
    if meta.get("version") != FORMAT_VERSION:
        raise MatrixFileError(f"{path} has matrix format version {meta.get('version')}, this aded-edge reads "
                              f"version {FORMAT_VERSION}; rebuild it (aded-edge matrix build) or reset it")
    if not isinstance(meta.get("n_vocab"), int) or not isinstance(meta.get("fingerprint", ""), str):
        raise MatrixFileError(f"matrix file {path} has damaged metadata; rebuild it or delete it")
    meta.setdefault("fingerprint", "")
    return meta, data
