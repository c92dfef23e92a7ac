"""Model-free replay: recorded plain greedy output through the drafter, no model at all.

For each recorded generation the replay drafts exactly as decoding would (same matrix adaptation,
same tree), "verifies" against the recorded tokens, accepts along the tree, and asserts that the
replayed output equals the recording. It reports tokens per verification step and drafting time
per token for each tree size: the hardware-independent half of the benchmark. One adaptation is
out of its reach: what the model would write after a draft node it rejected
(DraftConfig.adapt_rejected) needs the model's logits there, so replay leaves it out and real
decoding can draft better than replay says.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from .accept import walk_tree
from .bench import geomean
from .config import DraftConfig
from .budget import CostModel, ReachCalibrator, draft_step, warm_up
from .draft import ContextLookup
from .trigram import TrigramMatrix


def load_recorded(path) -> list[dict]:
    rows = [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]
    for r in rows:
        if not isinstance(r.get("prompt"), list) or not isinstance(r.get("output"), list):
            raise ValueError(f"{path}: every row needs 'prompt' and 'output' token lists (bench's recorded.jsonl)")
    return rows


COUNTS = ("tokens", "steps", "drafted", "accepted", "redecoded", "draft_s", "verify_s", "plain_s")  # summed per workload


def replay(recorded: list[dict], n_vocab: int, config: DraftConfig, nodes: int, static=None,
           cost: CostModel | None = None, oracle: bool = False) -> dict:
    """Replay every recording, in order, with trees of up to `nodes` nodes (one matrix and one
    calibration shared across recordings, as in one decoding process such as a bench run;
    `static`: a corpus matrix's static arrays). With a cost curve the auto budget chooses each
    step's tree exactly as decoding does, and the verification time is estimated from the curve.
    `oracle` (needs a cost curve): the tree oracle, a budget that knows what the model accepts:
    each step searches the whole `nodes`-node tree, verifies only the path the model accepts in
    it, cut where tokens per second on the curve peak (drafting time not counted), else takes a
    plain step: what any budget could reach with this drafter's trees on this curve.
    Returns tokens, steps, drafted and accepted counts, drafting time and (with a cost curve)
    estimated seconds of aded and of plain, in total, per workload (`by_workload`) and per
    recording (`by_prompt`, keyed "workload/id")."""
    if oracle and cost is None:
        raise ValueError("the tree oracle needs a cost curve")
    matrix = TrigramMatrix(n_vocab, top_k=config.top_k, increment=config.adapt_increment, cap=config.adapt_cap)
    if static is not None:
        matrix.set_static(*static)
    config = config.replace(max_nodes=nodes, budget="auto" if cost is not None and not oracle else "fixed")
    cost = cost or CostModel([1], [1.0])
    calibrator = ReachCalibrator()
    warm_up(n_vocab, config.top_k, config)   # every kernel compiled outside the timed drafting
    deepest = max(config.max_depth, config.copy_depth)  # no context window to run out of here
    prompts: dict[str, dict] = {}   # counts per recording, "workload/id"
    for i, rec in enumerate(recorded):
        prompt, truth = rec["prompt"], rec["output"]
        c = prompts.setdefault(f"{rec.get('workload', '-')}/{rec.get('id', i)}", dict.fromkeys(COUNTS, 0))
        matrix.update(prompt)
        calibrator.new_text()
        history = list(prompt) + truth[:1]   # the first token comes from the prompt pass
        lookup = _lookup(rec, history, config.copy_ngram)
        out = truth[:1]
        pending = 1                          # tokens emitted but not yet in the (simulated) KV cache
        while len(out) < len(truth):
            cost.at(len(prompt) + len(out) - pending)   # the KV cells before this step's batch
            t = time.perf_counter()
            full, tree, expected = draft_step(matrix, history, config, calibrator, cost, nodes, deepest,
                                              lookup=lookup)
            drafting = time.perf_counter() - t
            upcoming = iter(truth[len(out):])  # "the model" chooses the recorded tokens
            acc, emitted = walk_tree(tree, lambda _row: next(upcoming, -1))
            if oracle:   # only the accepted path, as one chain, as far as it pays best (pending is 1 here)
                drafted = _best_prefix(cost, len(acc))
                acc, emitted = acc[:drafted], emitted[:drafted + 1]
                c["verify_s"] += float(cost(drafted + 1))
            else:
                drafted = len(tree)
                c["draft_s"] += drafting
                c["verify_s"] += float(cost(drafted + pending))
                # as in decoding, accepted nodes off the batch's first chain are evaluated again next step
                kept = next((j for j, node in enumerate(acc) if node != j), len(acc))
                pending = 1 + len(acc) - kept
            emitted = [t for t in emitted if t >= 0]
            c["plain_s"] += cost.plain_tokens(len(emitted))   # plain decoding of the same tokens, at their cells
            start = len(history)
            history.extend(emitted)
            lookup.extend(emitted)
            out.extend(emitted)
            matrix.update(history[start - 2:], start=2)
            calibrator.track(full, start)
            calibrator.learn(history)
            calibrator.settle(expected, len(acc))
            c["steps"] += 1
            c["drafted"] += drafted
            c["accepted"] += len(acc)
            c["redecoded"] += pending - 1
        if out != truth:
            raise AssertionError("replay did not reproduce the recorded output")
        c["tokens"] += len(truth) - 1
    cost.at(cost.prefix)
    counts: dict[str, dict] = {}
    for key, c in prompts.items():
        w = counts.setdefault(key.split("/", 1)[0], dict.fromkeys(COUNTS, 0))
        for k in COUNTS:
            w[k] += c[k]
    return dict(_totals(counts, nodes), by_prompt={k: _summary(c, nodes) for k, c in prompts.items()})


def copy_oracle(recorded: list[dict], cost: CostModel, depth: int, min_order: int = 2) -> dict:
    """A budget that knows where every copy ends: at each step the context's copy chain (built
    as decoding builds it, up to `depth` tokens) is verified exactly as far as the recorded
    output follows it (or the prefix of that with the best tokens per second on the curve), else
    a plain step. What copy drafting can reach on this cost curve however well the copies are
    predicted (the matrix's own guesses left out). Counts as replay's, without drafting time."""
    counts: dict[str, dict] = {}
    for rec in recorded:
        prompt, truth = rec["prompt"], rec["output"]
        c = counts.setdefault(rec.get("workload", "-"), dict.fromkeys(COUNTS, 0))
        lookup = _lookup(rec, list(prompt) + truth[:1], min_order)
        at = 1
        while at < len(truth):
            cost.at(len(prompt) + at - 1)
            chain, _ = lookup.chain(depth)
            right = 0
            while right < len(chain) and at + right < len(truth) and chain[right] == truth[at + right]:
                right += 1
            k = _best_prefix(cost, right)
            c["verify_s"] += float(cost(k + 1))
            c["plain_s"] += cost.plain_tokens(min(k + 1, len(truth) - at))   # (a last bonus lies past the answer)
            c["steps"] += 1
            c["drafted"] += k
            c["accepted"] += k
            lookup.extend(truth[at:at + k + 1])
            at += k + 1
        c["tokens"] += len(truth) - 1
    cost.at(cost.prefix)
    return _totals(counts, depth)


def _best_prefix(cost: CostModel, longest: int) -> int:
    """How many of `longest` known-accepted draft tokens an oracle verifies: the count whose step
    (those tokens and the bonus) gives the most tokens per second on the curve (ties: the fewest)."""
    return max(range(longest + 1), key=lambda j: (j + 1) / float(cost(j + 1)))


def _lookup(rec: dict, history: list, min_order: int) -> ContextLookup:
    """The copy index of a recording's text, with its end and indentation tokens (older
    recordings: none)."""
    return ContextLookup(history, min_order, rec.get("ends", ()), dict(rec.get("indents", ())))


def _totals(counts: dict, nodes: int) -> dict:
    """The summary over every workload's counts, and per workload."""
    total = {k: sum(c[k] for c in counts.values()) for k in COUNTS}
    return dict(_summary(total, nodes), by_workload={w: _summary(c, nodes) for w, c in counts.items()})


