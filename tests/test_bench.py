"""Benchmark harness logic: ratio and geometric-mean maths, interleaving, reports, replay."""
import json
import re
import math

import numpy as np
import pytest

from aded_edge.bench import (cpu_name, geomean, interleaved, load_prompts, markdown_table, run_bench, shared_data_dir,
                             summarise, verify_cost_line)
from aded_edge.simulate import replay, simulate


def test_geomean_and_summary_maths():
    assert geomean([1.0, 4.0]) == pytest.approx(2.0)
    assert geomean([2.0, 2.0, 2.0]) == pytest.approx(2.0)
    assert math.isnan(geomean([]))
    rows = [dict(workload="w", system="s", speedup=x, decode_tok_s=10 * x, tokens_per_step=1.5, draft_ms_per_step=0.1,
                 verify_ms_per_step=20.0, identical=True, drafted=d, accepted=a) for x, d, a in ((0.5, 10, 4), (2.0, 6, 3))]
    rows.append(dict(workload="w", system="t", speedup=1.0, decode_tok_s=10, tokens_per_step=1.0, draft_ms_per_step=0,
                     verify_ms_per_step=10.0, identical=False))
    summary = summarise(rows)
    s = next(x for x in summary if x["system"] == "s")
    assert s["speedup"] == pytest.approx(1.0) and s["min_speedup"] == 0.5 and s["identical"] == 2
    assert (s["accepted"], s["drafted"]) == (7, 16)       # summed over the prompts
    table = markdown_table(summary)
    assert "| w | s | 2 | 1.00x | 0.50x | 12.5 | 1.50 | 7/16 |" in table
    # a system that does not say what it drafted (llama-cpp-python's prompt lookup) shows "-"
    assert "| w | t | 1 | 1.00x | 1.00x | 10.0 | 1.00 | - | 0.00 | 10.00 | 0/1 |" in table


def test_verify_cost_line_compares_measured_decodes_with_the_curve():
    curve = dict(sizes=[1.0, 4.0, 32.0], seconds=[0.1, 0.2, 0.8])
    rows = [dict(system="aded", verify_sizes={"1": [6, 0.6], "3": [4, 0.8]}),
            dict(system="aded", verify_sizes={"1": [4, 0.4], "20": [2, 1.6]}),
            dict(system="plain", verify_sizes={})]
    # one-row decodes: 1.0 s / 10 = 0.1 s, the unit; 3 rows: 0.2 s = 2.00 units, the curve 0.1667 s = 1.67;
    # 20 rows: 0.8 s = 8.00 units, the curve 0.2 + 16/28 * 0.6 = 0.543 s = 5.43
    assert verify_cost_line(rows, "aded", curve) == ("on the curve: 1 rows 1.00 / 1.00 (10 steps), 2-4 rows 2.00 / "
                                                     "1.67 (4 steps), 17-32 rows 8.00 / 5.43 (2 steps)")
    # rows that carry the cost model's prediction for each decode: against it (3 rows: 0.72 s / 4 / 0.1 s)
    rows = [dict(system="aded", verify_sizes={"1": [10, 1.0, 1.1], "3": [4, 0.8, 0.72]})]
    assert verify_cost_line(rows, "aded", curve) == "predicted: 1 rows 1.00 / 1.10 (10 steps), 2-4 rows 2.00 / 1.80 (4 steps)"
    assert verify_cost_line(rows, "plain", curve) == ""            # no trees verified: nothing to compare
    assert verify_cost_line([dict(system="aded", verify_sizes={"3": [1, 0.2]})], "aded", curve) == ""   # no unit


def test_interleaving_alternates_order():
    assert interleaved(["plain", "aded", "pl"], 0) == ["plain", "aded", "pl"]
    assert interleaved(["plain", "aded", "pl"], 1) == ["pl", "aded", "plain"]
    # over two prompts every system runs once in each half of the sequence
    assert sorted(interleaved("ab", 0) + interleaved("ab", 1)) == ["a", "a", "b", "b"]


