"""The ADED authors' own drafter, wrapped as a baseline next to aded-edge's MCTS.

The reference drafter is the PyPI wheel `draftretriever==0.1.1` (Rust, built with maturin), which
the ADED paper (arXiv 2407.12021) ships for its experiments; its Python shell says "adapted from
FasterDecoding/REST" and keeps REST's API, but the binary is the ADED version, not REST's suffix
array: `Writer.add_entry` counts the tri-grams inside each entry, `Writer.finalize` normalises
them per (t-2, t-1) pair and writes the matrix (bincode) to one file, `Reader` loads it keeping
the 12 most probable successors of each pair, and `Reader.search(context, choices=n)` first adapts
the matrix to the context (+0.04 to each tri-gram of its last 16 tokens, capped at 3.0; the
change persists in the reader), then runs an MCTS of 150 simulations (pUCT, c1 = 32, c2 = 8,
random rollouts) from the last two tokens, keeps the 24 most visited node paths (at most 3 tokens)
each extended by its most probable successor, and cuts them REST-style to about `choices` tokens.
It returns REST's five draft buffers; `paths_to_tree` turns the first (the retrieved token paths)
into aded-edge's flat `DraftTree`. Nothing here imports llama_cpp.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .draft import DraftTree

WHEEL = "draftretriever==0.1.1"
INDEX_FILE = "reference.idx"
CONTEXT_WINDOW = 16   # the reference adapts to, and searches from, the last 16 context tokens only
MIN_CHOICES = 2       # the wheel aborts the whole process (Rust panic) when choices < 2


def paths_to_tree(paths, max_nodes: int | None = None, max_depth: int | None = None) -> DraftTree:
    """Convert retrieved token paths into a DraftTree (pure function, no retriever needed).

    `paths` is the first value `draftretriever.Reader.search` returns: a list of token sequences
    that each continue the root (the last context token, not part of the paths), right-padded with
    a negative id (-2); the first negative id ends a path. The tree is the trie of the paths:
    paths sharing a prefix share its nodes, so siblings are unique. A path is first cut to
    `max_depth` tokens. Each node's `prob` is the share of the paths that pass through it (a
    frequency share, never above its parent's; not a calibrated probability) and `visits` is 1.
    Nodes are ordered by share (higher first), then depth, then token path, so parents precede
    children and every prefix is a tree; `max_nodes` keeps that prefix. Empty input gives the
    empty tree.
    """
    if (max_nodes is not None and max_nodes <= 0) or (max_depth is not None and max_depth <= 0):
        return DraftTree.empty()
    count: dict[tuple, int] = {}   # token path from the root -> number of paths through it
    n_paths = 0
    for row in paths:
        prefix = ()
        for t in (row if max_depth is None else row[:max_depth]):
            t = int(t)
            if t < 0:
                break
            prefix += (t,)
            count[prefix] = count.get(prefix, 0) + 1
        n_paths += bool(prefix)
    if not count:
        return DraftTree.empty()
    order = sorted(count, key=lambda p: (-count[p], len(p), p))[:max_nodes]
    index = {p: i for i, p in enumerate(order)}
    tokens = np.array([p[-1] for p in order], np.int32)
    parents = np.array([index[p[:-1]] if len(p) > 1 else -1 for p in order], np.int32)
    depth = np.array([len(p) for p in order], np.int32)
    prob = np.array([count[p] / n_paths for p in order], np.float32)
    return DraftTree(tokens, parents, depth, prob, np.ones(len(order), np.int32))


def retrieve_indices_to_parents(retrieve_indices) -> np.ndarray:
    """Parent of every node of the reference's verification tree, from its `retrieve_indices`.

    `retrieve_indices` (the fifth value `search` returns) has one row per root-to-leaf path: 0 for
    the root, then the 1-based buffer index of each node on the path, right-padded with -1. Node
    i (1-based) gets index i - 1 in the result, holding its parent's 0-based index or -1 for a
    child of the root. Raises ValueError when a node is given two parents or is never reached.
    """
    n = max((int(i) for row in retrieve_indices for i in row), default=0)
    parents = np.full(n, -2, np.int32)
    for row in retrieve_indices:
        if len(row) == 0 or int(row[0]) != 0:
            raise ValueError("every retrieve_indices row starts at the root (0)")
        prev = 0
        for i in row[1:]:
            i = int(i)
            if i < 0:
                break
            if i == 0:
                raise ValueError("root index inside a path")
            p = prev - 1
            if parents[i - 1] not in (-2, p):
                raise ValueError(f"node {i} has two parents")
            parents[i - 1] = p
            prev = i
    if (parents == -2).any():
        raise ValueError("retrieve_indices leave some nodes unreached")
    return parents


def _import_wheel():
    try:
        import draftretriever
    except ImportError as e:
        raise ImportError(
            f"ReferenceDrafter needs the ADED authors' retriever wheel: pip install '{WHEEL}' "
            "(part of the dev extra; wheels exist for CPython 3.11/3.12 on Linux x86_64)") from e
    from importlib.metadata import PackageNotFoundError, version
    try:
        found = version("draftretriever")
    except PackageNotFoundError:
        found = "unknown"
    if found != WHEEL.split("==")[1]:
        raise ImportError(f"ReferenceDrafter is written against {WHEEL} (the ADED tri-gram MCTS build); "
                          f"found draftretriever {found}, whose search may differ (e.g. REST's suffix array)")
    return draftretriever


class ReferenceDrafter:
    """The ADED reference drafter (draftretriever 0.1.1) behind aded-edge's drafter interface.

    `streams`: token-id lists, the same corpus our own matrix is built from; each is one
    `add_entry` (tri-grams do not cross streams; streams under 3 tokens add nothing). The index is
    written to `index_dir/reference.idx` (replaced if present) and read back by a Reader.
    `max_nodes`/`max_depth` are the defaults of `draft`. The reference is randomised (its MCTS
    rollouts and Rust hash-map order), so two drafts of the same context may differ.

    Adaptation: the wheel has no update call. The reference adapts its matrix inside every search,
    from the context it is given (see the module docstring), and `draft` always passes the last 16
    history tokens, so the accepted tokens reach the matrix at the next draft, as in the reference
    decoding loop. `update` is therefore a no-op kept for the drafter interface.

    The wheel cannot copy or reset a reader, so `snapshot`/`restore` (the benchmark's repeats of
    one prompt) keep the contexts searched so far: `restore` loads the index again and searches
    the snapshot's contexts once more, which repeats their adaptation (it depends on the context
    alone, not on the randomised search).
    """

    def __init__(self, streams, n_vocab: int, index_dir, max_nodes: int = 64, max_depth: int = 4):
        self._wheel = dr = _import_wheel()
        self.n_vocab = int(n_vocab)
        self.max_nodes = int(max_nodes)
        self.max_depth = int(max_depth)
        Path(index_dir).mkdir(parents=True, exist_ok=True)
        self.index_path = str(Path(index_dir) / INDEX_FILE)
        if os.path.exists(self.index_path):
            os.remove(self.index_path)   # the Writer opens without truncating
        writer = dr.Writer(file_path=self.index_path, vocab_size=self.n_vocab)
        for stream in streams:
            ids = np.asarray(stream, dtype=np.int64)
            if ids.size and (ids.min() < 0 or ids.max() >= self.n_vocab):
                raise ValueError("stream token ids out of the vocabulary")
            writer.add_entry(ids.tolist())
        writer.finalize()
        del writer                       # its destructor finalizes (rewrites the same bytes) again
        self.reader = dr.Reader(index_file_path=self.index_path)
        self.last_search = None          # the raw 5-tuple of the last search, for inspection
        self._searched: list[tuple[int, ...]] = []   # every context searched, in order (see restore)

    def draft(self, history, max_nodes: int | None = None, max_depth: int | None = None) -> DraftTree:
        """Draft tree continuing `history` (its last token is the root/pending token). Needs at
        least two history tokens (the reference keys on the last two; fewer gives the empty tree,
        the wheel would abort). The reference is asked for `max_nodes` tokens (`choices`, at least
        2) and its paths are then cut to `max_nodes` nodes and `max_depth` depth."""
        nodes = self.max_nodes if max_nodes is None else int(max_nodes)
        depth = self.max_depth if max_depth is None else int(max_depth)
        if nodes <= 0 or depth <= 0 or len(history) < 2:
            return DraftTree.empty()
        context = [int(t) for t in history[-CONTEXT_WINDOW:]]
        if min(context) < 0 or max(context) >= self.n_vocab:
            raise ValueError("history token ids out of the vocabulary")
        self.last_search = self.reader.search(context, choices=max(nodes, MIN_CHOICES))
        self._searched.append(tuple(context))
        return paths_to_tree(self.last_search[0], max_nodes=nodes, max_depth=depth)

    def snapshot(self) -> tuple:
        """What the reader has adapted to so far: the contexts searched, for restore()."""
        return tuple(self._searched)

    def restore(self, snapshot: tuple) -> None:
        """Take the reader back to the state snapshot() saw (the snapshot stays usable): a fresh
        reader of the same index, given the snapshot's searches again. Nothing is done when no
        search has run since (the common case of a bench's first run of a prompt)."""
        if self._searched == list(snapshot):
            return
        self.reader = None               # free the old reader's tables before loading the new ones
        self.reader = self._wheel.Reader(index_file_path=self.index_path)
        for context in snapshot:
            self.reader.search(list(context), choices=MIN_CHOICES)
        self._searched = list(snapshot)

    def update(self, tokens) -> None:
        """No-op: the reference adapts inside each search, from the history `draft` passes."""
