"""The draft budget: decisions on synthetic cost curves, calibration, prefix-closed ordering."""
import copy

import numpy as np
import pytest

from aded_edge.budget import CostModel, ReachCalibrator, best_size, order_by
from aded_edge.config import DraftConfig
from aded_edge.draft import DraftTree, build_draft
from aded_edge.trigram import TrigramMatrix

SIZES = [1, 2, 4, 8, 16, 32, 65]
FLAT = CostModel(SIZES, [0.010, 0.0101, 0.0102, 0.0104, 0.0108, 0.0115, 0.013])    # GPU / Apple Silicon
LINEAR = CostModel(SIZES, [0.010 * n for n in SIZES])                                # worst CPU
STEPPED = CostModel(SIZES, [0.010, 0.016, 0.027, 0.062, 0.077, 0.14, 0.24])        # measured 2-core CPU shape


def q_chain(*qs):
    return np.array(qs, dtype=float)


def test_flat_curve_takes_large_trees():
    q = np.sort(np.random.default_rng(0).uniform(0.02, 0.9, 64))[::-1]
    assert best_size(q, FLAT) >= 48


def test_linear_curve_takes_small_or_no_trees():
    assert best_size(q_chain(0.6, 0.4, 0.3, 0.2), LINEAR) == 0          # nothing beats one token per step
    # exactly linear: a drafted token costs a whole plain step, so not even near-certain drafts pay
    assert best_size(q_chain(0.99, 0.98, 0.97, 0.96), LINEAR) == 0
    assert best_size(q_chain(0.9, 0.1, 0.05), LINEAR) == 0


def test_stepped_curve_between():
    q = q_chain(0.95, 0.9, 0.85, 0.8, 0.3, 0.2, 0.1, 0.05)
    k = best_size(q, STEPPED)
    assert 1 <= k <= 4
    assert best_size(q_chain(0.3, 0.2), STEPPED) == 0
    assert best_size(q_chain(0.99, 0.98, 0.97, 0.96), STEPPED) == 3   # up to where batch 5 costs a step more


def test_a_measured_step_after_32_rows_keeps_a_copy_chain_at_32_rows():
    """A bench's curve on the 2-core EPYC (Qwen, in one-token decodes), where 33 rows really cost
    1.104 times 32 rows. Interpolated between 32 and 40, the 33rd row looks 0.33 dearer and a tree
    of 32 nodes (33 rows with the pending token) is verified; with 33 measured, 31 nodes."""
    sizes = [1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64]
    costs = [1, 1.9, 2.49, 3.15, 3.94, 4.68, 6.83, 7.95, 8.3, 8.35, 10.74, 12.61, 15.39, 18.03, 19.28, 25.13]
    q = np.array([0.95] * 28 + [0.74] * 4 + [0.06] * 8)
    assert best_size(q, CostModel(sizes, costs)) == 32
    at = sizes.index(32) + 1
    assert best_size(q, CostModel(sizes[:at] + [33] + sizes[at:], costs[:at] + [15.39 * 1.104] + costs[at:])) == 31
    from aded_edge.llama import COST_SIZES
    assert {16, 17, 32, 33} <= set(COST_SIZES)      # the calibration measures both sides of each step


def test_overhead_favours_bigger_steps():
    cm = CostModel(SIZES, [0.010 * n for n in SIZES])
    q = q_chain(0.6, 0.5)
    assert best_size(q, cm) == 0
    cm.overhead = 0.05  # a fixed cost per step makes fewer, larger steps pay
    assert best_size(q, cm) == 2


def test_cost_model_interpolates_extrapolates_and_learns_between_points():
    cm = CostModel([1, 2, 4], [1.0, 2.0, 3.0])
    assert cm(3) == pytest.approx(2.5)
    assert cm(6) == pytest.approx(4.0)
    for _ in range(200):
        cm.observe(3, 2.0, 0.0)   # a size between points: both of its neighbours learn from it
    assert cm(3) == pytest.approx(2.0, rel=0.01)
    assert cm(2) == pytest.approx(1.6, rel=0.01) and cm(4) == pytest.approx(2.4, rel=0.01)
    assert cm(1) == 1.0           # one-token decodes are learnt from one-token steps only
    for _ in range(200):
        cm.observe(1, 0.5, 0.0)   # a size on the curve corrects its own point
    assert cm(1) == pytest.approx(0.5, rel=0.01)