def test_cpu_name_tells_generations_apart():
    """A model name such as "Intel(R) Xeon(R) Processor @ 2.50GHz" does not say the generation; the
    report also names family, model, stepping and AMX, from the first processor's block only."""
    def block(n, model, stepping, flags):
        return (f"processor\t: {n}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: {model}\n"
                f"model name\t: Intel(R) Xeon(R) Processor @ 2.50GHz\nstepping\t: {stepping}\nflags\t\t: {flags}\n")
    amx = block(0, 143, 8, "fpu avx512f amx_bf16 amx_tile amx_int8") + "\n" + block(1, 85, 7, "fpu avx512f")
    assert cpu_name(amx) == "Intel(R) Xeon(R) Processor @ 2.50GHz (family 6, model 143, stepping 8, AMX)"
    older = block(0, 85, 7, "fpu avx512f avx512_vnni") + "\n" + block(1, 143, 8, "amx_tile")
    assert cpu_name(older) == "Intel(R) Xeon(R) Processor @ 2.50GHz (family 6, model 85, stepping 7, no AMX)"
    assert cpu_name("model name\t: Some CPU\n") == "Some CPU"
    assert cpu_name("processor\t: 0\nBogoMIPS\t: 48.00\nCPU implementer\t: 0x41\n") is None   # arm64: no model name


def test_prompt_selection_is_seeded():
    if shared_data_dir() is None:
        pytest.skip("../shared/data is not beside the repository")
    a = load_prompts(["chat", "math"], 3, seed=1)
    assert a == load_prompts(["chat", "math"], 3, seed=1)
    assert a != load_prompts(["chat", "math"], 3, seed=2)
    assert [p["workload"] for p in a] == ["chat"] * 3 + ["math"] * 3
    with pytest.raises(ValueError):
        load_prompts(["nope"], 1, 0)


def test_tiny_bench_run_writes_consistent_report(model_path, tmp_path):
    if shared_data_dir() is None:
        pytest.skip("../shared/data is not beside the repository")
    logged = []
    result = run_bench(model_path, ["math"], 1, 12, ("plain", "aded"), seed=0, threads=2, out_dir=tmp_path,
                       log=logged.append)
    lines = (tmp_path / "rows.jsonl").read_text().splitlines()
    header = json.loads(lines[0])["header"]
    rows = [json.loads(l) for l in lines[1:]]
    assert header["machine"]["cores"] >= 1 and header["quantization"] == "Q4_1"
    assert header["draft"]["max_nodes"] == 64 and header["draft"]["budget"] == "auto"
    assert "draft settings" not in result["report"]            # only named when not the defaults
    assert {r["system"] for r in rows} == {"plain", "aded"}
    plain = next(r for r in rows if r["system"] == "plain")
    aded = next(r for r in rows if r["system"] == "aded")
    assert plain["speedup"] == pytest.approx(1.0)
    assert aded["speedup"] == pytest.approx(aded["decode_tok_s"] / plain["decode_tok_s"])
    assert (plain["drafted"], plain["accepted"]) == (0, 0)
    assert plain["parted_at"] is None and (aded["parted_at"] is None) == aded["identical"]
    assert aded["parted_at"] is None or 0 <= aded["parted_at"] < 12   # the first token that differs
    assert 0 <= aded["accepted"] <= aded["drafted"]
    assert aded["accepted"] == sum(int(k) * n for k, n in aded["accept_hist"].items())
    # every verification decode is counted by its rows (pending tokens + tree), one step each
    sizes = {int(n): c for n, c in aded["verify_sizes"].items()}
    assert sum(c[0] for c in sizes.values()) == round(aded["tokens"] / aded["tokens_per_step"])
    assert all(1 <= n <= 65 and c[1] > 0 and c[2] > 0 for n, c in sizes.items()) and plain["verify_sizes"] == {}
    assert f"| math | aded | 1 | {aded['speedup']:.2f}x" in result["report"]
    assert logged == [f"[1/1] math/{aded['id']}: plain {plain['decode_tok_s']:.1f} tok/s, "
                      f"aded {aded['decode_tok_s']:.1f} tok/s {aded['speedup']:.2f}x"]   # one line per prompt
    assert f"| {aded['accepted']}/{aded['drafted']} |" in result["report"]
    assert "| math | aded | 1 |" in result["report"] and (tmp_path / "summary.md").exists()
    rec = [json.loads(l) for l in (tmp_path / "recorded.jsonl").read_text().splitlines()]
    assert len(rec) == 1 and rec[0]["output"] and rec[0]["n_vocab"] == 49152
    assert 2 in rec[0]["ends"] and rec[0]["output"][0] not in rec[0]["ends"]   # (<|im_end|>: copies stop there)
    assert rec[0]["indents"] and all(c < 0 for _, c in rec[0]["indents"])   # (re-indented copies, see draft.indent_class)
    # the model-free replay of that recording reproduces it (replay asserts it) and reports sizes
    out = simulate(tmp_path / "recorded.jsonl", sizes=(0, 4))
    assert "| aded MCTS | context | 4 |" in out
    # ... and with the run's own cost curve the automatic budget decides, with a speed estimate
    out = simulate(tmp_path / "recorded.jsonl", sizes=(8,), costs=tmp_path / "rows.jsonl")
    assert "budget: auto" in out and out.strip().endswith("x |")


