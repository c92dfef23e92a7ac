"""How much of the draft tree to verify: maximise expected tokens per second.

    rate(k) = E[tokens | k nodes] / (c(k + 1) + overhead),   E = 1 + sum of the k best reach probs

c(n) is the measured cost of one llama_decode of n tokens on this machine (calibrated at load, with
a term for the KV cells each row reads, corrected online by the real steps); the reach
probabilities are the matrix's predictions, calibrated online against what the model really produced -- for every node of every MCTS tree,
verified or not, so the calibration never starves when the budget is small.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from collections import deque

from .config import DraftConfig
from .draft import ContextLookup, DraftTree, build_draft, chain_first, probe_tree, take_arrays, with_copy_chain
from .trigram import TrigramMatrix

# reach-probability bin edges of the calibration table (finer near 0 and 1)
P_EDGES = np.array([0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0001])
MAX_CAL_DEPTH = 16       # depths beyond share the last row
KINDS = 5                # calibration rows: 0, 1 matrix kinds (DraftTree.seen), 2-4 copies found by a
COPY_ROW = 5             # 3-, 2-, 1-token match (row COPY_ROW - DraftTree.copied)
COPY_PRIOR = 1.0         # weight (observations) of the calibration in a copy node's chance: whether
                         # the answer copies its input is a property of the text, learnt from it
LABEL_CHUNK = 4          # a waiting tree is labelled once this many more of its depths are known
PRIOR_WEIGHT = 4.0       # pseudo-observations behind the initial belief
PRIOR_TRUST = 0.5        # initial belief: a node is reached half as often as the matrix says
COST_EMA = 0.05          # least weight of one step's timing at a point of the cost curve (the first
                         # steps at a point are averaged: see CostModel.observe)
COST_PRIOR = 2.0         # real steps the calibrated c(1) counts as
POINT_PRIOR = 4.0        # tree steps at a point before they weigh as much as all trees' ratio ...
LEVEL_PRIOR = 8.0        # ... and tree steps in all before theirs weighs as much as c(1)'s (_refresh)
SWITCH_SAMPLES = 9       # the shape-switch cost is the median of the last this many seen: switches
                         # are rare where few trees pay, so one decode slowed by other load must not
                         # price every tree after it (an average had kept one such spike at 11 ms)
OVERHEAD_EMA = 0.1       # weight of one step in the per-step overhead estimate
TABLE_SIZE = 258         # batch sizes 0..257 kept as a lookup table (a tree has at most 255 nodes)
TABLE_REFRESH = 32       # steps between rebuilds of that table from the corrected curve (a rebuild
                         # costs ~150 us after a decode; COST_EMA moves a point over ~20 steps); the
                         # first rebuilds come after 1, 2, 4, ... steps
TRUST_DECAY = 0.95       # per verified tree: weight left to older trees in the trust estimate
TRUST_FORGET = 0.98      # per plain step: drafting is forgotten slowly, so trust recovers to test again
TRUST_PRIOR = 2.0        # pseudo-tokens behind the initial trust of 1
TRUST_RANGE = (0.25, 1.25)
SIMS_PER_NODE = 4        # MCTS simulations per node of the trees the budget has been verifying
MIN_SIMS = 32            # ... but never fewer than this (replay: 30 sims pick the same 4- to 16-node
                         # trees as 150; a 64-node tree needs the config's 150)
SIZE_EMA = 0.1           # weight of one search in the running size of the trees it ends in
RISK_BASE = 10.0         # plain steps a text's trees may cost beyond what they have won (10 of a
                         # 128-token answer's 128: 0.93x), see ReachCalibrator.at_stake ...
RISK_START = 5.0         # ... from this many at the text's first step, growing by RISK_GROWTH a step
RISK_GROWTH = 0.25       # (RISK_BASE from its 20th step on): a short answer stakes less
RISK_FLOOR = 1.0         # ... but one tree may always cost this much more than a plain step (a
                         # GPU's padded tree costs ~0.3; the trust still shrinks failing trees)
NO_DRAFT = DraftTree.empty()   # what a step that drafts nothing verifies (one shared, empty tree)


# ----------------------------------------------------------------------------- kernels

@njit(cache=True)
def _predict(depth, prob, seen, copied, parents, hits, tries, text_hits, text_tries, edges):
    """Calibrated reach probability per node, clamped to never exceed its parent's. A node on the
    copy chain takes the larger of its matrix kind's chance and its copy's: this text's own record
    of that kind of copy at its depth, with the calibration as a prior worth COPY_PRIOR observations."""
    n = depth.shape[0]
    q = np.zeros(n, np.float64)
    last_d, last_b = hits.shape[1] - 1, edges.shape[0] - 2
    for i in range(n):
        d = min(depth[i], last_d + 1) - 1
        b = min(max(np.searchsorted(edges, prob[i], side="right") - 1, 0), last_b)
        s = np.int64(seen[i])
        if s < 2:
            q[i] = hits[s, d, b] / tries[s, d, b]
        if copied[i] > 0:
            r = COPY_ROW - np.int64(copied[i])
            prior = hits[r, d, b] / tries[r, d, b]
            q[i] = max(q[i], (text_hits[r, d] + COPY_PRIOR * prior) / (text_tries[r, d] + COPY_PRIOR))
        if parents[i] >= 0 and q[i] > q[parents[i]]:
            q[i] = q[parents[i]]
    return q


@njit(cache=True)
def _observe(depth, prob, seen, copied, parents, tokens, truth, done, hits, tries, text_hits, text_tries, edges):
    """Label every node deeper than `done` whose depth the true continuation covers: reached or not."""
    n = depth.shape[0]
    reached = np.zeros(n, np.bool_)
    last_d, last_b = hits.shape[1] - 1, edges.shape[0] - 2
    for i in range(n):
        if depth[i] > truth.shape[0]:
            continue
        p = parents[i]
        reached[i] = (p < 0 or reached[p]) and tokens[i] == truth[depth[i] - 1]
        if depth[i] <= done:
            continue
        d = min(depth[i], last_d + 1) - 1
        b = min(max(np.searchsorted(edges, prob[i], side="right") - 1, 0), last_b)
        hit = 1.0 if reached[i] else 0.0
        s = np.int64(seen[i])
        if s < 2:
            tries[s, d, b] += 1.0
            hits[s, d, b] += hit
        if copied[i] > 0:
            r = COPY_ROW - np.int64(copied[i])
            tries[r, d, b] += 1.0
            hits[r, d, b] += hit
            text_tries[r, d] += 1.0
            text_hits[r, d] += hit


@njit(cache=True)
def _tree_step(table, k, row, overhead, extra):
    """Seconds of a step that verifies k draft nodes: the decode of k + 1 tokens (table: c(n) at
    the curve's prefix, row: each row's cost for the KV cells beyond it), the drafting step's time
    around it, and the graph switch it causes (see CostModel)."""
    return table[k + 1] + (k + 1) * row + overhead + extra


@njit(cache=True)
def _best_size(q, table, row, overhead, plain, min_q, min_gain, extra, max_loss):
    """k maximising (1 + sum of the first k q) / _tree_step(k), over q >= min_q; k > 0 only where
    that rate beats a plain step's (1 token in `plain` seconds) by 1 + min_gain, and only where
    the step costs at most max_loss seconds more than a plain step."""
    best_k, best_rate, expected = 0, (1.0 + min_gain) / plain, 1.0
    k = 0
    for i in range(q.shape[0]):
        if q[i] < min_q:
            continue
        k += 1
        if k + 1 >= table.shape[0]:
            break
        seconds = _tree_step(table, k, row, overhead, extra)
        if seconds - plain > max_loss:
            break
        expected += q[i]
        rate = expected / seconds
        if rate > best_rate:
            best_k, best_rate = k, rate
    return best_k


@njit(cache=True)
def _order(q, tokens, parents, depth, prob, visits, seen, copied):
    """The tree's arrays and q in node order by q descending, shallower first on ties, else
    original order (stable)."""
    order = np.argsort(-q + 1e-9 * depth, kind="mergesort")
    return take_arrays(order, tokens, parents, depth, prob, visits, seen, copied), q[order]


@njit(cache=True)
def _search_pays(depth, prob, seen, copied, parents, hits, tries, text_hits, text_tries, edges, trust,
                 table, row, overhead, plain, max_k, min_q, min_gain, extra, max_loss):
    """Whether a search could pay: the probe's own nodes would be verified (_best_size of their q,
    sorted: q never rises from parent to child), or k alternatives to its first token, each no
    likelier than the best and together at most certain, could pay for a batch (what a flat
    curve, a GPU's, verifies). Predict, sort and size in one call, since the probe runs every
    step, right after a decode has swept the caches (where each call costs tens of microseconds)."""
    if depth.shape[0] == 0:
        return False
    q = np.sort(_predict(depth, prob, seen, copied, parents, hits, tries, text_hits, text_tries, edges))[::-1]
    q = np.minimum(q[:max_k] * trust, 1.0)
    if _best_size(q, table, row, overhead, plain, min_q, min_gain, extra, max_loss) > 0:
        return True
    if q[0] < min_q:
        return False
    bar = (1.0 + min_gain) / plain
    for k in range(1, min(max_k, table.shape[0] - 2) + 1):
        seconds = _tree_step(table, k, row, overhead, extra)
        if seconds - plain > max_loss:
            break
        if (1.0 + min(k * q[0], 1.0)) / seconds > bar:
            return True
    return False


# ----------------------------------------------------------------------------- wrappers


def _plausible(sizes, seconds, weights=None):
    """A batch never costs less than a smaller one, nor more than decoding its tokens one by one.
    Points out of order are pooled to their weighted mean (isotonic fit, pool adjacent violators):
    noise is averaged rather than the larger value kept, and a point confirmed by many real steps
    (weights: how many) moves a merely calibrated neighbour, not the other way round."""
    weights = np.ones(len(seconds)) if weights is None else weights
    blocks = []  # [mean, weight, points]
    for x, w in zip(seconds, weights):
        blocks.append([float(x), float(w), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (b, wb, nb), (a, wa, na) = blocks.pop(), blocks.pop()
            blocks.append([(a * wa + b * wb) / (wa + wb), wa + wb, na + nb])
    fit = np.repeat([b[0] for b in blocks], [b[2] for b in blocks])
    return np.minimum(fit, sizes * fit[0])  # both non-decreasing: so is their minimum


class CostModel:
    """c(n, L): seconds for one llama_decode of n tokens with L cells in the KV cache. A calibration
    curve c(n) at `prefix` cells, a cost per batch row and KV cell beyond it (`per_cell`: attention
    reads every cell for every row, so a tree's cost grows with the context faster than a plain
    step's; Qwen 1.5B on the 2-core Xeon: 16 rows cost 4.9 one-token decodes at 64 cells, 6.0 at
    2048), and online corrections from every real step."""

    def __init__(self, sizes, seconds, switch: float = 0.0, per_cell: float = 0.0, prefix: int = 0):
        sizes = np.asarray(sizes, dtype=np.float64)
        seconds = np.asarray(seconds, dtype=np.float64)
        if sizes.ndim != 1 or sizes.shape != seconds.shape or sizes.size == 0 or sizes[0] != 1:
            raise ValueError("cost curve needs matching sizes and seconds, starting at size 1")
        if np.any(np.diff(sizes) <= 0) or np.any(seconds <= 0):
            raise ValueError("cost curve sizes must increase and seconds be positive")
        self.sizes = sizes
        self.seconds = _plausible(sizes, seconds)
        self._calibrated = self.seconds.copy()   # the curve as measured at load
        # real steps seen at each point (a step between two points counts for both, by its
        # distance) and the mean log ratio of their cost to the calibrated one (see _refresh)
        self._seen = np.zeros(sizes.size)
        self._dev = np.zeros(sizes.size)
        self.per_cell = max(float(per_cell), 0.0)
        self.prefix = int(prefix)
        self.kv = self.prefix        # KV cells of the coming step (at(): the step loop sets it)
        self.row = 0.0               # seconds each batch row costs now beyond the curve, for those cells
        self.overhead = 0.0       # seconds per drafting step outside llama_decode (search, accept, bookkeeping)
        self.overhead_plain = 0.0  # the same for a step that verified no draft (mostly no search either)
        self._table = None        # c(0..TABLE_SIZE-1) at the curve's prefix, rebuilt by _refresh
        self._pending = 0         # observations since the table was rebuilt
        self._observed = 0        # observations in all
        # llama.cpp reuses its compute graph while batches keep their shape and rebuilds it when the
        # size changes: a one-token decode right after a tree costs `switch` seconds more than one
        # in a run of them (SmolLM2 on the 2-core Xeon: about 0.8 ms on 11 ms). c(1) is the cost
        # inside a run; a tree drafted after a plain step also pays the switch back to plain.
        self.switch = max(float(switch), 0.0)
        self._switches = deque([self.switch], maxlen=SWITCH_SAMPLES)   # the calibrated one, then real ones
        self.last_size = 1        # batch size of the last real step

    @property
    def level(self) -> float:
        """c(1) now over c(1) calibrated: how much faster or slower the machine runs than at load."""
        return float(self.seconds[0] / self._calibrated[0])

    def at(self, kv: int) -> None:
        """The coming step's batch starts after kv cells of the KV cache."""
        self.kv = int(kv)
        self.row = self.per_cell * self.level * max(self.kv - self.prefix, 0)

    @property
    def tree_extra(self) -> float:
        """Seconds a tree now costs beyond c(k + 1): after a plain step, the plain step after it
        pays the graph switch (after a tree, the next plain step pays it anyway)."""
        return self.switch if self.last_size == 1 else 0.0

    def tree_step(self, k: int) -> float:
        """Seconds of a step that verifies k > 0 draft nodes now (as the budget's kernels price it)."""
        return float(_tree_step(self.table, k, self.row, self.overhead, self.tree_extra))

    def plain_step(self, before_search: bool = False) -> float:
        """Seconds of the plain step a tree competes with. Once a search has run, its time is spent
        either way, so a plain step is charged a drafting step's overhead too; before it, a plain
        step costs only its own (a search must also pay for itself)."""
        return self.table[1] + self.row + (self.overhead_plain if before_search else self.overhead)

    @property
    def table(self) -> np.ndarray:
        if self._table is None:
            self._table = self.base(np.arange(TABLE_SIZE))
        return self._table

    def base(self, n, curve=None):
        """c(n) at the curve's prefix: interpolated between points, the last slope beyond them."""
        n = np.asarray(n, dtype=np.float64)
        s = self.seconds if curve is None else curve
        c = np.interp(n, self.sizes, s)
        if self.sizes.size >= 2:  # beyond the last point: continue the last slope
            slope = (s[-1] - s[-2]) / (self.sizes[-1] - self.sizes[-2])
            c = np.where(n > self.sizes[-1], s[-1] + (n - self.sizes[-1]) * max(slope, 0.0), c)
        return c

    def __call__(self, n):
        """c(n) for the KV cells set by at()."""
        if isinstance(n, (int, np.integer)) and 0 <= n < TABLE_SIZE:
            return float(self.table[n]) + n * self.row
        return self.base(n) + np.asarray(n, dtype=np.float64) * self.row

    def plain_tokens(self, m: int) -> float:
        """Seconds plain decoding takes for the next m tokens, one decode each, from the cells set
        by at() on (each token's decode reads one cell more than the last)."""
        return m * self(1) + self.per_cell * self.level * m * (m - 1) / 2 if self.kv >= self.prefix else m * self(1)

    def observe(self, n: int, seconds: float, overhead: float, drafted: bool = True) -> None:
        """Learn from one real step of n tokens after the cells set by at(). The time outside
        llama_decode is learnt apart for steps that verified drafts and steps that did not: a
        search costs Python time a plain step does not pay (SmolLM2 on the 2-core Xeon: 0.55 ms
        against 0.24 ms per step). The decode's own time, less the KV term, corrects the curve:
        one-token decodes its first point (the level), trees the points around their size."""
        if drafted:
            self.overhead += OVERHEAD_EMA * (max(overhead, 0.0) - self.overhead)
        else:
            self.overhead_plain += OVERHEAD_EMA * (max(overhead, 0.0) - self.overhead_plain)
        n = int(n)
        switched, self.last_size = n != self.last_size, n
        seconds = max(seconds - n * self.row, 1e-9)
        if n == 1 and switched:   # the first one-token decode after a tree: its excess is the switch
            self._switches.append(max(seconds - self.seconds[0], 0.0))
            self.switch = sorted(self._switches)[len(self._switches) // 2]
        elif n == 1:
            self._seen[0] += 1
            self.seconds[0] += max(COST_EMA, 1.0 / (COST_PRIOR + self._seen[0])) * (seconds - self.seconds[0])
        elif n > 1:
            x = np.log(min(max(seconds / float(self.base(n, self._calibrated)), 0.2), 5.0))
            right = min(int(np.searchsorted(self.sizes, n)), self.sizes.size - 1)
            left = max(right - 1, 0)
            t = 1.0 if n >= self.sizes[right] else (n - self.sizes[left]) / (self.sizes[right] - self.sizes[left])
            for i, w in ((left, 1.0 - t), (right, t)):
                if w > 0 and i > 0:
                    self._seen[i] += w
                    self._dev[i] += w * max(COST_EMA, 1.0 / self._seen[i]) * (x - self._dev[i])
        self._pending += 1
        self._observed += 1
        if self._pending >= TABLE_REFRESH or self._observed & (self._observed - 1) == 0:   # 1, 2, 4, 8...
            self._refresh()

    def _refresh(self) -> None:
        """Rebuild the curve from the real steps (in batches: the step loop stays cheap). A point's
        cost is the calibrated one times its real steps' mean ratio, shrunk towards the ratio all
        trees showed (by POINT_PRIOR steps), which is itself shrunk towards the level of one-token
        decodes (by LEVEL_PRIOR steps): a calibration taken while the machine was slower or faster
        keeps its shape at the level seen now until trees say otherwise, and a point that real
        trees rarely take follows what the others found (a calibration whose one-token decode
        was slowed by other load had priced every tree 15% low on the Xeon)."""
        trees = self._seen[1:]
        log_level = np.log(self.level)
        shared = (float(np.dot(trees, self._dev[1:])) + LEVEL_PRIOR * log_level) / (float(trees.sum()) + LEVEL_PRIOR)
        dev = (trees * self._dev[1:] + POINT_PRIOR * shared) / (trees + POINT_PRIOR)
        curve = self.seconds.copy()
        curve[1:] = self._calibrated[1:] * np.exp(dev)
        self.seconds = _plausible(self.sizes, curve, 1.0 + self._seen)
        self._table = self.base(np.arange(TABLE_SIZE))
        self.at(self.kv)
        self._pending = 0


class ReachCalibrator:
    """P(node reached | matrix reach probability, depth, kind of node), learnt from labelled
    nodes; kinds: path not seen in this context, path seen in it, on the context's copy chain
    (found by a 3-, 2- or 1-token match). Copy-chain nodes are also counted per kind and depth for
    the current text alone, which decides their chance once it has a few (an answer that copies
    its input, or one that does not)."""

    def __init__(self):
        mid = (P_EDGES[:-1] + np.minimum(P_EDGES[1:], 1.0)) / 2
        # one table per kind of node (rows: see KINDS)
        self.tries = np.full((KINDS, MAX_CAL_DEPTH, mid.size), PRIOR_WEIGHT)
        self.hits = np.tile(PRIOR_WEIGHT * PRIOR_TRUST * mid, (KINDS, MAX_CAL_DEPTH, 1))
        # copy-chain nodes of the current text only, per kind and depth (see _predict)
        self.text_hits = np.zeros((KINDS, MAX_CAL_DEPTH))
        self.text_tries = np.zeros((KINDS, MAX_CAL_DEPTH))
        self._waiting = deque()  # [tree, index in the history of the token its depth-1 nodes predict,
                                 #  its depths labelled so far, its deepest depth]
        # trust: accepted / predicted drafts over the trees really verified. Choosing the
        # best-looking prefix of each tree is optimistic (the winner's curse): nodes calibrated
        # over all trees are accepted less often once they are the ones chosen.
        self._predicted = 0.0
        self._accepted = 0.0
        # nodes of the trees the searches ended in (0 when the budget cut a search to nothing);
        # None until the first search, which gets the config's full simulation count
        self.searched_size = None
        self.bank = 0.0          # plain steps this text's verified trees have won (lost: negative)
        self.steps = 0           # steps of this text so far (see at_stake)
        self.stake = 0.0         # plain steps the tree about to be verified costs beyond a plain step

    @property
    def trust(self) -> float:
        """Factor on every calibrated reach probability before the budget decides."""
        t = (self._accepted + TRUST_PRIOR) / (self._predicted + TRUST_PRIOR)
        return min(max(t, TRUST_RANGE[0]), TRUST_RANGE[1])

    def at_stake(self) -> float:
        """Plain steps the next tree may cost beyond a plain step. A tree whose nodes all fail
        slows its text by that much, so a text stakes at most its allowance beyond what its drafts
        have won (bank), though always RISK_FLOOR: its first trees stay small where big ones are
        dear (a CPU), and grow as the text's drafts pay. The expected rate alone would bet a
        31-node copy at an answer's start (15 plain steps on the 2-core EPYC) on a 60% first
        token: right on average over answers, yet the answers it failed on ran at 0.75-0.88x in
        replay (README, How it works). The allowance grows with the text, from RISK_START to
        RISK_BASE: a loss weighs most in a short answer, and an answer's first copy is often still
        unsure (replay of 30 Qwen recordings: prompts below 0.93x 6 -> 1, code +1.8%)."""
        allowance = min(RISK_START + RISK_GROWTH * self.steps, RISK_BASE)
        return max(allowance + self.bank, RISK_FLOOR)

    def settle(self, predicted: float, accepted: int) -> None:
        """One step's outcome: the summed predicted reach of the verified nodes (0: a plain step)
        and how many of them the model accepted."""
        self.bank += accepted - self.stake
        self.stake = 0.0
        self.steps += 1
        if predicted > 0:
            self._predicted = TRUST_DECAY * self._predicted + predicted
            self._accepted = TRUST_DECAY * self._accepted + accepted
        else:
            self._predicted *= TRUST_FORGET
            self._accepted *= TRUST_FORGET

    def search_sims(self, cfg: DraftConfig) -> int:
        """MCTS simulations for the next search: SIMS_PER_NODE per node of the trees the budget
        has been verifying, at least MIN_SIMS, at most the config's. Small trees (a CPU, where each
        batch token costs) need few; a flat cost curve keeps the full search for its full trees."""
        if self.searched_size is None:
            return cfg.n_simulations
        return int(min(cfg.n_simulations, max(MIN_SIMS, np.ceil(SIMS_PER_NODE * self.searched_size))))

    def searched(self, size: int) -> None:
        """A search ended in a tree of `size` verified nodes (0: none)."""
        last = self.searched_size
        self.searched_size = float(size) if last is None else last + SIZE_EMA * (size - last)

    def track(self, tree: DraftTree, start: int) -> None:
        """Remember a tree drafted to continue history[:start], to be labelled as the text goes on."""
        if len(tree):
            self._waiting.append([tree, start, 0, max(tree.depth.tolist())])   # (cheaper than .max() per step)

    def learn(self, history) -> None:
        """Label the remembered trees' nodes whose true tokens are now in history, LABEL_CHUNK
        depths at a time (a 16-token copy chain is labelled as it is overtaken, not 16 tokens
        late); a tree is forgotten once its deepest node is labelled."""
        finished = False
        for item in self._waiting:
            tree, start, done, deepest = item
            known = min(len(history) - start, deepest)
            if known >= min(done + LABEL_CHUNK, deepest):
                _observe(tree.depth, tree.prob, tree.seen, tree.copied, tree.parents, tree.tokens,
                         np.asarray(history[start:start + known], dtype=np.int64), done, self.hits, self.tries,
                         self.text_hits, self.text_tries, P_EDGES)
                item[2] = known
                finished |= known == deepest
        if finished:
            self._waiting = deque(item for item in self._waiting if item[2] < item[3])

    def new_text(self) -> None:
        """A new generation starts: the trees still waiting belonged to another history, and the
        copy record was that text's."""
        self._waiting.clear()
        self.bank, self.stake, self.steps = 0.0, 0.0, 0
        self.text_hits[:] = 0.0
        self.text_tries[:] = 0.0

    def predict(self, tree: DraftTree) -> np.ndarray:
        """Calibrated reach probability of every node, never above its parent's (before trust)."""
        return _predict(tree.depth, tree.prob, tree.seen, tree.copied, tree.parents, self.hits, self.tries,
                        self.text_hits, self.text_tries, P_EDGES)

    def pays(self, tree: DraftTree, trust: float, cost: CostModel, max_k: int = 64, min_q: float = 0.0,
             min_gain: float = 0.0) -> bool:
        """Whether a search grown from this probe could pay, against a plain step's own cost:
        best_size(..., before_search=True) would verify some prefix of the probe itself (its
        nodes predicted, times trust, at most max_k), or up to max_k alternatives to its first
        token, each no likelier than the best and together at most certain, could pay."""
        return bool(_search_pays(tree.depth, tree.prob, tree.seen, tree.copied, tree.parents, self.hits,
                                 self.tries, self.text_hits, self.text_tries, P_EDGES, trust, cost.table,
                                 cost.row, cost.overhead, cost.plain_step(True), max_k, min_q, min_gain, cost.tree_extra,
                                 self.at_stake() * cost.plain_step(True)))

    def observe(self, tree: DraftTree, truth) -> None:
        """Label each node whose depth the true continuation covers (reached or not) and learn."""
        _observe(tree.depth, tree.prob, tree.seen, tree.copied, tree.parents, tree.tokens,
                 np.asarray(truth, dtype=np.int64), 0, self.hits, self.tries, self.text_hits, self.text_tries, P_EDGES)


def order_by(tree: DraftTree, q: np.ndarray):
    """Tree and q reordered by q descending (shallower first on ties): every prefix is a tree
    because q never rises from parent to child."""
    fields, q = _order(q, *tree.fields())
    return DraftTree(*fields), q


def draft_step(matrix, history, cfg: DraftConfig, calibrator: ReachCalibrator, cost: CostModel,
               max_nodes: int, max_depth: int, drafter=None, lookup=None) -> tuple[DraftTree, DraftTree, float]:
    """(searched tree, the part of it worth verifying now (its most promising chain first, see
    draft.chain_first), that part's summed calibrated reach probability: the accepted drafts it
    predicts, for ReachCalibrator.settle). `lookup` (a draft.ContextLookup of history) adds the
    context's copy chain to the MCTS tree. The probe (the matrix's best guess for the next token
    with the copy chain below the root) is weighed first (ReachCalibrator.pays): when the budget
    would verify none of it, nor could alternatives to its first token pay, no search is run and
    the probe alone is returned as the searched tree, so the calibration still learns from it.
    (A search could still find a deeper matrix chain that pays: of 732 searches on the 2-core
    EPYC where the probe did not, 8 did; docs/performance-log.md.) With the
    auto budget the search's effort follows the trees it has been ending in (search_sims). `drafter`
    (an object with draft(history, max_nodes, max_depth) -> DraftTree) replaces the MCTS search,
    the copy chain and the probe."""
    if max_nodes <= 0 or max_depth <= 0:
        return NO_DRAFT, NO_DRAFT, 0.0
    auto = cfg.budget == "auto"
    trust = calibrator.trust if auto else 1.0
    if drafter is not None:
        full = drafter.draft(history, max_nodes, max_depth)
    else:
        chain, order = lookup.chain(min(max_depth, cfg.copy_depth)) if lookup is not None else ([], 0)
        if auto:  # search only where the probe, or alternatives to its first token, could pay
            probe = probe_tree(matrix, history[-2:], chain, order)
            if not calibrator.pays(probe, trust, cost, max_nodes, cfg.min_accept_prob, cfg.min_gain):
                return probe, NO_DRAFT, 0.0
        sims = calibrator.search_sims(cfg) if auto else cfg.n_simulations
        full = build_draft(matrix, history[-2:], cfg, max_nodes=max_nodes, max_depth=max_depth, n_simulations=sims)
        full = with_copy_chain(full, chain, order)
    tree, q = order_by(full, calibrator.predict(full))
    q = q[:max_nodes]  # a copy chain may have made the tree larger than the batch allows
    k = len(q) if not auto else best_size(np.minimum(q * trust, 1.0), cost, cfg.min_accept_prob, cfg.min_gain,
                                          max_loss=calibrator.at_stake() * cost.plain_step())
    if auto:
        calibrator.stake = cost.tree_step(k) / cost.plain_step() - 1.0 if k else 0.0
    if auto and drafter is None:
        calibrator.searched(k)
    return full, chain_first(tree.head(k), q[:k]), float(q[:k].sum())


def warm_up(n_vocab: int, top_k: int, cfg: DraftConfig, ends=(), indents=None) -> DraftTree:
    """Compile (or load from Numba's cache) every kernel of a drafting step now, on a scratch
    matrix and calibration: probe, search, copy chain, ordering, budget and labelling, with both
    budgets, so no later step (timed, or inside an answer where a Ctrl-C could land in Numba's
    loader) pays a compile. Returns the last searched tree."""
    text = [0, 1, 0, 1, 0, 1]
    scratch = TrigramMatrix(n_vocab, top_k=top_k)
    scratch.update(text)
    scratch.update_grams(np.array([-1, 0]), [1, 0], [0, 1])
    calibrator, cost = ReachCalibrator(), CostModel([1, 2], [1.0, 1.0])   # flat: the search runs
    for budget in ("fixed", "auto"):
        for lookup in (None, ContextLookup(text, ends=ends, indents=indents)):
            full, tree, expected = draft_step(scratch, text, cfg.replace(budget=budget, max_nodes=4),
                                              calibrator, cost, 4, 2, lookup=lookup)
            calibrator.observe(full, [0, 1])
            calibrator.settle(expected, 0)
    return full


def best_size(q_sorted: np.ndarray, cost: CostModel, min_q: float = 0.0, min_gain: float = 0.0,
              before_search: bool = False, max_loss: float = np.inf) -> int:
    """k in 0..len(q) maximising (1 + sum(q[:k])) / (c(k + 1) + overhead), over q >= min_q and
    over the k whose step costs at most max_loss seconds more than a plain step; 0 unless the best
    rate beats a plain step's by the factor 1 + min_gain (see CostModel.plain_step for what a plain
    step costs before and after a search)."""
    return int(_best_size(np.asarray(q_sorted, dtype=np.float64), cost.table, cost.row, cost.overhead,
                          cost.plain_step(before_search), min_q, min_gain, cost.tree_extra, max_loss))