def test_the_first_real_steps_at_a_point_weigh_at_once():
    """A point's real steps are averaged from the first (the calibration counts as POINT_PRIOR of
    them), not followed at COST_EMA's 5% a step: on the Xeon a 5-row tree the calibration had put
    at 2.24 one-token decodes cost 2.66 in a run, where it was taken 11 times."""
    cm = CostModel([1, 2, 4, 8], [0.010, 0.015, 0.020, 0.040])
    for _ in range(11):
        cm.observe(4, 0.026, 0.0)
        cm.observe(1, 0.010, 0.0)
    assert cm(1) == pytest.approx(0.010)
    # most of the way to 26 ms, where a 5% EMA would have gone 43% of it (22.6 ms)
    assert 0.024 < cm(4) < 0.026


def test_points_no_tree_has_taken_follow_what_the_other_trees_found():
    """A calibration whose one-token decode was slowed by other load prices every tree too low
    relative to a plain step (the cached Qwen curve on the Xeon: c(1) 91 ms against 77 ms in
    runs). Real one-token steps correct c(1); the trees real steps have taken show that trees did
    not get cheaper with it, and the sizes no step has taken follow them, not c(1)."""
    true = {1: 0.0077, 2: 0.0120, 4: 0.0146, 8: 0.0305, 16: 0.0376, 32: 0.0635}
    cm = CostModel(list(true), [0.0091] + [true[n] for n in list(true)[1:]])
    for _ in range(40):
        cm.observe(1, true[1], 0.0, drafted=False)
        cm.observe(1, true[1], 0.0, drafted=False)
        cm.observe(4, true[4], 0.0)
        cm.observe(8, true[8], 0.0)
    assert cm(1) == pytest.approx(true[1], rel=0.01)
    assert cm(4) == pytest.approx(true[4], rel=0.02) and cm(8) == pytest.approx(true[8], rel=0.02)
    # never taken: within 3% of the truth, where following c(1) alone would have priced them 15% low
    assert cm(16) == pytest.approx(true[16], rel=0.03) and cm(32) == pytest.approx(true[32], rel=0.03)


def test_a_tree_costs_more_as_the_kv_cache_grows_and_the_budget_follows():
    """c(n, L) = c(n) + per_cell * n * (L - prefix): attention reads every cell for every row, so
    at a long context a tree costs more plain steps than at a short one (Qwen 1.5B on the Xeon:
    16 rows 4.9 one-token decodes at 64 cells, 6.0 at 2048). A tree that pays at the start of a
    context may not pay 2000 cells later."""
    cm = CostModel([1, 2, 4, 8, 16], [0.077, 0.110, 0.146, 0.305, 0.376], per_cell=5e-6, prefix=64)
    assert cm(16) == pytest.approx(0.376)
    cm.at(2048)
    assert cm(1) == pytest.approx(0.077 + 1984 * 5e-6)
    assert cm(16) == pytest.approx(0.376 + 16 * 1984 * 5e-6)
    assert cm.tree_step(15) == pytest.approx(cm(16) + cm.overhead)
    q = np.full(15, 0.28)   # 5.2 tokens for 16 rows: pays at 64 cells, not at 2048
    assert best_size(q, cm) == 0
    cm.at(64)
    assert best_size(q, cm) == 15
    cm.at(2048)
    for _ in range(50):     # real steps at 2048 cells: the KV term is taken out before they teach
        cm.observe(1, 0.077 + 1984 * 5e-6, 0.0, drafted=False)
        cm.observe(1, 0.077 + 1984 * 5e-6, 0.0, drafted=False)
        cm.observe(16, 0.376 + 16 * 1984 * 5e-6, 0.0)
    cm.at(64)
    assert cm(1) == pytest.approx(0.077, rel=0.01) and cm(16) == pytest.approx(0.376, rel=0.01)


def test_cost_curve_from_a_disturbed_calibration_is_repaired():
    # measured while another process ran: size 2 looked cheaper than size 1
    cm = CostModel([1, 2, 3], [0.05, 0.045, 0.25])
    assert cm(2) >= cm(1)
    for _ in range(300):
        cm.observe(1, 0.010, 0.0)   # after a tree: no dearer than in a run, so no switch cost
        cm.observe(1, 0.010, 0.0)
        cm.observe(2, 0.017, 0.0)
    assert cm(1) == pytest.approx(0.010, rel=0.02) and cm(2) == pytest.approx(0.017, rel=0.02)
    assert cm.switch == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(ValueError):
        CostModel([2, 3], [1.0, 2.0])