def test_replay_counts_steps_exactly():
    # a repeated phrase: once learnt, long drafts are accepted, never more tokens than recorded
    phrase = [5, 6, 7, 8, 9, 10, 11, 12]
    rec = [dict(prompt=phrase * 3, output=phrase * 4)]
    from aded_edge.config import DraftConfig
    r0 = replay(rec, 20, DraftConfig(), nodes=0)
    assert r0["steps"] == len(phrase) * 4 - 1 and r0["accepted"] == 0
    r = replay(rec, 20, DraftConfig(), nodes=16)
    assert r["tokens"] == len(phrase) * 4 - 1
    assert r["steps"] < r0["steps"] / 3
    # every step emits its accepted drafts plus one bonus token, except possibly the last (recording ends)
    assert r["tokens"] - r["steps"] <= r["accepted"] <= r["tokens"] - r["steps"] + 1


def test_simulate_replays_changed_settings_and_splits_by_workload(tmp_path, capsys):
    """`simulate --set` replays a changed DraftConfig (named in the report) and `--by-workload`
    adds one row per workload: the A/B of a drafting change without a model."""
    from aded_edge.config import DraftConfig
    phrase = [5, 6, 7, 8, 9, 10, 11, 12]
    rows = [dict(workload="edit", id="a", n_vocab=20, prompt=phrase * 3, output=phrase * 4),
            dict(workload="chat", id="b", n_vocab=20, prompt=[1, 2, 3, 4], output=[13, 14, 15, 16, 17, 18])]
    path = tmp_path / "recorded.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    plain = simulate(path, sizes=(16,))
    assert "settings changed" not in plain and "| context: edit |" not in plain
    out = simulate(path, sizes=(16,), config=DraftConfig().with_settings(["copy_depth=0", "max_depth=1"]), by_workload=True)
    assert "drafting settings changed: max_depth=1, copy_depth=0" in out
    assert "| aded MCTS | context: edit | 16 |" in out and "| aded MCTS | context: chat | 16 |" in out
    # one-token drafts, no copies: the repeated phrase now takes a step per two tokens at best
    per_step = lambda text, label: float(next(l for l in text.splitlines() if f"| {label} | 16 |" in l).split("|")[4])
    assert per_step(out, "context: edit") <= 2.0 < per_step(plain, "context")
    assert DraftConfig().with_settings(["adapt_rejected=false", "min-gain=0.2"]) == DraftConfig(adapt_rejected=False, min_gain=0.2)
    for bad, fragment in ((["nosuch=1"], "NAME one of"), (["min_gain"], "NAME=VALUE"), (["top_k=x"], "not a valid int"),
                          (["adapt_rejected=maybe"], "not a valid bool"), (["min_gain=3"], "min_gain must be in [0, 1]")):
        with pytest.raises(ValueError, match=re.escape(fragment)):
            DraftConfig().with_settings(bad)
    from aded_edge.cli import main
    capsys.readouterr()
    assert main(["simulate", str(path), "--set", "nosuch=1"]) == 1   # the CLI: one line, exit 1
    err = capsys.readouterr().err.strip()
    assert "--set: a setting is NAME=VALUE" in err and len(err.splitlines()) == 1


