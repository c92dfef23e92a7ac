"""Model-free replay: recorded plain greedy output through the drafter, no model at all.

For each recorded generation the replay drafts exactly as decoding would (same matrix adaptation,
same tree), "verifies" against the recorded tokens, accepts along the tree, and asserts that the
replayed output equals the recording. It reports tokens per verification step and drafting time
per token for each tree size: the hardware-independent half of the benchmark.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .accept import walk_tree
from .config import DraftConfig
from .draft import build_draft
from .trigram import TrigramMatrix


def load_recorded(path) -> list[dict]:
    rows = [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]
    for r in rows:
        if not isinstance(r.get("prompt"), list) or not isinstance(r.get("output"), list):
            raise ValueError(f"{path}: every row needs 'prompt' and 'output' token lists (bench's recorded.jsonl)")
    return rows


def replay(recorded: list[dict], n_vocab: int, config: DraftConfig, nodes: int) -> dict:
    """Replay every recording with trees of `nodes` nodes (one matrix shared across recordings,
    as in one decoding process). Returns tokens, steps, drafted and accepted counts, draft time."""
    matrix = TrigramMatrix(n_vocab, top_k=config.top_k, increment=config.adapt_increment, cap=config.adapt_cap)
    build_draft(matrix, [0, 0], config)  # JIT warm-up outside the timing
    tokens = steps = drafted = accepted = 0
    draft_s = 0.0
    for rec in recorded:
        prompt, truth = rec["prompt"], rec["output"]
        matrix.update(prompt)
        history = list(prompt) + truth[:1]   # the first token comes from the prompt pass
        out = truth[:1]
        while len(out) < len(truth):
            t = time.perf_counter()
            tree = build_draft(matrix, history[-2:], config, max_nodes=nodes)
            draft_s += time.perf_counter() - t
            upcoming = iter(truth[len(out):])  # "the model" chooses the recorded tokens
            acc, emitted = walk_tree(tree, lambda row: row, lambda _row: next(upcoming, -1))
            emitted = [t for t in emitted if t >= 0]
            start = len(history)
            history.extend(emitted)
            out.extend(emitted)
            matrix.update(history[start - 2:], start=2)
            steps += 1
            drafted += len(tree)
            accepted += len(acc)
        if out != truth:
            raise AssertionError("replay did not reproduce the recorded output")
        tokens += len(truth) - 1
    return dict(nodes=nodes, tokens=tokens, steps=steps, drafted=drafted, accepted=accepted,
                tokens_per_step=tokens / max(steps, 1), draft_us_per_token=1e6 * draft_s / max(tokens, 1))


def simulate(path, n_vocab: int | None = None, sizes=(1, 2, 4, 8, 16, 32, 64), config: DraftConfig | None = None) -> str:
    recorded = load_recorded(path)
    n_vocab = n_vocab or max(int(r.get("n_vocab", 0)) for r in recorded) or None
    if not n_vocab:
        raise ValueError(f"{path}: no n_vocab recorded; pass the model's vocabulary size")
    config = config or DraftConfig()
    lines = [f"replay of {len(recorded)} recorded generations ({sum(len(r['output']) for r in recorded)} tokens), "
             f"model-free; every replay reproduced its recording",
             "| drafter | nodes | tokens/step | accepted/drafted | draft us/token |", "|---|---|---|---|---|"]
    for n in sizes:
        r = replay(recorded, n_vocab, config, n)
        lines.append(f"| aded MCTS | {n} | {r['tokens_per_step']:.2f} | {r['accepted']}/{r['drafted']} | "
                     f"{r['draft_us_per_token']:.1f} |")
    return "\n".join(lines)