def test_calibrator_learns_from_true_continuations():
    m = TrigramMatrix(20)
    m.update([1, 2, 3, 4, 5, 6] * 3)
    tree = build_draft(m, [1, 2], DraftConfig())
    cal = ReachCalibrator()
    before = cal.predict(tree)[0]
    for _ in range(200):
        cal.observe(tree, [3, 4, 5, 6])     # the model always continues the chain
    after = cal.predict(tree)
    assert after[0] > before and after[0] > 0.9
    cal2 = ReachCalibrator()
    for _ in range(200):
        cal2.observe(tree, [9, 9, 9, 9])    # ... or never
    assert cal2.predict(tree)[0] < 0.05
    # nodes beyond the known continuation are not labelled
    cal3 = ReachCalibrator()
    cal3.observe(tree, [])
    assert np.allclose(cal3.predict(tree), ReachCalibrator().predict(tree))


def test_deep_copy_chain_nodes_are_labelled_as_the_text_overtakes_them():
    from aded_edge.budget import LABEL_CHUNK
    from aded_edge.draft import with_copy_chain
    chain = list(range(20, 36))                         # a 16-token copy chain, nothing else
    tree = with_copy_chain(DraftTree.empty(), chain)
    cal = ReachCalibrator()
    prior = cal.predict(tree)
    history = [1, 2]
    cal.track(tree, len(history))
    history += chain[:LABEL_CHUNK - 1]
    cal.learn(history)
    assert np.array_equal(cal.predict(tree), prior)     # not a whole chunk known yet: nothing labelled
    history += chain[LABEL_CHUNK - 1:LABEL_CHUNK + 1]   # LABEL_CHUNK + 1 tokens known: the first chunk
    cal.learn(history)
    q = cal.predict(tree)
    assert (q[:LABEL_CHUNK] > prior[:LABEL_CHUNK]).all()
    assert np.array_equal(q[LABEL_CHUNK + 1:], prior[LABEL_CHUNK + 1:])
    history += chain[LABEL_CHUNK + 1:]
    cal.learn(history)
    assert (cal.predict(tree) > prior).all()            # every depth up to 16 learnt, the tree forgotten
    assert not cal._waiting
    cal.new_text()                                      # another generation: its history is not this one
    learnt = cal.predict(tree)
    cal.track(tree, len(history))
    cal.new_text()
    cal.learn(list(range(100, 200)))                    # (labelled against it, every node would be a miss)
    assert np.array_equal(cal.predict(tree), learnt) and not cal._waiting


def test_a_copy_node_the_search_also_found_takes_the_better_of_its_two_chances():
    from aded_edge.draft import with_copy_chain
    def node(prob):                                     # one depth-1 node the MCTS search found
        return DraftTree(np.array([5], np.int32), np.array([-1], np.int32), np.array([1], np.int32),
                         np.array([prob], np.float32), np.array([1], np.int32), np.array([1], np.uint8))
    sure, doubtful = node(0.9), node(0.3)
    cal = ReachCalibrator()
    for _ in range(100):
        cal.observe(sure, [5])                          # the matrix's confident guesses are right,
        cal.observe(doubtful, [1])                      # its doubtful ones wrong
    cal.new_text()
    for order, right in ((3, False), (1, True)):        # in this text 3-token-match copies were wrong,
        copy = with_copy_chain(DraftTree.empty(), [7], order)   # 1-token ones right
        for _ in range(10):
            cal.observe(copy, [7 if right else 1])
    q_sure, q_doubt = cal.predict(sure)[0], cal.predict(doubtful)[0]
    assert q_sure > 0.9 and q_doubt < 0.1
    assert cal.predict(with_copy_chain(sure, [5], 3))[0] == pytest.approx(q_sure)   # the copy cannot lower it
    lifted = cal.predict(with_copy_chain(doubtful, [5], 1))[0]
    assert lifted > 0.5 > q_doubt                       # a kind of copy that proved right lifts it
    assert cal.predict(with_copy_chain(doubtful, [5], 3))[0] < 0.5   # one that proved wrong does not


def test_copy_chances_follow_the_current_text():
    from aded_edge.draft import with_copy_chain
    chain = list(range(20, 28))
    tree = with_copy_chain(DraftTree.empty(), chain)
    cal = ReachCalibrator()
    for _ in range(200):                                # earlier texts: copying was always right
        cal.observe(tree, chain)
    cal.new_text()
    trusted = cal.predict(tree)
    assert (trusted > 0.9).all()
    for _ in range(3):                                  # this text: three copies, each wrong at once
        cal.observe(tree, [1] * 8)
    assert (cal.predict(tree) < 0.5 * trusted).all()    # a few of its own outweigh 200 earlier ones
    cal.new_text()
    assert np.allclose(cal.predict(tree), trusted, atol=0.02)   # the next text starts from the calibration