def test_replay_with_a_cost_curve_lets_the_budget_decide():
    from aded_edge.budget import CostModel
    from aded_edge.config import DraftConfig
    phrase = [5, 6, 7, 8, 9, 10, 11, 12]
    rec = [dict(prompt=phrase * 3, output=phrase * 8)]
    flat = replay(rec, 20, DraftConfig(), 16, cost=CostModel([1, 17], [0.010, 0.011]))
    linear = replay(rec, 20, DraftConfig(), 16, cost=CostModel([1, 17], [0.010, 0.170]))
    assert flat["steps"] < flat["tokens"] / 3 and flat["est_speedup"] > 2
    assert linear["drafted"] == 0 and linear["steps"] == linear["tokens"]   # nothing pays: plain steps
    assert linear["est_speedup"] <= 1.0


def test_tree_oracle_verifies_only_what_the_model_accepts(tmp_path):
    """The tree oracle (`simulate --oracle`): each step's whole tree searched, only its accepted
    path verified, cut where tokens per second peak. On a flat curve it takes every accepted
    token, as fixed trees do, at one row per token; where every row costs a plain step it takes
    plain steps; between the two, only paths long enough to pay."""
    from aded_edge.budget import CostModel
    from aded_edge.config import DraftConfig
    phrase = [5, 6, 7, 8, 9, 10, 11, 12]
    rec = [dict(workload="edit", prompt=phrase * 3, output=phrase * 4 + [13, 14, 15]),
           dict(workload="chat", prompt=[1, 2, 3, 4], output=[16, 17, 18, 13, 14, 19])]
    fixed = replay(rec, 20, DraftConfig(), 16)
    flat = replay(rec, 20, DraftConfig(), 16, cost=CostModel([1, 17], [1.0, 1.0]), oracle=True)
    assert (flat["tokens"], flat["steps"], flat["accepted"]) == (fixed["tokens"], fixed["steps"], fixed["accepted"])
    assert flat["drafted"] == flat["accepted"] > 0 and flat["redecoded"] == 0 and fixed["drafted"] > fixed["accepted"]
    assert flat["est_speedup"] == pytest.approx(flat["tokens"] / flat["steps"])
    linear = replay(rec, 20, DraftConfig(), 16, cost=CostModel([1, 17], [1.0, 17.0]), oracle=True)
    assert (linear["drafted"], linear["steps"], linear["est_speedup"]) == (0, linear["tokens"], pytest.approx(1.0))
    steep = CostModel([1, 2, 17], [1.0, 2.1, 2.5])   # a one-node path loses (2 tokens for 2.1), longer ones pay
    mid = replay(rec, 20, DraftConfig(), 16, cost=steep, oracle=True)
    assert mid["accepted"] == mid["drafted"] > 0 and mid["steps"] > flat["steps"]
    assert mid["est_speedup"] > 1.0   # a step verifies a path only where it beats a plain step
    with pytest.raises(ValueError, match="cost curve"):
        replay(rec, 20, DraftConfig(), 16, oracle=True)
    path = tmp_path / "recorded.jsonl"
    path.write_text("\n".join(json.dumps(dict(r, id=str(i), n_vocab=20)) for i, r in enumerate(rec)) + "\n")
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps(dict(sizes=[1, 17], seconds=[1.0, 1.0])))
    out = simulate(path, sizes=(16,), costs=costs, oracle=True, by_workload=True)
    line = f"| tree oracle | context | 16 | {flat['tokens_per_step']:.2f} | {flat['accepted']}/{flat['drafted']} | - | "
    assert line in out and "| tree oracle | context: chat | 16 |" in out and "| copy oracle | - |" in out


