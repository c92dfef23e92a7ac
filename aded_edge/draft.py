"""Draft tree by Monte Carlo Tree Search over the tri-gram matrix.

The tree hangs below the *pending* token (the last emitted token, not yet in the KV cache).
Each simulation selects by pUCT, expands one node with its matrix successors, rolls out greedily
to the depth limit and backs up the expected accepted length of the path it walked. The most
visited nodes form the draft; it is returned ordered by predicted reach probability so that any
prefix of the arrays is itself a valid tree (the budget cuts it there).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from .config import DraftConfig
from .trigram import TrigramMatrix, _successors


@dataclass(frozen=True)
class DraftTree:
    tokens: np.ndarray   # int32 [n] token id of each node
    parents: np.ndarray  # int32 [n] index of the parent node, -1 for children of the pending token
    depth: np.ndarray    # int32 [n] 1 for children of the pending token; parents precede children
    prob: np.ndarray     # float32 [n] matrix probability that the path to this node is taken
    visits: np.ndarray   # int32 [n] MCTS visit count
    seen: np.ndarray = None    # uint8 [n] 1: every edge on the path is a tri-gram seen in this context, 0: not
                               # (None: unknown), 2: a copy node the MCTS search did not find (no matrix kind)
    copied: np.ndarray = None  # uint8 [n] on the context's copy chain: length of the n-gram that found the
                               # copy (3, 2, 1); 0: not on it (see with_copy_chain)

    def __post_init__(self):
        for name in ("seen", "copied"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.zeros(self.tokens.shape[0], np.uint8))

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def head(self, n: int) -> "DraftTree":
        """The first n nodes: still a tree, because parents come before their children."""
        return DraftTree(self.tokens[:n], self.parents[:n], self.depth[:n], self.prob[:n], self.visits[:n],
                         self.seen[:n], self.copied[:n])

    def take(self, order) -> "DraftTree":
        """The nodes in a new order (a permutation that keeps parents before children), with the
        parent indices renumbered."""
        return DraftTree(*take_arrays(np.asarray(order, dtype=np.int64), *self.fields()))

    def fields(self) -> tuple:
        """The arrays in constructor order (what the kernels that build trees take and return)."""
        return self.tokens, self.parents, self.depth, self.prob, self.visits, self.seen, self.copied

    @staticmethod
    def empty() -> "DraftTree":
        z = np.empty(0, np.int32)
        return DraftTree(z, z, z, np.empty(0, np.float32), z)


@njit(cache=True)
def take_arrays(order, tokens, parents, depth, prob, visits, seen, copied):
    """DraftTree.take's arrays: nodes in the given order, parent indices renumbered (a kernel
    other kernels call on a tree's fields)."""
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    par = parents[order]
    for i in range(par.size):
        if par[i] >= 0:
            par[i] = inverse[par[i]]
    return tokens[order], par, depth[order], prob[order], visits[order], seen[order], copied[order]