def test_order_by_keeps_every_prefix_a_tree():
    rng = np.random.default_rng(1)
    m = TrigramMatrix(50)
    m.update(rng.integers(0, 8, 400).tolist())
    tree = build_draft(m, [1, 2], DraftConfig())
    q = ReachCalibrator().predict(tree)
    t, qs = order_by(tree, q)
    assert np.all(np.diff(qs) <= 1e-12)
    for i in range(len(t)):
        assert t.parents[i] < i
        if t.parents[i] >= 0:
            assert t.depth[i] == t.depth[t.parents[i]] + 1
    assert sorted(zip(t.tokens.tolist(), t.depth.tolist())) == sorted(zip(tree.tokens.tolist(), tree.depth.tolist()))

    def paths(tr):   # every node as its tokens from the root, with its kind and probability
        out = []
        for i in range(len(tr)):
            path, j = [], i
            while j >= 0:
                path.append(int(tr.tokens[j]))
                j = int(tr.parents[j])
            out.append((tuple(path[::-1]), float(tr.prob[i]), int(tr.seen[i]), int(tr.visits[i])))
        return sorted(out)
    assert paths(t) == paths(tree)                         # the same tree, renumbered


def test_before_a_search_a_probe_must_pay_by_itself_on_the_cost_curve():
    # the probe's nodes alone (the matrix's best next token, a copy chain) must be worth a batch
    assert best_size(q_chain(0.05), FLAT, before_search=True) == 1         # on a GPU almost anything is
    assert best_size(q_chain(0.99, 0.98, 0.97), LINEAR, before_search=True) == 0   # a drafted token costs a step
    assert best_size(q_chain(0.55), STEPPED, before_search=True) == 0      # c(2) = 1.6 c(1): needs q > 0.6
    assert best_size(q_chain(0.65), STEPPED, before_search=True) == 1
    assert best_size(q_chain(0.58, 0.58, 0.58), STEPPED, before_search=True) == 3   # a chain can pay where its head cannot


def calibrated_on_a_loop(n: int, right):
    """(matrix of a repeated 5-6-7-8-9 text, config, a calibrator that saw the tree drafted after
    [5, 6] n times, right when right(i), and that tree): how sure the budget is of that guess."""
    from aded_edge.budget import draft_step
    m = TrigramMatrix(100, top_k=4)
    m.update([5, 6, 7, 8, 9] * 30)
    cfg = DraftConfig(max_nodes=16)
    cal = ReachCalibrator()
    for i in range(n):
        full, _, _ = draft_step(m, [5, 6], cfg, ReachCalibrator(), FLAT, 16, 4)
        cal.observe(full, [7, 8, 9, 5] if right(i) else [1, 1, 1, 1])
    return m, cfg, cal, full


def test_draft_step_searches_where_the_matrix_was_right_not_where_it_was_wrong():
    from aded_edge.budget import draft_step
    m, cfg, sure, _ = calibrated_on_a_loop(50, lambda i: True)      # the matrix has been right every time
    full, tree, _ = draft_step(m, [5, 6], cfg, sure, STEPPED, 16, 4)
    assert len(full) > 1 and len(tree) >= 1 and tree.tokens[0] == 7
    _, _, never, _ = calibrated_on_a_loop(50, lambda i: False)      # ... or wrong every time
    full, tree, _ = draft_step(m, [5, 6], cfg, never, STEPPED, 16, 4)
    assert len(full) == 1 and len(tree) == 0  # only the probe, nothing verified
    full, tree, _ = draft_step(m, [5, 6], cfg.replace(budget="fixed"), never, STEPPED, 16, 4)
    assert len(tree) == len(full) > 1         # a fixed budget always searches
    full, tree, _ = draft_step(m, [50, 51], cfg, sure, FLAT, 16, 4)
    assert len(full) == len(tree) == 0        # unknown context: nothing to draft


def test_no_search_where_the_probe_alone_would_not_be_verified():
    """A first token right half the time is worth one node on a flat curve, not on the 2-core
    CPU's (c(2) = 1.6 c(1)). There a search could only pay through a long chain behind it, which
    a bound of k such nodes used to allow (and ~80% of such searches then verified nothing)."""
    from aded_edge.budget import draft_step
    m, cfg, half, full = calibrated_on_a_loop(60, lambda i: i % 2)
    q = half.predict(full)
    assert 0.45 < q.max() < 0.55
    full, tree, _ = draft_step(m, [5, 6], cfg, half, STEPPED, 16, 4)
    assert len(full) == 1 and len(tree) == 0  # the probe only: no search
    full, tree, _ = draft_step(m, [5, 6], cfg, half, FLAT, 16, 4)
    assert len(full) > 1 and len(tree) >= 1   # searched and verified


