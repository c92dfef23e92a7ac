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

FORMAT_VERSION = 1
EMPTY = -1


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


@njit(cache=True)
def _adapt(keys, rowof, succ, w, n_rows, tokens, start, n_vocab, inc, cap):
    """Add the tri-grams and bigrams that end at tokens[start:]. Returns the first index not yet
    processed (len(tokens) when done; smaller when the table is full and must grow)."""
    bigram_base = np.int64(n_vocab) * np.int64(n_vocab)
    for i in range(max(start, 1), tokens.shape[0]):
        c = tokens[i]
        b = np.int64(tokens[i - 1])
        rb = _find_or_insert_row(keys, rowof, succ, n_rows, bigram_base + b)
        if rb < 0:
            return i
        if i >= 2:
            rt = _find_or_insert_row(keys, rowof, succ, n_rows, np.int64(tokens[i - 2]) * n_vocab + b)
            if rt < 0:
                return i
            _bump(succ, w, rt, c, inc, cap)
        _bump(succ, w, rb, c, inc, cap)
    return tokens.shape[0]


@njit(cache=True)
def _static_row(s_keys, key):
    """Index of key in the sorted static keys, or -1."""
    n = s_keys.shape[0]
    if n == 0:
        return -1
    i = np.searchsorted(s_keys, key)
    if i < n and s_keys[i] == key:
        return i
    return -1


@njit(cache=True)
def _merge_row(key, keys, rowof, succ, w, s_keys, s_ptr, s_succ, s_prob, out_tok, out_w):
    """Union of the adaptive and static successors of one pair key into out_*; returns count."""
    n = 0
    r = _find_row(keys, rowof, key)
    if r >= 0:
        for j in range(succ.shape[1]):
            if succ[r, j] != EMPTY:
                out_tok[n] = succ[r, j]
                out_w[n] = w[r, j]
                n += 1
    s = _static_row(s_keys, key)
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
                n += 1
    return n


@njit(cache=True)
def _successors(a, b, n_vocab, keys, rowof, succ, w, s_keys, s_ptr, s_succ, s_prob,
                top_k, out_tok, out_p):
    """Top-k successors of the context (a, b) with probabilities summing to 1, best first.
    Falls back to the bigram of b when the pair was never seen. Returns the count."""
    buf_tok = np.empty(out_tok.shape[0] + succ.shape[1], np.int32)
    buf_w = np.empty(buf_tok.shape[0], np.float32)
    n = 0
    if a >= 0:
        n = _merge_row(np.int64(a) * n_vocab + b, keys, rowof, succ, w,
                       s_keys, s_ptr, s_succ, s_prob, buf_tok, buf_w)
    if n == 0:
        n = _merge_row(np.int64(n_vocab) * n_vocab + b, keys, rowof, succ, w,
                       s_keys, s_ptr, s_succ, s_prob, buf_tok, buf_w)
    # selection sort of the best top_k (n is small)
    m = min(n, top_k)
    total = 0.0
    for i in range(m):
        best = i
        for j in range(i + 1, n):
            if buf_w[j] > buf_w[best]:
                best = j
        buf_tok[i], buf_tok[best] = buf_tok[best], buf_tok[i]
        buf_w[i], buf_w[best] = buf_w[best], buf_w[i]
        total += buf_w[i]
    for i in range(m):
        out_tok[i] = buf_tok[i]
        out_p[i] = buf_w[i] / total if total > 0 else 1.0 / m
    return m