@njit(cache=True)
def _mcts(ctx_a, pending, n_vocab, keys, rowof, succ, w, s_keys, s_ptr, s_succ, s_prob, s_index,
          top_k, n_sims, max_depth, max_nodes, c1, c2):
    cap = 1 + n_sims * top_k
    tok = np.empty(cap, np.int32)
    par = np.full(cap, -1, np.int32)
    dep = np.zeros(cap, np.int32)
    prior = np.zeros(cap, np.float32)
    reach = np.zeros(cap, np.float32)      # product of priors from the root
    seen = np.zeros(cap, np.bool_)         # every edge from the root was seen in this context
    n_vis = np.zeros(cap, np.int32)
    w_sum = np.zeros(cap, np.float32)
    first = np.full(cap, -1, np.int32)     # first child index (children are contiguous)
    n_ch = np.zeros(cap, np.int32)
    expanded = np.zeros(cap, np.bool_)
    out_tok = np.empty(top_k, np.int32)
    out_p = np.empty(top_k, np.float32)
    out_seen = np.zeros(top_k, np.uint8)
    path = np.empty(max_depth + 1, np.int32)

    tok[0] = pending
    reach[0] = 1.0
    seen[0] = True
    n_nodes = 1
    for _ in range(n_sims):
        # selection: follow pUCT through expanded nodes
        node = 0
        plen = 0
        path[plen] = node
        plen += 1
        while expanded[node] and n_ch[node] > 0:
            sqrt_n = np.sqrt(np.float32(n_vis[node]))
            explore = c1 + np.log((n_vis[node] + c2 + 1.0) / c2)
            best, best_u = -1, -1.0
            for c in range(first[node], first[node] + n_ch[node]):
                q = w_sum[c] / n_vis[c] if n_vis[c] > 0 else 0.0
                u = q + prior[c] * sqrt_n / (1.0 + n_vis[c]) * explore
                if u > best_u:
                    best, best_u = c, u
            node = best
            path[plen] = node
            plen += 1
        # expansion: add the matrix successors of the node's context
        if not expanded[node] and dep[node] < max_depth:
            expanded[node] = True
            a = tok[par[node]] if node > 0 else ctx_a
            n = _successors(a, tok[node], n_vocab, keys, rowof, succ, w, s_keys, s_ptr, s_succ, s_prob, s_index,
                            top_k, out_tok, out_p, out_seen)
            first[node] = n_nodes
            n_ch[node] = n
            for j in range(n):
                c = n_nodes + j
                tok[c] = out_tok[j]
                par[c] = node
                dep[c] = dep[node] + 1
                prior[c] = out_p[j]
                reach[c] = reach[node] * out_p[j]
                seen[c] = seen[node] and out_seen[j] == 1
            n_nodes += n
        # value: expected accepted length along the selected path plus a greedy rollout
        value = 0.0
        for i in range(1, plen):
            value += reach[path[i]]
        r = reach[node]
        a, b = (tok[par[node]] if node > 0 else ctx_a), tok[node]
        for _d in range(dep[node], max_depth):
            n = _successors(a, b, n_vocab, keys, rowof, succ, w, s_keys, s_ptr, s_succ, s_prob, s_index,
                            1, out_tok, out_p, out_seen)
            if n == 0:
                break
            r *= out_p[0]
            value += r
            a, b = b, out_tok[0]
        # backup
        for i in range(plen):
            n_vis[path[i]] += 1
            w_sum[path[i]] += value
    # the most visited nodes (root excluded); visits never grow from parent to child, and
    # depth breaks ties, so this set contains the parent of each of its nodes
    cand = np.empty(n_nodes - 1, np.int64)
    m = 0
    for i in range(1, n_nodes):
        if n_vis[i] > 0:
            cand[m] = i
            m += 1
    cand = cand[:m]
    order = np.argsort(-(n_vis[cand].astype(np.int64) * 64 - dep[cand]), kind="mergesort")
    chosen = cand[order[:max_nodes]]
    # reorder by reach probability (ties: shallower first) so every prefix is a tree
    key = np.empty(chosen.shape[0], np.float64)
    for i in range(chosen.shape[0]):
        key[i] = -reach[chosen[i]] + dep[chosen[i]] * 1e-9
    chosen = chosen[np.argsort(key, kind="mergesort")]
    k = chosen.shape[0]
    remap = np.full(n_nodes, -1, np.int32)
    for i in range(k):
        remap[chosen[i]] = i
    t_out = np.empty(k, np.int32)
    p_out = np.empty(k, np.int32)
    d_out = np.empty(k, np.int32)
    r_out = np.empty(k, np.float32)
    v_out = np.empty(k, np.int32)
    s_out = np.empty(k, np.bool_)
    for i in range(k):
        c = chosen[i]
        t_out[i] = tok[c]
        p_out[i] = remap[par[c]] if par[c] > 0 else -1
        d_out[i] = dep[c]
        r_out[i] = reach[c]
        v_out[i] = n_vis[c]
        s_out[i] = seen[c]
    return t_out, p_out, d_out, r_out, v_out, s_out


def build_draft(matrix: TrigramMatrix, context, config: DraftConfig, max_nodes: int | None = None,
                max_depth: int | None = None, n_simulations: int | None = None) -> DraftTree:
    """Draft tree continuing `context` (its last token is the pending one). max_nodes/max_depth/
    n_simulations tighten the config's caps (e.g. near the end of the context window)."""
    if len(context) == 0:
        raise ValueError("build_draft needs at least one context token")
    nodes = config.max_nodes if max_nodes is None else min(int(max_nodes), config.max_nodes)
    sims = config.n_simulations if n_simulations is None else max(min(int(n_simulations), config.n_simulations), 1)
    depth = config.max_depth if max_depth is None else min(int(max_depth), config.max_depth)
    pending = int(context[-1])
    ctx_a = int(context[-2]) if len(context) >= 2 else -1
    if not 0 <= pending < matrix.n_vocab or not -1 <= ctx_a < matrix.n_vocab:
        raise ValueError("context token ids out of the matrix vocabulary")
    if nodes <= 0 or depth <= 0:
        return DraftTree.empty()
    t, p, d, r, v, seen = _mcts(np.int64(ctx_a), np.int64(pending), matrix.n_vocab, *matrix.kernel_arrays(),
                          min(config.top_k, matrix.top_k), sims, depth, nodes,
                          np.float32(config.c1), np.float32(config.c2))
    return DraftTree(t, p, d, r, v, seen.astype(np.uint8))