def test_a_weak_first_token_still_searches_where_its_alternatives_could_pay_together():
    """On a flat curve a tree of several unlikely first tokens pays where one alone does not
    (here drafting adds 2 ms to a 10 ms step); on the 2-core CPU's curve nothing that weak does."""
    from aded_edge.budget import draft_step
    m, cfg, weak, full = calibrated_on_a_loop(70, lambda i: i % 7 == 0)
    q = weak.predict(full)
    assert 0.1 < q.max() < 0.22
    flat = CostModel(FLAT.sizes, FLAT.seconds)
    flat.overhead = 0.002
    probe = full.head(1)
    assert best_size(np.minimum(weak.predict(probe) * weak.trust, 1), flat, min_gain=cfg.min_gain,
                     before_search=True) == 0       # the first token alone would not be verified
    assert weak.pays(probe, weak.trust, flat, 16, min_gain=cfg.min_gain)
    full, _, _ = draft_step(m, [5, 6], cfg, weak, flat, 16, 4)
    assert len(full) > 1                            # searched
    assert not weak.pays(probe, weak.trust, STEPPED, 16, min_gain=cfg.min_gain)
    full, tree, _ = draft_step(m, [5, 6], cfg, weak, STEPPED, 16, 4)
    assert len(full) == 1 and len(tree) == 0


# a bench's curve on the 2-core EPYC (Qwen, in one-token decodes of 30 ms): a 31-node tree costs 15
EPYC_SIZES = [1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64]
EPYC_COSTS = [1, 1.9, 2.49, 3.15, 3.94, 4.68, 6.83, 7.95, 8.3, 8.35, 10.74, 12.61, 15.39, 18.03, 19.28, 25.13]


def test_a_tree_costs_at_most_max_loss_more_than_a_plain_step():
    cm = CostModel(EPYC_SIZES, [0.03 * c for c in EPYC_COSTS])
    q = np.full(40, 0.95)
    free = best_size(q, cm)
    assert free >= 31                                           # the expected rate alone: the whole chain
    sizes = [best_size(q, cm, max_loss=loss * cm(1)) for loss in (1.0, 5.0, 9.0)]
    for k, loss in zip(sizes, (1.0, 5.0, 9.0)):
        assert 0 < k < free and cm(k + 1) - cm(1) <= loss * cm(1)
    assert sizes[0] == 1 and sizes == sorted(sizes) and sizes[2] >= 10
    assert best_size(q, cm, max_loss=0.5 * cm(1)) == 0          # not even one node (c(2) = 1.9 c(1))
    assert best_size(np.full(40, 0.05), FLAT, max_loss=0.5 * FLAT(1)) == 40   # a GPU's trees cost little more


def copying(n: int):
    """(text that has followed a copy of its start for 4 tokens, the n tokens the copy goes on
    with, a function giving the text's copy index as decoding has it then)."""
    from aded_edge.draft import ContextLookup
    start = list(range(10, 10 + n + 6))
    text = start + [0] + start[:7]

    def lookup():
        index = ContextLookup(text[:-4])
        for x in text[-4:]:     # the text follows the copy token by token, as decoding does
            index.chain(32)
            index.extend([x])
        return index
    return text, (start + [0])[7:7 + n], lookup


def sure_copy(n: int):
    """copying(n), with a calibrator that has seen 50 such copies written in full."""
    from aded_edge.budget import draft_step
    text, written, lookup = copying(n)
    cal = ReachCalibrator()
    for _ in range(50):
        full, _, _ = draft_step(TrigramMatrix(100, top_k=4), text, DraftConfig(budget="fixed"), cal, FLAT, 64, 32,
                                lookup=lookup())
        cal.observe(full, written)
    return text, written, lookup, cal


