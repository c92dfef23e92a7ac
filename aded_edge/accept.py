"""Acceptance: walk the verified tree with the model's own choices.

At every node the next token is chosen exactly as plain llama.cpp would choose it from that
node's logits (argmax for greedy; a draw from llama-cpp-python's sampler chain otherwise). The
walk descends while the chosen token is a child; the first token that is not a child is the bonus
token. Every emitted token is therefore the model's own choice given the emitted prefix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .draft import DraftTree


@dataclass(frozen=True)
class Sampling:
    """The options of llama-cpp-python's default sampler chain that a tree can honour."""
    temp: float = 0.8      # 0: greedy; < 0: plain softmax draw (llama-cpp-python semantics)
    top_k: int = 40        # <= 0 keeps every token
    top_p: float = 0.95    # >= 1 disables
    min_p: float = 0.05    # <= 0 disables
    seed: int = 0          # seeds the draws of one generation

    @property
    def greedy(self) -> bool:
        return self.temp == 0.0


def sampling_distribution(logits: np.ndarray, s: Sampling):
    """(token ids, probabilities) that llama.cpp's chain top_k -> top_p -> min_p -> temp -> dist
    draws from (typical_p = 1). With temp < 0 llama-cpp-python draws from the full softmax."""
    x = np.asarray(logits, dtype=np.float64)
    if s.temp < 0:
        ids = np.arange(x.shape[0])
        p = np.exp(x - x.max())
        return ids, p / p.sum()
    # top_k: the k largest logits, sorted descending
    k = x.shape[0] if s.top_k <= 0 else min(s.top_k, x.shape[0])
    ids = np.argpartition(-x, k - 1)[:k] if k < x.shape[0] else np.arange(x.shape[0])
    ids = ids[np.argsort(-x[ids], kind="stable")]
    lg = x[ids]
    # top_p on the softmax of the (untempered) logits: smallest prefix with mass >= p
    if s.top_p < 1.0:
        p = np.exp(lg - lg[0])
        cum = np.cumsum(p / p.sum())
        keep = int(np.searchsorted(cum, s.top_p, side="left")) + 1
        ids, lg = ids[:keep], lg[:keep]
    # min_p: logits within log(min_p) of the best
    if s.min_p > 0.0 and lg.shape[0] > 1:
        keep = lg >= lg[0] + np.log(s.min_p)
        ids, lg = ids[keep], lg[keep]
    p = np.exp((lg - lg[0]) / s.temp)
    return ids, p / p.sum()


def make_chooser(s: Sampling) -> Callable[[np.ndarray], int]:
    """A function logits -> next token, the way plain decoding would pick it."""
    if s.greedy:
        return lambda logits: int(np.argmax(logits))
    rng = np.random.default_rng(s.seed)

    def draw(logits: np.ndarray) -> int:
        ids, p = sampling_distribution(logits, s)
        return int(ids[min(int(np.searchsorted(np.cumsum(p), rng.random() * p.sum(), side="right")),
                           ids.shape[0] - 1)])
    return draw


def walk_tree(tree: DraftTree, choice: Callable[[int], int]):
    """Accept along the tree. choice(i) is the model's token at batch row i (0 = the pending token,
    1 + j = node j), chosen from that row's logits. Returns (accepted node indices, emitted tokens):
    at least 1 token, at most len(accepted) + 1, the last one being the bonus token that is not in
    the KV cache yet."""
    if not len(tree):   # a plain step
        return [], [choice(0)]
    children: dict[tuple[int, int], int] = {}
    for j in range(len(tree)):
        children[(int(tree.parents[j]), int(tree.tokens[j]))] = j
    accepted: list[int] = []
    emitted: list[int] = []
    node = -1
    while True:
        tok = choice(node + 1)
        emitted.append(tok)
        nxt = children.get((node, tok))
        if nxt is None:
            return accepted, emitted
        accepted.append(nxt)
        node = nxt


def rejected_choices(tree: DraftTree, accepted: list, top: np.ndarray, pending: int):
    """The model's most likely next token after every verified node it did not accept, as grams
    (a, b) -> c for TrigramMatrix.update_grams: b the node's token, a its parent's (`pending` for
    a child of the pending token), c = top[1 + node], the argmax of the node's logits (top: the
    argmax of every batch row, row 0 the pending token's). The verification computed them anyway;
    the text may reach such a pair later. Always the argmax, never a draw: a sampled generation's
    random stream stays the one plain decoding would use."""
    rejected = np.setdiff1d(np.arange(len(tree)), np.asarray(accepted, dtype=np.int64), assume_unique=True)
    parents = tree.parents[rejected]
    a = np.where(parents >= 0, tree.tokens[np.maximum(parents, 0)], pending).astype(np.int64)
    return a, tree.tokens[rejected].astype(np.int64), np.asarray(top, dtype=np.int64)[rejected + 1]