COPY_CANDIDATES = 16  # latest occurrences of each 3-gram among which a copy source is chosen
MATCH_CAP = 32        # tokens compared backwards when ranking them
RESYNC_WINDOW = 16    # how far from where the last copy's source has got to a copy may resume
FRESH_DEPTH = 8       # longest chain from a copy the text has not followed for RESYNC_AFTER tokens yet
FOLLOW_RUN = 2        # tokens in a row the text must have followed for its copy to go on without a match
RESYNC_AFTER = 4      # tokens of a copy the text must have followed before it may be resumed


def indent_class(piece: bytes) -> int:
    """The class of an indentation token in ContextLookup's keys: a token of whitespace only with
    at least one space or tab, by its number of line breaks (-1: none, -2: one, ...); 0 for any
    other token. Re-indenting changes "    " into "        " or, in vocabularies that merge a
    line break with the indentation after it, "\\n    " into "\\n        "."""
    if not piece or piece.strip(b" \t\r\n") or not piece.strip(b"\r\n"):
        return 0
    return -1 - piece.count(b"\n")


def _remember(index: dict, key: tuple, at: int) -> None:
    """Add occurrence `at` under key, keeping the latest COPY_CANDIDATES."""
    seen = index.setdefault(key, [])
    seen.append(at)
    if len(seen) > COPY_CANDIDATES:
        del seen[0]