def test_a_text_stakes_at_most_what_its_trees_have_won_plus_its_allowance():
    """On the EPYC's curve the expected rate would verify a sure 32-node copy at once (15 plain
    steps). A text's first tree may cost at most RISK_START plain steps more than a plain step, the
    allowance growing with the text to RISK_BASE; as its trees win, its trees may grow; a lost tree
    shrinks them; the next text starts afresh."""
    from aded_edge import budget
    from aded_edge.budget import draft_step
    text, written, lookup, cal = sure_copy(32)
    cm = CostModel(EPYC_SIZES, [0.03 * c for c in EPYC_COSTS])
    m, cfg = TrigramMatrix(100, top_k=4), DraftConfig()

    def step(curve=cm, cal=cal):
        _, tree, expected = draft_step(m, text, cfg, cal, curve, 64, 32, lookup=lookup())
        assert tree.tokens[:len(tree)].tolist() == written[:len(tree)]   # the copy's chain, cut short
        return len(tree), expected

    cal.new_text()
    assert cal.at_stake() == budget.RISK_START < budget.RISK_BASE
    before = copy.deepcopy(cal)
    k, expected = step()
    assert 0 < k < 32
    assert cal.stake == pytest.approx((cm(k + 1) + cm.overhead) / cm.plain_step() - 1)
    assert cal.stake <= budget.RISK_START < (cm(33) + cm.overhead) / cm.plain_step() - 1
    grown = copy.deepcopy(before)
    for _ in range(100):                            # plain steps: the allowance grows, up to RISK_BASE
        grown.settle(0.0, 0)
    assert grown.at_stake() == budget.RISK_BASE and step(cal=grown)[0] > k
    cal.settle(expected, k)                         # all accepted: won k tokens for the stake
    assert cal.bank > 0 and cal.at_stake() > budget.RISK_START + budget.RISK_GROWTH
    k2, expected = step()
    cal.settle(expected, k2)                        # and again
    k2, expected = step()
    assert k2 > k                                   # the text's trees have paid: a longer copy
    cal.settle(expected, 0)                         # and it failed at its first token
    assert cal.bank < 0
    k3, _ = step()
    assert k3 < k                                   # smaller trees than the text's first
    before.bank = 50.0                              # a text that had won much ...
    assert step(cal=before)[0] == 32
    before.new_text()
    assert before.bank == 0 and step(cal=before)[0] == k   # ... and the next one, from RISK_START again
    cal.bank = -1000.0                              # however much a text has lost, a tree may cost RISK_FLOOR
    assert cal.at_stake() == budget.RISK_FLOOR
    cal.bank = 0.0
    assert step(FLAT)[0] == 32                      # a flat curve's trees cost little: no limit felt


def test_min_gain_keeps_marginal_trees_out():
    q = q_chain(0.9, 0.8)
    cm = CostModel([1, 2, 3], [0.010, 0.0175, 0.025])
    assert best_size(q, cm) == 1                     # 1.9 / 0.0175 = 109/s (2 nodes: 108/s) against 100/s
    assert best_size(q, cm, min_gain=0.1) == 0       # a 9% gain is within the calibration's error


def test_cost_curve_never_exceeds_one_by_one_decoding():
    # calibrated while the machine was busy: size 1 was later corrected online to 10 ms, and the
    # stale larger points may not claim that a batch costs more than its tokens one at a time
    cm = CostModel([1, 2, 4], [0.030, 0.100, 0.150])
    assert cm(2) == pytest.approx(0.060) and cm(4) == pytest.approx(0.120)
    for _ in range(400):
        cm.observe(1, 0.010, 0.0)
    assert cm(1) == pytest.approx(0.010, rel=0.02)
    assert cm(2) <= 0.0201 and cm(4) <= 0.0401


def test_unconfirmed_points_keep_the_calibrated_shape_at_the_level_seen_now():
    cm = CostModel([1, 2, 4], [0.030, 0.045, 0.075])   # calibrated while everything ran 3x slower
    for _ in range(400):
        cm.observe(1, 0.010, 0.0)
    assert cm(1) == pytest.approx(0.010, rel=0.02)
    assert cm(2) == pytest.approx(0.015, rel=0.03) and cm(4) == pytest.approx(0.025, rel=0.03)


def test_a_noisy_unconfirmed_point_does_not_hold_a_confirmed_one_up():
    # measured on this CPU (Qwen 1.5B): the calibration's size 3 came out above its size 4, and
    # real steps of size 4 (three drafts) cost 1.72x a plain step, not the calibrated 1.83x
    cm = CostModel([1, 2, 3, 4, 5], [0.070, 0.101, 0.134, 0.128, 0.169])
    assert cm(3) <= cm(4) < 0.134                    # the two noisy points are averaged, not maxed
    for _ in range(300):
        cm.observe(1, 0.070, 0.0)
        cm.observe(4, 0.120, 0.0)                    # size 3 is never seen in real steps
    assert cm(4) == pytest.approx(0.120, rel=0.02)   # the steps decide, not the unconfirmed size 3
    assert cm(2) <= cm(3) <= cm(4) <= cm(5)


