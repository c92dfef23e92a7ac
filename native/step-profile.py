"""Where a decoding step's time goes: plain ms/token against aded's, and aded's time per step in
each part of its loop (wrapped by name, so any version of aded_edge on PYTHONPATH can be timed).
Used on the H100 (README's GPU section); learning that runs during the next decode is counted
inside _decode there. Greedy, 128 tokens, bench prompts of seed 0, plain and aded in one process.

    .venv/bin/python native/step-profile.py [-ngl N] [--model NAME_OR_PATH] [--workloads code,chat] [--prompts 4]
"""
import argparse
import os
import time
from collections import defaultdict

import llama_cpp
from aded_edge import bench, budget, draft, models, trigram
from aded_edge import llama as L

SECONDS, CALLS = defaultdict(float), defaultdict(int)


def wrap(owner, name, key=None):
    f = getattr(owner, name, None)
    if f is None:   # a part this version does not have
        return
    key = key or name

    def timed(*a, **k):
        t = time.perf_counter()
        r = f(*a, **k)
        SECONDS[key] += time.perf_counter() - t
        CALLS[key] += 1
        return r
    setattr(owner, name, timed)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-ngl", type=int, default=0, help="model layers on the GPU (-1 = all)")
    ap.add_argument("--model", default=models.DEFAULT_MODEL)
    ap.add_argument("--workloads", default="code,chat,math,grounded")
    ap.add_argument("--prompts", type=int, default=4, help="prompts per workload")
    args = ap.parse_args()
    for name in ("draft_step", "walk_tree", "rejected_choices"):
        wrap(L, name)
    for name in ("_verify", "_decode", "_commit", "_argmax_rows"):
        wrap(L.AdedLlama, name)
    wrap(trigram.TrigramMatrix, "update")
    wrap(trigram.TrigramMatrix, "update_grams")
    for name in ("track", "learn", "settle"):
        wrap(budget.ReachCalibrator, name, "calibrator." + name)
    wrap(budget.CostModel, "observe", "cost.observe")
    wrap(draft.ContextLookup, "extend", "lookup.extend")
    path = str(models.resolve(args.model))
    threads = min(os.cpu_count() or 1, 8)
    common = dict(n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False, n_gpu_layers=args.ngl)
    aded, plain = L.AdedLlama(path, persist=False, **common), llama_cpp.Llama(path, **common)
    eog = aded.token_is_eog
    prompts = [aded.chat_tokens(p["messages"]) for p in bench.load_prompts(args.workloads.split(","), args.prompts, 0)]
    bench.timed_generate(aded, prompts[0], 16, eog), bench.timed_generate(plain, prompts[0], 16, eog)   # warm-up
    SECONDS.clear(), CALLS.clear()
    plain_s = plain_n = aded_s = aded_n = steps = 0   # decoding only: after the first token
    for p in prompts:
        r = bench.timed_generate(plain, p, 128, eog)
        plain_s, plain_n = plain_s + r.total_s - r.first_s, plain_n + len(r.tokens) - 1
        r = bench.timed_generate(aded, p, 128, eog)
        aded_s, aded_n, steps = aded_s + r.total_s - r.first_s, aded_n + len(r.tokens) - 1, steps + aded.last_stats.steps
    print(f"{path}, n_gpu_layers={args.ngl}, {L.system_info()[:100]}")
    print(f"plain {1e3 * plain_s / plain_n:.3f} ms/token; aded {1e3 * aded_s / aded_n:.3f} ms/token, "
          f"{aded_n / steps:.2f} tokens/step, {1e3 * aded_s / steps:.3f} ms/step over {steps} steps, "
          f"verify batch {aded._pad or 'as the tree'}; per step (update: the prompt's too):")
    for key in sorted(SECONDS, key=lambda k: -SECONDS[k]):
        print(f"  {key:22s} {1e3 * SECONDS[key] / steps:7.3f} ms/step {1e6 * SECONDS[key] / CALLS[key]:9.1f} us/call"
              f" {CALLS[key]:6d} calls")


if __name__ == "__main__":
    main()