def test_simulate_by_prompt_reports_each_workloads_geometric_mean_and_floor(tmp_path, capsys):
    """`simulate --by-prompt`: a workload's speed-up as the bench reports it (the geometric mean of
    its prompts', not the ratio of its summed times) and its lowest prompt, the floor of issue 4's
    targets; each prompt's counts add up to the replay's totals."""
    from aded_edge.budget import CostModel
    from aded_edge.config import DraftConfig
    from aded_edge.simulate import per_prompt
    phrase = [5, 6, 7, 8, 9, 10, 11, 12]
    rows = [dict(workload="edit", id="long", n_vocab=20, prompt=phrase * 3, output=phrase * 8),
            dict(workload="edit", id="short", n_vocab=20, prompt=[1, 2, 3, 4], output=[13, 14, 15, 16]),
            dict(workload="chat", id="new", n_vocab=20, prompt=[1, 2, 3, 4], output=[17, 18, 19, 13, 14])]
    cost = CostModel([1, 17], [0.010, 0.011])   # flat: the copies of the repeated phrase pay
    r = replay(rows, 20, DraftConfig(), 16, cost=cost)
    assert sorted(r["by_prompt"]) == ["chat/new", "edit/long", "edit/short"]
    for k in ("tokens", "steps", "drafted", "accepted"):
        assert sum(c[k] for c in r["by_prompt"].values()) == r[k]
    long_, short = r["by_prompt"]["edit/long"]["est_speedup"], r["by_prompt"]["edit/short"]["est_speedup"]
    assert long_ > 2 > short   # the long copy pays, the short new text cannot
    count, geo, low, key = per_prompt(r["by_prompt"])["edit"]
    assert (count, key, low) == (2, "edit/short", short)
    assert geo == pytest.approx(math.sqrt(long_ * short))
    assert geo != pytest.approx(r["by_workload"]["edit"]["est_speedup"])   # not the ratio of summed times
    one_token = replay([dict(workload="chat", id="eog", prompt=[1, 2, 3], output=[4])], 20, DraftConfig(), 16, cost=cost)
    assert per_prompt(one_token["by_prompt"]) == {}   # nothing decoded after the first token: no speed
    path = tmp_path / "recorded.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps(dict(sizes=[1, 17], seconds=[0.010, 0.011])))
    out = simulate(path, sizes=(16,), costs=costs, by_prompt=True)
    # (the estimate includes the drafting time measured in each replay, so the figures differ a little)
    line = next(l for l in out.splitlines() if l.startswith("| aded MCTS | context | 16 | edit | 2 |"))
    cells = [c.strip() for c in line.split("|")]
    assert float(cells[6].rstrip("x")) == pytest.approx(geo, rel=0.05) and cells[7].endswith("x (edit/short)")
    assert "| aded MCTS | context | 16 | chat | 1 |" in out
    with pytest.raises(ValueError, match="cost curve"):
        simulate(path, sizes=(16,), by_prompt=True)
    from aded_edge.cli import main
    capsys.readouterr()
    assert main(["simulate", str(path), "--by-prompt"]) == 1   # no cost curve: one line, exit 1
    err = capsys.readouterr().err.strip()
    assert "--by-prompt needs --costs" in err and len(err.splitlines()) == 1


def test_bench_systems_take_the_draft_settings(model_path):
    from aded_edge.bench import _non_default, make_system
    from aded_edge.config import DraftConfig
    common = dict(n_ctx=512, n_threads=2, n_threads_batch=2, verbose=False)
    draft = DraftConfig(max_nodes=7, max_depth=6, n_simulations=40)
    fixed = make_system("aded-fixed", model_path, common, draft=draft)
    auto = make_system("aded", model_path, common, draft=draft)
    try:
        assert fixed.draft_config == draft.replace(budget="fixed")
        assert auto.draft_config == draft
    finally:
        fixed.close()
        auto.close()
    assert _non_default(draft) == "n_simulations=40, max_depth=6, max_nodes=7"
    assert _non_default(DraftConfig()) == _non_default(None) == ""