def test_trust_learns_the_optimism_of_chosen_trees_and_recovers():
    from aded_edge.budget import TRUST_RANGE
    cal = ReachCalibrator()
    assert cal.trust == pytest.approx(1.0)
    for _ in range(60):                  # verified trees promised 2 drafts, the model took 0.5
        cal.settle(2.0, 0.5 if _ % 2 else 1)
    assert 0.3 < cal.trust < 0.45
    shy = cal.trust
    q = q_chain(0.9, 0.8)
    cm = CostModel([1, 2, 3], [0.010, 0.014, 0.017])
    assert best_size(q, cm) == 2 and best_size(np.minimum(q * shy, 1.0), cm) == 0
    for _ in range(300):                 # plain steps: the old evidence fades, drafting is tried again
        cal.settle(0.0, 0)
    assert cal.trust > 0.9
    for _ in range(200):                 # drafts better than predicted raise trust, within bounds
        cal.settle(1.0, 3)
    assert cal.trust == TRUST_RANGE[1]


def test_draft_step_applies_trust_to_its_choice():
    from aded_edge.budget import draft_step
    m = TrigramMatrix(100, top_k=4)
    m.update([5, 6, 7, 8, 9] * 30)
    cfg = DraftConfig(max_nodes=16)
    cal = ReachCalibrator()
    for _ in range(50):
        full, _, _ = draft_step(m, [5, 6], cfg, ReachCalibrator(), FLAT, 16, 4)
        cal.observe(full, [7, 8, 9, 5])
    _, tree, expected = draft_step(m, [5, 6], cfg, cal, STEPPED, 16, 4)
    assert len(tree) >= 1 and expected == pytest.approx(cal.predict(tree).sum(), rel=1e-6)
    for _ in range(100):                 # every verified tree was rejected
        cal.settle(expected, 0)
    _, tree, expected = draft_step(m, [5, 6], cfg, cal, STEPPED, 16, 4)
    assert len(tree) == 0 and expected == 0.0


def test_copy_chain_is_drafted_once_copying_has_proven_right():
    from aded_edge.budget import draft_step
    from aded_edge.draft import ContextLookup
    m = TrigramMatrix(100, top_k=4)                 # the matrix knows nothing
    text = [10, 11, 12, 13, 14, 15, 10, 11, 12]
    cfg = DraftConfig(max_nodes=16)
    cal = ReachCalibrator()
    _, tree, _ = draft_step(m, text, cfg, cal, STEPPED, 16, 4)
    assert len(tree) == 0                           # without the lookup: nothing to draft
    lookup = ContextLookup(text)
    for _ in range(50):                             # each copy so far was what the model wrote
        full, _, _ = draft_step(m, text, cfg.replace(budget="fixed"), cal, STEPPED, 16, 4, lookup=lookup)
        cal.observe(full, [13, 14, 15, 10])
    full, tree, expected = draft_step(m, text, cfg, cal, STEPPED, 16, 4, lookup=lookup)
    assert tree.tokens.tolist()[:3] == [13, 14, 15] and (tree.seen == 2).all() and (tree.copied == 3).all()
    assert expected > 2
    never = ReachCalibrator()
    for _ in range(50):                             # ... or never was
        never.observe(full, [1, 1, 1, 1])
    _, tree, _ = draft_step(m, text, cfg, never, STEPPED, 16, 4, lookup=lookup)
    assert len(tree) == 0


def test_a_search_pays_for_its_own_time():
    """Time outside llama_decode is learnt apart for steps that verified drafts (search, walk,
    update) and plain steps. After a search, its time is spent either way; before it, a tree is
    weighed against a plain step's own cost, so the bar for the probe rises with the difference."""
    cm = CostModel([1, 2, 4], [0.010, 0.014, 0.020])
    for _ in range(200):
        cm.observe(1, 0.010, 0.0002, drafted=False)
        cm.observe(2, 0.014, 0.0008)
    assert cm.overhead_plain == pytest.approx(0.0002, rel=0.01) and cm.overhead == pytest.approx(0.0008, rel=0.01)
    assert cm.plain_step() == pytest.approx(0.0108, rel=0.01) and cm.plain_step(True) == pytest.approx(0.0102, rel=0.01)
    q = q_chain(0.42)   # 1.42 / 14.8 ms = 96/s: above 1 / 10.8 ms = 93/s, below 1 / 10.2 ms = 98/s
    assert best_size(q, cm) == 1 and best_size(q, cm, before_search=True) == 0
    cm.overhead = cm.overhead_plain = 0.0005                  # one blended figure for both kinds of step
    assert best_size(q, cm, before_search=True) == 1