class ContextLookup:
    """Where each token 3-gram occurred in the text. Input-grounded work (editing, fixing,
    quoting) repeats its input: what followed an earlier occurrence of the text's last three
    tokens is a copy candidate, a longer context than the tri-gram matrix's two tokens. Of the
    latest COPY_CANDIDATES occurrences, the one whose preceding text matches the text's own end
    the longest is copied (the latest on ties): the same line of the input, not merely the same
    three tokens elsewhere.

    After an edit the text's last three tokens are new, yet the input goes on where the copy
    left off: once the text has followed a copy for RESYNC_AFTER tokens, the copy resumes after
    the text's last two tokens (or, down to `min_order`, the last one) found within RESYNC_WINDOW
    tokens of the point the copy's source has reached. The edit itself is remembered (source
    tokens -> written tokens, or tokens inserted after a source token) and applied to the copies
    that follow: a renamed variable or a re-indented block is then drafted as the text will
    write it. An edit the text does not make again where the copy meets it is forgotten. A copy
    the text is following goes on unless another occurrence matches the text's end for longer
    than the text has followed it: a re-indented line ends like the answer's own line before it,
    whose continuation is the wrong one.

    `indents` (token -> class: the vocabulary's indentation tokens, see indent_class): a
    re-indented line's first three tokens differ from its source's only in an indentation token,
    so where the text's last three tokens occurred nowhere, an occurrence that differs from them
    only in indentation tokens of the same class is copied, and the text's indentation is learnt
    as an edit of the source's (applied to the lines that follow). Comparisons of how long an
    occurrence matches the text also count indentation tokens of one class as equal."""

    def __init__(self, tokens=(), min_order: int = 1, ends=frozenset(), indents=None):
        if min_order not in (1, 2, 3):
            raise ValueError("min_order must be 1, 2 or 3")
        self.tokens: list = []
        self.min_order = min_order
        self.ends = frozenset(ends)  # a copy stops after these (end-of-generation and control tokens)
        self.indents = dict(indents or {})  # indentation token -> its class (a negative id)
        self._keys: list = []    # the tokens with every indentation token replaced by its class
        self._after: dict = {}   # 3-gram -> indices of the tokens that followed its occurrences (oldest first)
        self._after_keys: dict = {}  # the same for 3-grams of self._keys (only with indents)
        self._src = -1           # index of the next source token of the current copy (-1: none yet)
        self._confirmed = 0      # tokens of that copy the text has followed
        self._since = 0          # tokens written since the text last followed it
        self._run = 0            # tokens in a row it has followed
        self._div = (0, 0)       # (text index, source index) where the text last left its copy
        self._plan: list = []    # the last chain, edits applied: (token, source index after it,
                                 # (table, key) of the edit that wrote it or None)
        self._subs: dict = {}    # edits seen in this text: first source token -> (source tokens, written tokens)
        self._ins: dict = {}     # insertions seen: source token -> the tokens written after it
        self.extend(tokens)

    def extend(self, tokens) -> None:
        t, k, indents = self.tokens, self._keys, self.indents
        for x in tokens:
            x = int(x)
            self._follow(x)
            if len(t) >= 3:  # the 3-gram ending at the current last token gets its successor now, so
                _remember(self._after, (t[-3], t[-2], t[-1]), len(t))   # the text's own suffix never matches itself
                if indents:
                    _remember(self._after_keys, (k[-3], k[-2], k[-1]), len(t))
            t.append(x)
            k.append(indents.get(x, x))

    def _follow(self, x: int) -> None:
        """Track whether the text, about to get token x, goes on with its copy: the last chain
        (edits applied) or else the copy source itself; learn the edits it makes."""
        t, plan = self.tokens, self._plan
        if plan and plan[0][0] == x:                 # it writes what the last chain said
            self._src = plan.pop(0)[1]
        else:
            if plan and plan[0][2] is not None:      # an edit it did not make again is forgotten
                table, key = plan[0][2]
                table.pop(key, None)
            self._plan = []
            if not (0 <= self._src < len(t) and t[self._src] == x):  # it leaves the copy
                if self._since == 0:
                    self._div = (len(t), self._src)
                self._since += 1
                self._run = 0
                return
            if self._since and self._div[1] == self._src and self._confirmed >= RESYNC_AFTER:
                self._learn(self._src, self._src, t[self._div[0]:])  # back after tokens the source lacks
            self._src += 1
        self._confirmed += 1
        self._since = 0
        self._run += 1

    def _learn(self, src_from: int, src_to: int, written) -> None:
        """Remember an edit: source tokens [src_from, src_to) became `written`."""
        t, old, new = self.tokens, tuple(self.tokens[src_from:src_to]), tuple(written)
        if len(old) > 3 or not 0 < len(new) <= 4 or old == new or not 1 <= src_from <= src_to:
            return  # (a deletion is no rule: dropped lines are seldom dropped again)
        if old:
            self._subs[old[0]] = (old, new)
        else:
            self._ins[t[src_from - 1]] = new

    def _match(self, at: int) -> int:
        """How many tokens before index `at` equal the text's last ones (at most MATCH_CAP;
        indentation tokens of one class are equal)."""
        t, end, k = self._keys, len(self._keys), 0
        while k < MATCH_CAP and k < at and t[at - 1 - k] == t[end - 1 - k]:
            k += 1
        return k

    def _resync(self) -> tuple[int, int]:
        """(index to copy from, length of the match found there) near where the last copy's source
        has got to, for the text's last 2 then last 1 tokens; (-1, 0) when neither is there."""
        t, end = self._keys, len(self._keys)
        expect = self._src + self._since
        for order in (2, 1):
            if order < self.min_order:
                break
            near = [at for at in range(max(expect - RESYNC_WINDOW, order), min(expect + RESYNC_WINDOW + 1, end))
                    if t[at - order:at] == t[end - order:]]
            if near:
                return min(near, key=lambda at: abs(at - expect)), order
        return -1, 0

    def _inserted(self, after: int, j: int) -> list:
        """Plan entries for the tokens this text inserts after token `after`, copying on from
        source index j (none when the source there already holds them)."""
        ins = self._ins.get(after)
        if ins and tuple(self.tokens[j:j + len(ins)]) != ins:
            return [(x, j, (self._ins, after)) for x in ins]
        return []

    def _walk(self, at: int, n: int) -> list:
        """Up to n (token, source index after it) copying the source from `at`, with the edits
        this text has made to it applied."""
        t, j = self.tokens, at
        plan = self._inserted(t[-1], at)  # the text may just have written a token it inserts after
        while len(plan) < n and j < len(t):
            sub = self._subs.get(t[j])
            if sub and tuple(t[j:j + len(sub[0])]) == sub[0]:
                plan += [(x, j + len(sub[0]), (self._subs, t[j])) for x in sub[1]]
                j += len(sub[0])
                continue
            plan.append((t[j], j + 1, None))
            j += 1
            plan += self._inserted(t[j - 1], j)
        return plan[:n]

    def _learn_indents(self, at: int) -> None:
        """The occurrence ending before `at` matches the text's last three tokens up to
        indentation: where it is indented otherwise, the text's indentation is learnt as an edit."""
        for old, new in zip(self.tokens[at - 3:at], self.tokens[-3:]):
            if old != new:   # (both indentation of one class: their keys are equal)
                self._subs[old] = ((old,), (new,))

    def chain(self, n: int) -> tuple[list, int]:
        """(up to n tokens to copy, the length of the match that found them: 3 for the text's
        last three tokens, 2 or 1 when resumed after an edit); ([], 0) when there is none."""
        t, k = self.tokens, self._keys
        if n <= 0 or len(t) < 3:
            return [], 0
        exact = self._after.get((t[-3], t[-2], t[-1]))
        found = exact or (self._after_keys.get((k[-3], k[-2], k[-1])) if self.indents else None)
        following = self._confirmed >= RESYNC_AFTER and self._run >= FOLLOW_RUN
        if found:
            at, order = max(reversed(found), key=self._match), 3  # longest match; reversed: the latest wins ties
            if not exact:   # found up to indentation only
                self._learn_indents(at)
            if following and at != self._src and self._match(at) < min(self._run, MATCH_CAP):
                at, order = self._src, 2   # the copy it follows (edits applied) has matched longer
        elif following:  # on its copy: go on
            at, order = self._src, 2
        elif self._confirmed >= RESYNC_AFTER:
            at, order = self._resync()
            if at >= 0 and self._since > 0:   # the text left its copy and comes back here
                self._learn(self._div[1], at - order, t[self._div[0]:len(t) - order])
        else:
            at, order = -1, 0
        if at < 0:
            self._plan = []
            return [], 0
        if at != self._src:  # a new source (not the one the text is following): unconfirmed yet
            self._src, self._confirmed, self._since, self._run = at, 0, 0, 0
        if self._confirmed < RESYNC_AFTER:   # a bare match: a short copy until the text follows it
            n = min(n, FRESH_DEPTH)
        self._plan = self._walk(at, n)
        for i, (x, _, _) in enumerate(self._plan):
            if x in self.ends:   # the input's end (a chat template's markers): the answer does not go on
                del self._plan[i + 1:]
                break
        return [x for x, _, _ in self._plan], order