def test_copy_oracle_verifies_each_copy_exactly_as_far_as_it_goes(tmp_path):
    """The copy oracle (`simulate --oracle`): what copy drafting reaches when every copy's end is
    known. An answer that copies 30 tokens of its 40-token input and then writes 10 new ones."""
    from aded_edge.budget import CostModel
    from aded_edge.simulate import copy_oracle
    prompt = list(range(100, 140))
    rec = [dict(workload="edit", prompt=prompt, output=prompt[:30] + list(range(200, 210)))]
    flat = copy_oracle(rec, CostModel([1, 64], [1.0, 1.0]), depth=32)
    # two plain steps until the text's last three tokens occur in the input, a fresh match's 8
    # copied tokens (draft.FRESH_DEPTH), then the rest of the copy (18) with the first new token as
    # the bonus, then 9 plain steps: 13 steps for 39 tokens, every drafted token accepted
    assert (flat["tokens"], flat["steps"], flat["drafted"], flat["accepted"]) == (39, 13, 26, 26)
    assert flat["est_speedup"] == pytest.approx(39 / 13)
    linear = copy_oracle(rec, CostModel([1, 64], [1.0, 64.0]), depth=32)   # every row a plain step: no draft pays
    assert (linear["steps"], linear["drafted"], linear["est_speedup"]) == (39, 0, pytest.approx(1.0))
    short = copy_oracle(rec, CostModel([1, 64], [1.0, 1.0]), depth=4)      # chains of at most 4 tokens
    assert short["steps"] > flat["steps"] and short["accepted"] == short["drafted"]
    # with a KV term each decode also pays for the cells before it, per row: plain decoding's token
    # i reads 40 + i cells; a tree's rows all read the cells before its step
    kv = copy_oracle(rec, CostModel([1, 64], [1.0, 1.0], per_cell=0.01, prefix=0), depth=32)
    assert kv["plain_s"] == pytest.approx(sum(1.0 + 0.01 * (40 + i) for i in range(39)))
    assert 1.0 < kv["est_speedup"] < flat["est_speedup"]
    path = tmp_path / "recorded.jsonl"
    path.write_text(json.dumps(dict(rec[0], id="a", n_vocab=256)) + "\n")
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps(dict(sizes=[1, 64], seconds=[1.0, 1.0])))
    out = simulate(path, sizes=(8,), costs=costs, oracle=True, by_workload=True)
    assert "| copy oracle | - | 32 | 3.00 | 26/26 | - | 3.000x |" in out and "| copy oracle | edit | 32 |" in out
    rows = tmp_path / "rows.jsonl"   # a bench's header carries the KV term, and replay prices with it
    rows.write_text(json.dumps(dict(header=dict(cost_curve=dict(sizes=[1, 64], seconds=[1.0, 1.0], per_cell=0.01,
                                                                   prefix=0)))) + "\n")
    assert f"| 3.00 | 26/26 | - | {kv['est_speedup']:.3f}x |" in simulate(path, sizes=(8,), costs=rows, oracle=True)
    from aded_edge.cli import main
    assert main(["simulate", str(path), "--oracle"]) == 1   # no cost curve: one line, exit 1


def test_restore_takes_decoding_back_to_its_snapshot(plain, aded_tree):
    """bench --repeat: after restore() what decoding learnt since snapshot() is gone, so the same
    prompt drafts exactly the same trees again (whole fixed trees: no timing enters the choice);
    without the restore the next run starts from what the last one taught and drafts better."""
    import itertools
    prompt = plain.tokenize(b"# Compute the sum and the difference of two numbers.\ndef add(a, b):\n")
    m = aded_tree.matrix

    def table():
        return [a.copy() for a in (m.keys, m.rowof, m.succ, m.w, m.n_rows)]

    def run():
        out = list(itertools.islice(aded_tree.generate(prompt, temp=0.0), 40))
        s = aded_tree.last_stats
        return out, (s.steps, s.drafted, s.accepted, dict(s.accept_hist))

    saved, before = aded_tree.snapshot(), table()
    first = run()
    assert m.adaptive_rows > int(before[4][0])            # the run taught the matrix something
    for _ in range(2):                                     # the snapshot serves any number of restores
        aded_tree.restore(saved)
        assert all(np.array_equal(a, b) for a, b in zip(table(), before))
        assert run() == first
    third = run()                                          # no restore: it has seen this answer already
    assert third[0] == first[0] and third[1][2] > first[1][2]