@njit(cache=True)
def _prune_sorted(pairs, succs, counts, pair_totals_idx, totals, top_k, min_count):
    """Rows sorted by (pair, -count): keep the first top_k with count >= min_count per pair.
    Returns CSR (keys, ptr, succ, prob) with prob = count / all counts of the pair."""
    n = pairs.shape[0]
    keep = np.zeros(n, np.bool_)
    n_rows = 0
    i = 0
    while i < n:
        j = i
        while j < n and pairs[j] == pairs[i]:
            j += 1
        kept = 0
        for m in range(i, j):
            if kept < top_k and counts[m] >= min_count:
                keep[m] = True
                kept += 1
        if kept > 0:
            n_rows += 1
        i = j
    s_keys = np.empty(n_rows, np.int64)
    s_ptr = np.zeros(n_rows + 1, np.int64)
    n_keep = 0
    for m in range(n):
        if keep[m]:
            n_keep += 1
    s_succ = np.empty(n_keep, np.int32)
    s_prob = np.empty(n_keep, np.float32)
    r = -1
    e = 0
    prev = np.int64(-1)
    for m in range(n):
        if not keep[m]:
            continue
        if pairs[m] != prev:
            r += 1
            s_keys[r] = pairs[m]
            s_ptr[r] = e
            prev = pairs[m]
        s_succ[e] = succs[m]
        s_prob[e] = counts[m] / totals[pair_totals_idx[m]]
        e += 1
        s_ptr[r + 1] = e
    return s_keys, s_ptr, s_succ, s_prob


# ----------------------------------------------------------------------------- wrappers

def _as_tokens(tokens, n_vocab: int) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(tokens, dtype=np.int64))
    if arr.ndim != 1:
        raise ValueError("tokens must be a 1-D sequence of token ids")
    if arr.size and (arr.min() < 0 or arr.max() >= n_vocab):
        raise ValueError(f"token ids must be in [0, {n_vocab})")
    return arr.astype(np.int32)