@njit(cache=True)
def _hang_chain(tokens, parents, depth, prob, visits, seen, copied, chain, order):
    """with_copy_chain's arrays: the tree's own, then a node per chain token not already on the path."""
    n = tokens.shape[0]
    path = np.empty(chain.shape[0], np.int64)   # node of each chain token
    parent, k = -1, 0
    for d in range(chain.shape[0]):
        hit = -1
        if parent < n:  # still inside the existing tree: look for the child carrying the token
            for i in range(n):
                if parents[i] == parent and tokens[i] == chain[d]:
                    hit = i
                    break
        if hit < 0:
            hit = n + k
            k += 1
        path[d] = hit
        parent = hit
    out = (np.empty(n + k, np.int32), np.empty(n + k, np.int32), np.empty(n + k, np.int32),
           np.empty(n + k, np.float32), np.empty(n + k, np.int32), np.empty(n + k, np.uint8),
           np.empty(n + k, np.uint8))
    out[0][:n], out[1][:n], out[2][:n], out[3][:n] = tokens, parents, depth, prob
    out[4][:n], out[5][:n], out[6][:n] = visits, seen, copied
    for d in range(chain.shape[0]):
        j = path[d]
        out[6][j] = order
        if j >= n:  # a new node: no matrix kind (seen = 2), probability 1, one visit
            out[0][j], out[1][j], out[2][j] = chain[d], path[d - 1] if d > 0 else -1, d + 1
            out[3][j], out[4][j], out[5][j] = 1.0, 1, 2
    return out


def with_copy_chain(tree: DraftTree, chain, order: int = 3) -> DraftTree:
    """The tree with the chain (found by an n-gram of `order` tokens) hung below the root: nodes
    already on its path keep their matrix kind and are marked copied = order, the rest appended
    as new nodes (prob 1, one visit, seen = 2: no matrix kind), so the calibration learns apart
    how often each kind of copy is right."""
    if not len(chain):
        return tree
    return DraftTree(*_hang_chain(*tree.fields(), np.asarray(chain, np.int32), order))