def test_restore_takes_the_drafter_back_too(aded_tree, monkeypatch):
    """A drafter with state of its own (the reference drafter's adapted reader) is part of the
    snapshot: otherwise the bench's later runs of a prompt would draft from what the earlier ones
    taught it."""
    class Drafter:
        learnt = ("first",)

        def snapshot(self):
            return self.learnt

        def restore(self, learnt):
            self.learnt = learnt

    drafter = Drafter()
    monkeypatch.setattr(aded_tree, "drafter", drafter)
    saved = aded_tree.snapshot()
    drafter.learnt = ("first", "second")
    aded_tree.restore(saved)
    assert drafter.learnt == ("first",)


def test_bench_names_where_an_output_parted_from_plain_and_the_logit_gap_there(model_path, tmp_path, monkeypatch):
    """A system whose output parts from plain's is reported with the first differing token and how
    much more the model's logits favour plain's token there; lossless allows only near ties, so a
    token the model rates far below plain's (forced in here) shows a large gap."""
    if shared_data_dir() is None:
        pytest.skip("../shared/data is not beside the repository")
    import dataclasses
    from aded_edge import bench
    real = bench.timed_generate

    def spoiled(llm, prompt, max_tokens, eog, **kw):
        got = real(llm, prompt, max_tokens, eog, **kw)
        if llm._model_reason == "":                            # the aded system, not plain
            other = 0 if got.tokens[5] != 0 else 1                 # (a special token)
            got = dataclasses.replace(got, tokens=got.tokens[:5] + [other] + got.tokens[6:])
        return got
    monkeypatch.setattr(bench, "timed_generate", spoiled)
    result = run_bench(model_path, ["math"], 1, 12, ("plain", "aded"), seed=0, threads=2, out_dir=tmp_path)
    rows = {r["system"]: r for r in map(json.loads, (tmp_path / "rows.jsonl").read_text().splitlines()[1:])}
    assert rows["plain"]["parted_at"] is None and rows["plain"]["parted_gap"] is None
    assert rows["aded"]["parted_at"] == 5 and not rows["aded"]["identical"]
    assert rows["aded"]["parted_gap"] > 1.0        # a special token is nowhere near the model's choice
    assert f"aded math {rows['aded']['id']} at token 5 (logit gap {rows['aded']['parted_gap']:.3f})" in result["report"]


def test_logit_gap_is_the_models_preference(aded, scorer):
    from conftest import BATCH_INVARIANT
    prompt = aded.tokenize(b"The capital of France is")
    scorer.reset()
    scorer.eval(prompt)
    row = np.array(scorer.scores[len(prompt) - 1])
    first, second = np.argsort(row)[::-1][:2]
    gap = aded.logit_gap(prompt, int(first), int(second))
    assert gap >= 0 and aded.logit_gap(prompt, int(first), int(first)) == 0
    assert gap == pytest.approx(row[first] - row[second], abs=1e-3 if BATCH_INVARIANT else 3.0)


def test_repeated_bench_keeps_every_run_and_counts_the_median(model_path, tmp_path):
    if shared_data_dir() is None:
        pytest.skip("../shared/data is not beside the repository")
    result = run_bench(model_path, ["math"], 1, 12, ("plain", "aded"), seed=0, threads=2, out_dir=tmp_path, repeat=3)
    lines = (tmp_path / "rows.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["header"]["repeat"] == 3
    rows = {r["system"]: r for r in map(json.loads, lines[1:])}
    for r in rows.values():
        assert len(r["runs_tok_s"]) == 3 and r["decode_tok_s"] == sorted(r["runs_tok_s"])[1]
    assert rows["aded"]["speedup"] == pytest.approx(rows["aded"]["decode_tok_s"] / rows["plain"]["decode_tok_s"])
    assert rows["plain"]["identical"] and "3 runs per system and prompt" in result["report"]
    assert re.search(r"run-to-run spread .*: plain \d+\.\d%, aded \d+\.\d%", result["report"])
    with pytest.raises(ValueError):
        run_bench(model_path, ["math"], 1, 12, ("plain",), repeat=0, out_dir=tmp_path)