def _summary(c: dict, nodes: int) -> dict:
    return dict(c, nodes=nodes, tokens_per_step=c["tokens"] / max(c["steps"], 1),
                draft_us_per_token=1e6 * c["draft_s"] / max(c["tokens"], 1),
                est_speedup=c["plain_s"] / max(c["verify_s"] + c["draft_s"], 1e-12))


def load_costs(path) -> CostModel:
    """The cost curve of a bench run (rows.jsonl header) or of a cached calibration file."""
    text = Path(path).read_text()
    try:
        first = json.loads(text.splitlines()[0]) if text.strip() else {}
        data = first.get("header", {}).get("cost_curve") or first
        return CostModel(data["sizes"], data["seconds"], 0.0, data.get("per_cell", 0.0), data.get("prefix", 0))
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        raise ValueError(f"{path}: no cost curve (bench's rows.jsonl or a file of the cost cache)") from None


def per_prompt(by_prompt: dict) -> dict:
    """{workload: (prompts, geometric mean of their est. speed-ups, lowest speed-up, its "workload/id")}:
    a workload's speed-up as the bench reports it (geometric mean over its prompts), and its floor.
    A recording with no token after its first (nothing decoded) has no speed and is left out."""
    out = {}
    for key, c in by_prompt.items():
        if c["tokens"] > 0:
            out.setdefault(key.split("/", 1)[0], []).append((c["est_speedup"], key))
    return {w: (len(xs), geomean([x for x, _ in xs]), *min(xs)) for w, xs in out.items()}