@njit(cache=True)
def _probe(a, b, n_vocab, keys, rowof, succ, w, s_keys, s_ptr, s_succ, s_prob, s_index, chain, order):
    one_tok, one_p, one_seen = np.empty(1, np.int32), np.empty(1, np.float32), np.zeros(1, np.uint8)
    m = _successors(a, b, n_vocab, keys, rowof, succ, w, s_keys, s_ptr, s_succ, s_prob, s_index,
                    1, one_tok, one_p, one_seen)
    return _hang_chain(one_tok[:m], np.full(m, -1, np.int32), np.ones(m, np.int32), one_p[:m],
                       np.ones(m, np.int32), one_seen[:m], np.zeros(m, np.uint8), chain, order)


def probe_tree(matrix: TrigramMatrix, context, chain=(), order: int = 3) -> DraftTree:
    """The matrix's most likely next token after context (none when the matrix knows nothing
    about it) with the copy chain hung below the root, as with_copy_chain does: the cheap probe
    before deciding whether to search at all. One kernel call: it runs every step, drafting or
    not, after a decode has swept the caches, where each Python or Numba call costs microseconds."""
    a = int(context[-2]) if len(context) >= 2 else -1
    return DraftTree(*_probe(a, int(context[-1]), matrix.n_vocab, *matrix.kernel_arrays(),
                             np.asarray(chain, np.int32), order))


@njit(cache=True)
def _tree_layout(parents, seq, n_seq):
    """Sequence ids of the batch rows (row 0: the pending token, row 1 + j: node j). Each
    root-to-leaf path gets its own id and a row carries the ids of all leaves below it, which
    is exact tree attention in llama.cpp's unified KV cache. Returns the number of ids used, or
    -1 (nothing written) when the tree has more leaves than seq has columns."""
    n = parents.shape[0]
    has_child = np.zeros(n, np.bool_)
    for j in range(n):
        if parents[j] >= 0:
            has_child[parents[j]] = True
    if n - np.count_nonzero(has_child) > seq.shape[1]:
        return -1
    for r in range(n + 1):
        n_seq[r] = 0
    leaf = 0
    for j in range(n):
        if has_child[j]:
            continue
        node = j
        while node >= 0:
            seq[node + 1, n_seq[node + 1]] = leaf
            n_seq[node + 1] += 1
            node = parents[node]
        seq[0, n_seq[0]] = leaf
        n_seq[0] += 1
        leaf += 1
    if n == 0:
        seq[0, 0] = 0
        n_seq[0] = 1
        leaf = 1
    return leaf


def tree_layout(tree: DraftTree, seq: np.ndarray, n_seq: np.ndarray) -> int:
    """Fill seq[row, :n_seq[row]] for the tree's batch rows; see _tree_layout."""
    if seq.shape[0] < len(tree) + 1 or n_seq.shape[0] < len(tree) + 1:
        raise ValueError("tree larger than the batch")
    n_leaves = _tree_layout(np.ascontiguousarray(tree.parents, np.int32), seq, n_seq)
    if n_leaves < 0:
        raise ValueError("tree has more leaves than sequence ids")
    return n_leaves


@njit(cache=True)
def _best_chain(parents, weight):
    """Node indices of the root-to-leaf path with the largest summed weight (earlier-listed
    children win ties); parents precede children."""
    n = parents.shape[0]
    below = np.zeros(n, np.float64)      # best summed weight of a path starting under node j
    nxt = np.full(n, -1, np.int64)       # the child that path starts with
    top, top_w = -1, -np.inf
    for j in range(n - 1, -1, -1):       # children are final before their parents are reached
        total = weight[j] + below[j]
        p = parents[j]
        if p >= 0:
            if nxt[p] < 0 or total >= below[p]:
                below[p], nxt[p] = total, j
        elif top < 0 or total >= top_w:
            top, top_w = j, total
    path = []
    node = top
    while node >= 0:
        path.append(node)
        node = nxt[node]
    return path


def chain_first(tree: DraftTree, weight) -> DraftTree:
    """The same tree with one root-to-leaf chain moved to the front: the chain with the largest
    summed `weight` (the nodes' chances to be accepted: the expected accepted length along it;
    earlier-listed children win ties). The chain's KV cells then follow
    the pending token in order; an accepted path that stays on it is kept as is, which makes the
    cache identical to one-token-at-a-time decoding (tokens accepted off it are evaluated again)."""
    n = len(tree)
    if n == 0:
        return tree
    chain = list(_best_chain(np.ascontiguousarray(tree.parents, np.int32), np.asarray(weight, np.float64)))
    on_chain = set(chain)
    rest = [j for j in range(n) if j not in on_chain]
    return tree.take(chain + rest)