def test_a_shape_switch_is_learnt_apart_and_charged_to_a_tree_after_plain_steps():
    """llama.cpp rebuilds its graph when the batch size changes: the first one-token decode after
    a tree costs more than one in a run. That excess is learnt as the switch cost, not as c(1);
    a tree drafted after a plain step is charged the switch back (after a tree it is paid anyway)."""
    cm = CostModel([1, 2, 3], [0.010, 0.015, 0.020])
    for _ in range(60):
        cm.observe(3, 0.020, 0.0)
        cm.observe(1, 0.0125, 0.0, drafted=False)   # right after the tree: 2.5 ms more
        cm.observe(1, 0.010, 0.0, drafted=False)    # inside a run
    assert cm(1) == pytest.approx(0.010, rel=0.01)
    assert cm.switch == pytest.approx(0.0025, rel=0.01)
    q = np.array([0.62])            # rate 1.62 / 15 ms = 108/s against 100/s, 1.62 / 17.5 ms = 93/s
    cm.observe(1, 0.010, 0.0, drafted=False)
    assert cm.tree_extra == pytest.approx(0.0025, rel=0.01) and best_size(q, cm) == 0
    assert cm.tree_step(1) == pytest.approx(cm(2) + cm.overhead + 0.0025, rel=0.01)   # what the stake charges
    cm.observe(2, 0.015, 0.0)
    assert cm.tree_extra == 0.0 and best_size(q, cm) == 1
    assert cm.tree_step(1) == pytest.approx(cm(2) + cm.overhead)


def test_one_decode_slowed_by_other_load_does_not_price_the_trees_after_it():
    """The switch is seen only after trees, which are rare where few pay: an average had kept one
    100 ms hiccup at ~10 ms for the rest of a run. The median of the last few ignores it and
    still follows a lasting change."""
    cm = CostModel([1, 2, 3], [0.010, 0.015, 0.020], switch=0.001)
    for _ in range(5):
        cm.observe(3, 0.020, 0.0)
        cm.observe(1, 0.011, 0.0, drafted=False)   # 1 ms more than in a run
    cm.observe(3, 0.020, 0.0)
    cm.observe(1, 0.110, 0.0, drafted=False)       # another process took the cores for 100 ms
    assert cm.switch == pytest.approx(0.001, rel=0.05)
    for _ in range(6):
        cm.observe(3, 0.020, 0.0)
        cm.observe(1, 0.013, 0.0, drafted=False)   # switches now really cost 3 ms
    assert cm.switch == pytest.approx(0.003, rel=0.05)


def test_search_effort_follows_the_trees_the_budget_verifies():
    """The MCTS runs SIMS_PER_NODE simulations per node of the trees its searches have been ending
    in (at least MIN_SIMS, at most the config's): few where the budget verifies small trees (a CPU),
    the config's full search where it verifies large ones (a flat curve)."""
    from aded_edge.budget import MIN_SIMS, SIMS_PER_NODE, SIZE_EMA, draft_step

    def sims_run(tree):   # every simulation after the first passes through one child of the root
        return int(tree.visits[tree.depth == 1].sum()) + 1

    cfg = DraftConfig(max_nodes=64, n_simulations=150)
    cal = ReachCalibrator()
    assert cal.search_sims(cfg) == 150                       # no search yet: the full one
    for _ in range(60):
        cal.searched(2)
    assert cal.search_sims(cfg) == max(MIN_SIMS, int(np.ceil(SIMS_PER_NODE * cal.searched_size)))
    assert cal.search_sims(cfg) < 40
    for _ in range(60):
        cal.searched(64)
    assert cal.search_sims(cfg) == 150

    m = TrigramMatrix(100, top_k=8)
    m.update(np.random.default_rng(0).integers(0, 12, 3000).tolist())
    assert sims_run(build_draft(m, [5, 6], cfg, n_simulations=40)) == 40
    assert sims_run(build_draft(m, [5, 6], cfg.replace(n_simulations=20), n_simulations=40)) == 20
    small = ReachCalibrator()
    for _ in range(60):
        small.searched(1)
        small.observe(build_draft(m, [5, 6], cfg), [7, 8, 9, 5])   # (the calibration itself is not the point)
    full, _, _ = draft_step(m, [5, 6], cfg, small, FLAT, 64, 4)
    assert sims_run(full) == small.search_sims(cfg) == MIN_SIMS
    full, _, _ = draft_step(m, [5, 6], cfg.replace(budget="fixed"), small, FLAT, 64, 4)
    assert sims_run(full) == 150                             # a fixed budget always runs the config's
    big = ReachCalibrator()
    big.searched(64)
    full, tree, _ = draft_step(m, [5, 6], cfg, big, FLAT, 64, 4)
    assert sims_run(full) == 150                             # 4 x 64 nodes: the cap
    assert big.searched_size == pytest.approx(64 + SIZE_EMA * (len(tree) - 64))  # and it learns the size chosen