def simulate(path, n_vocab: int | None = None, sizes=(1, 2, 4, 8, 16, 32, 64), config: DraftConfig | None = None,
             corpus=None, costs=None, by_workload: bool = False, oracle: bool = False,
             by_prompt: bool = False) -> str:
    """Markdown table of the replay at each tree size, with the context matrix alone and, when a
    corpus matrix file is given, with it merged in; with a cost curve, the automatic budget
    chooses the trees (up to each size) and the estimated speed-up over plain decoding is shown.
    `config`: the drafting settings replayed (default: DraftConfig()); `by_workload`: one more row
    per workload of the recording under each total row; `oracle` (needs a cost curve): more rows,
    the tree oracle (replay's `oracle`) at each size and copy_oracle at the config's copy depth;
    `by_prompt` (needs a cost curve): a second table, each workload's speed-up as the bench
    reports it (the geometric mean of its prompts') and its lowest prompt, the floor of issue 4's
    targets."""
    recorded = load_recorded(path)
    n_vocab = n_vocab or max(int(r.get("n_vocab", 0)) for r in recorded) or None
    if not n_vocab:
        raise ValueError(f"{path}: no n_vocab recorded; pass the model's vocabulary size")
    config = config or DraftConfig()
    cost = load_costs(costs) if costs else None
    if oracle and cost is None:
        raise ValueError("the copy oracle needs a cost curve (costs)")
    if by_prompt and cost is None:
        raise ValueError("speed-ups per prompt need a cost curve (costs)")
    changed = config.changes()
    lines = [f"replay of {len(recorded)} recorded generations ({sum(len(r['output']) for r in recorded)} tokens), "
             f"model-free; every replay reproduced its recording"
             + (f"; budget: auto on the cost curve of {costs} (est. speed-up = plain decode time from the "
                f"curve / (verify time from the curve + measured drafting time))" if cost else "; budget: fixed")
             + (f"; drafting settings changed: {changed}" if changed else ""),
             "| drafter | matrix | nodes | tokens/step | accepted/drafted | draft us/token | est. speed-up |",
             "|---|---|---|---|---|---|---|"]
    variants = [("context", None)]
    if corpus is not None:
        static = TrigramMatrix.load(corpus, n_vocab=n_vocab)
        variants.append(("context + corpus", static.static_arrays()))
    prompt_lines = ["", "per prompt: each workload's est. speed-up as the bench reports it (geometric mean over "
                    "its prompts) and its lowest prompt",
                    "| drafter | matrix | nodes | workload | prompts | est. speed-up (geo) | lowest prompt |",
                    "|---|---|---|---|---|---|---|"]
    for n in sizes:
        for name, static in variants:
            r = replay(recorded, n_vocab, config, n, static, cost=cost)
            for w, (count, geo, low, key) in (per_prompt(r["by_prompt"]).items() if by_prompt else ()):
                prompt_lines.append(f"| aded MCTS | {name} | {n} | {w} | {count} | {geo:.3f}x | {low:.3f}x ({key}) |")
            runs = [("aded MCTS", r)] + ([("tree oracle", replay(recorded, n_vocab, config, n, static, cost, oracle=True))]
                                         if oracle else [])
            for drafter, r in runs:
                parts = [(name, r)] + ([(f"{name}: {w}", c) for w, c in r["by_workload"].items()] if by_workload else [])
                for label, c in parts:
                    speed = f"{c['est_speedup']:.3f}x" if cost else "-"
                    drafting = f"{c['draft_us_per_token']:.1f}" if drafter == "aded MCTS" else "-"
                    lines.append(f"| {drafter} | {label} | {n} | {c['tokens_per_step']:.2f} | {c['accepted']}/{c['drafted']} | "
                                 f"{drafting} | {speed} |")
    if oracle:
        r = copy_oracle(recorded, cost, config.copy_depth, config.copy_ngram)
        parts = [("-", r)] + ([(w, c) for w, c in r["by_workload"].items()] if by_workload else [])
        for label, c in parts:
            lines.append(f"| copy oracle | {label} | {config.copy_depth} | {c['tokens_per_step']:.2f} | "
                         f"{c['accepted']}/{c['drafted']} | - | {c['est_speedup']:.3f}x |")
    return "\n".join(lines + (prompt_lines if by_prompt else []))
