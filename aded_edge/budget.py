"""How much of the draft tree to verify: maximise expected tokens per second.

    rate(k) = E[tokens | k nodes] / (c(k + 1) + overhead),   E = 1 + sum of the k best reach probs

c(n) is the measured cost of one llama_decode of n tokens on this machine (calibrated at load,
rescaled online as the KV cache grows); the reach probabilities are the matrix's predictions,
calibrated online against what the model really produced -- for every node of every MCTS tree,
verified or not, so the calibration never starves when the budget is small.
"""
from __future__ import annotations

import numpy as np

from .draft import DraftTree

# reach-probability bin edges of the calibration table (finer near 0 and 1)
P_EDGES = np.array([0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0001])
MAX_CAL_DEPTH = 8        # depths beyond share the last row
PRIOR_WEIGHT = 4.0       # pseudo-observations behind the initial belief
PRIOR_TRUST = 0.5        # initial belief: a node is reached half as often as the matrix says
COST_EMA = 0.05          # weight of one step's timing in the online cost scale
OVERHEAD_EMA = 0.1       # weight of one step in the per-step overhead estimate


class CostModel:
    """c(n): seconds for one llama_decode of n tokens, from a calibration curve and an online scale."""

    def __init__(self, sizes, seconds):
        sizes = np.asarray(sizes, dtype=np.float64)
        seconds = np.asarray(seconds, dtype=np.float64)
        if sizes.ndim != 1 or sizes.shape != seconds.shape or sizes.size == 0 or sizes[0] != 1:
            raise ValueError("cost curve needs matching sizes and seconds, starting at size 1")
        if np.any(np.diff(sizes) <= 0) or np.any(seconds <= 0):
            raise ValueError("cost curve sizes must increase and seconds be positive")
        self.sizes = sizes
        self.seconds = np.maximum.accumulate(seconds)  # a batch never costs less than a smaller one
        self.scale = 1.0          # online correction (KV growth, thermal state, other load)
        self.overhead = 0.0       # seconds per step outside llama_decode (draft, accept, bookkeeping)

    def base(self, n):
        n = np.asarray(n, dtype=np.float64)
        c = np.interp(n, self.sizes, self.seconds)
        if self.sizes.size >= 2:  # beyond the last point: continue the last slope
            slope = (self.seconds[-1] - self.seconds[-2]) / (self.sizes[-1] - self.sizes[-2])
            c = np.where(n > self.sizes[-1], self.seconds[-1] + (n - self.sizes[-1]) * max(slope, 0.0), c)
        return c

    def __call__(self, n):
        return self.base(n) * self.scale

    def observe(self, n: int, seconds: float, overhead: float) -> None:
        """Learn from one real step: a size on the curve moves its own point (a calibration made
        under other load is corrected where it matters); other sizes move the global scale."""
        self.overhead += OVERHEAD_EMA * (max(overhead, 0.0) - self.overhead)
        hit = np.flatnonzero(self.sizes == n)
        if hit.size:
            i = int(hit[0])
            self.seconds[i] += COST_EMA * (seconds / self.scale - self.seconds[i])
            self.seconds = np.maximum.accumulate(self.seconds)
            return
        ratio = seconds / float(self.base(n))
        self.scale += COST_EMA * (min(max(ratio, 0.2), 5.0) - self.scale)


class ReachCalibrator:
    """P(node reached | matrix reach probability, depth), learnt from labelled nodes."""

    def __init__(self):
        mid = (P_EDGES[:-1] + np.minimum(P_EDGES[1:], 1.0)) / 2
        self.tries = np.full((MAX_CAL_DEPTH, mid.size), PRIOR_WEIGHT)
        self.hits = np.tile(PRIOR_WEIGHT * PRIOR_TRUST * mid, (MAX_CAL_DEPTH, 1))

    def _cells(self, tree: DraftTree):
        d = np.minimum(tree.depth, MAX_CAL_DEPTH) - 1
        b = np.clip(np.searchsorted(P_EDGES, tree.prob, side="right") - 1, 0, P_EDGES.size - 2)
        return d, b

    def predict(self, tree: DraftTree) -> np.ndarray:
        """Calibrated reach probability of every node, never above its parent's."""
        d, b = self._cells(tree)
        q = self.hits[d, b] / self.tries[d, b]
        for i in range(len(tree)):  # parents precede children
            p = tree.parents[i]
            if p >= 0 and q[i] > q[p]:
                q[i] = q[p]
        return q

    def observe(self, tree: DraftTree, truth) -> None:
        """Label each node whose depth the true continuation covers (reached or not) and learn."""
        n_known = len(truth)
        reached = np.zeros(len(tree), dtype=bool)
        known = tree.depth <= n_known
        for i in range(len(tree)):
            if known[i]:
                p = tree.parents[i]
                reached[i] = (p < 0 or reached[p]) and tree.tokens[i] == truth[tree.depth[i] - 1]
        d, b = self._cells(tree)
        np.add.at(self.tries, (d[known], b[known]), 1.0)
        np.add.at(self.hits, (d[known], b[known]), reached[known].astype(np.float64))


def order_by(tree: DraftTree, q: np.ndarray):
    """Tree and q reordered by q descending (shallower first on ties): every prefix is a tree
    because q never rises from parent to child."""
    order = np.lexsort((tree.depth, -q))
    return tree.take(order), q[order]


def best_size(q_sorted: np.ndarray, cost: CostModel, min_q: float = 0.0) -> int:
    """k in 0..len(q) maximising (1 + sum(q[:k])) / (c(k + 1) + overhead)."""
    q = q_sorted[q_sorted >= min_q] if min_q > 0 else q_sorted
    expected = 1.0 + np.concatenate(([0.0], np.cumsum(q)))
    seconds = cost(np.arange(1, q.size + 2)) + cost.overhead
    return int(np.argmax(expected / seconds))