def count_static(streams, n_vocab: int, top_k: int = 12, min_count: int = 1):
    """CSR arrays (keys, ptr, succ, prob) of the top_k successors of every tri-gram context and
    every bigram context (key V*V + b) seen in the token streams; tri-grams never span streams."""
    v = np.int64(n_vocab)
    tri, bi = [], []
    for stream in streams:
        t = _as_tokens(stream, n_vocab).astype(np.int64)
        if t.size >= 2:
            bi.append((v * v + t[:-1]) * v + t[1:])
        if t.size >= 3:
            tri.append(((t[:-2] * v) + t[1:-1]) * v + t[2:])
    parts = [p for p in tri + bi]
    if not parts:
        empty = np.empty(0, np.int64)
        return empty, np.zeros(1, np.int64), np.empty(0, np.int32), np.empty(0, np.float32)
    grams, counts = np.unique(np.concatenate(parts), return_counts=True)
    pairs, succs = grams // v, (grams % v).astype(np.int32)
    order = np.lexsort((-counts, pairs))
    pairs, succs, counts = pairs[order], succs[order], counts[order].astype(np.int64)
    uniq_pairs, first, inverse = np.unique(pairs, return_index=True, return_inverse=True)
    totals = np.bincount(inverse, weights=counts).astype(np.float64)
    return _prune_sorted(pairs, succs, counts, inverse.astype(np.int64), totals, top_k, min_count)


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

    def __post_init__(self):
        if self.n_vocab <= 0 or self.n_vocab > 3_000_000:
            raise ValueError("n_vocab must be in 1..3,000,000")
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

    def update(self, tokens, start: int = 0) -> None:
        """Raise the weights of every tri-gram (and bigram) ending at tokens[start:]."""
        arr = _as_tokens(tokens, self.n_vocab)
        i = max(int(start), 0)
        while i < arr.shape[0]:
            i = _adapt(self.keys, self.rowof, self.succ, self.w, self.n_rows, arr, i,
                       self.n_vocab, np.float32(self.increment), np.float32(self.cap))
            if i < arr.shape[0]:
                self._grow()

    def successors(self, a: int, b: int, top_k: int | None = None):
        """(tokens, probabilities) of the best successors of the context (a, b); a may be -1."""
        k = self.top_k if top_k is None else int(top_k)
        if not (0 <= b < self.n_vocab) or not (-1 <= a < self.n_vocab) or k < 1:
            raise ValueError("successors: token ids out of range or top_k < 1")
        out_tok = np.empty(k, np.int32)
        out_p = np.empty(k, np.float32)
        n = _successors(np.int64(a), np.int64(b), self.n_vocab, *self.kernel_arrays(), k, out_tok, out_p)
        return out_tok[:n], out_p[:n]

    def kernel_arrays(self):
        """The arrays every drafting kernel takes, in kernel argument order."""
        return (self.keys, self.rowof, self.succ, self.w,
                self.s_keys, self.s_ptr, self.s_succ, self.s_prob)

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> None:
        """Write atomically (temporary file in the same folder, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        n = self.adaptive_rows
        meta = dict(format="aded-edge-trigram", version=FORMAT_VERSION, n_vocab=self.n_vocab,
                    fingerprint=self.fingerprint, top_k=self.top_k,
                    increment=self.increment, cap=self.cap)
        used = self.keys != EMPTY
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, meta=np.array(json.dumps(meta)),
                         a_keys=self.keys[used], a_rows=self.rowof[used],
                         a_succ=self.succ[:n], a_w=self.w[:n],
                         s_keys=self.s_keys, s_ptr=self.s_ptr, s_succ=self.s_succ, s_prob=self.s_prob)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path, n_vocab: int | None = None, fingerprint: str | None = None) -> "TrigramMatrix":
        """Read a matrix file; with n_vocab/fingerprint given, refuse one made for another model."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                arrays = {k: z[k] for k in z.files if k != "meta"}
        except FileNotFoundError:
            raise MatrixFileError(f"matrix file not found: {path}") from None
        except Exception as e:  # zip, json or npy decoding errors all mean the same thing here
            raise MatrixFileError(f"matrix file {path} is corrupt or truncated ({type(e).__name__}); "
                                  f"rebuild it or delete it") from None
        if meta.get("format") != "aded-edge-trigram" or meta.get("version") != FORMAT_VERSION:
            raise MatrixFileError(f"{path} is not an aded-edge matrix of format version {FORMAT_VERSION}")
        if n_vocab is not None and meta["n_vocab"] != n_vocab or (
                fingerprint and meta.get("fingerprint") and meta["fingerprint"] != fingerprint):
            raise MatrixFileError(f"{path} was built for another model (vocabulary {meta['n_vocab']}, "
                                  f"fingerprint {meta.get('fingerprint', '')[:12]}); rebuild it for this model")
        m = cls(n_vocab=int(meta["n_vocab"]), fingerprint=meta.get("fingerprint", ""),
                top_k=int(meta["top_k"]), increment=float(meta["increment"]), cap=float(meta["cap"]))
        try:
            n = arrays["a_succ"].shape[0]
            if arrays["a_succ"].ndim != 2 or arrays["a_succ"].shape[1] != m.top_k:
                raise ValueError("adaptive rows have the wrong width")
            rows = 1 << max(12, int(np.ceil(np.log2(max(n, 1)))) + 1)
            m._alloc(rows)
            a_keys = np.ascontiguousarray(arrays["a_keys"], np.int64)
            a_rows = np.ascontiguousarray(arrays["a_rows"], np.int32)
            if a_keys.shape != a_rows.shape or (a_rows.size and (a_rows.min() < 0 or a_rows.max() >= n)):
                raise ValueError("row index out of range")
            if np.unique(a_keys).size != a_keys.size or (a_keys.size and a_keys.min() < 0):
                raise ValueError("duplicate or negative pair keys")
            m.succ[:n], m.w[:n] = arrays["a_succ"], arrays["a_w"]
            _rehash(a_keys, a_rows, m.keys, m.rowof)
            m.n_rows[0] = n
            m.set_static(arrays["s_keys"], arrays["s_ptr"], arrays["s_succ"], arrays["s_prob"])
            if m.s_ptr[-1] != m.s_succ.shape[0] or m.s_succ.shape != m.s_prob.shape:
                raise ValueError("static rows do not match their pointers")
            if m.s_succ.size and (m.s_succ.min() < 0 or m.s_succ.max() >= m.n_vocab):
                raise ValueError("successor id out of range")
        except (KeyError, ValueError, IndexError) as e:
            raise MatrixFileError(f"matrix file {path} is inconsistent ({e}); rebuild it or delete it") from None
        return m
