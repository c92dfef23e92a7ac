"""Where a decoding step's time goes: plain ms/token against aded's, the time per token each
spends outside llama_decode (Python, sampling, bookkeeping: what drafting nothing still costs),
and aded's time per step in each part of its loop (wrapped by name, so any version of aded_edge
on PYTHONPATH can be timed). Used on the H100 (docs/performance-log.md, GPU); learning that runs
during the next decode is counted inside _decode there. Greedy, 128 tokens, bench prompts of seed 0,
plain and aded in one process.

    .venv/bin/python native/step-profile.py [-ngl N] [--model NAME_OR_PATH] [--workloads code,chat] [--prompts 4] [--no-parts]
"""
import argparse
import os
import time
from collections import defaultdict

import llama_cpp
from aded_edge import bench, budget, draft, models, trigram
from aded_edge import llama as L

SECONDS, CALLS = defaultdict(float), defaultdict(int)
DECODE = [0.0]   # seconds inside llama_decode, any caller


def time_decodes():
    """Count every llama_decode's time in DECODE, for plain llama-cpp-python and aded alike (on a
    CPU backend, where llama_decode returns when the work is done; a GPU's returns at launch)."""
    real = llama_cpp.llama_decode

    def decode(ctx, batch):
        t = time.perf_counter()
        rc = real(ctx, batch)
        DECODE[0] += time.perf_counter() - t
        return rc
    llama_cpp.llama_decode = llama_cpp.llama_cpp.llama_decode = decode


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
    ap.add_argument("--no-parts", action="store_true", help="time no parts (their timers add a few us a call "
                    "to aded's time outside llama_decode)")
    args = ap.parse_args()
    if not args.no_parts:
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
    time_decodes()
    path = str(models.resolve(args.model))
    threads = min(os.cpu_count() or 1, 8)
    common = dict(n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False, n_gpu_layers=args.ngl)
    aded, plain = L.AdedLlama(path, persist=False, **common), llama_cpp.Llama(path, **common)
    eog = aded.token_is_eog
    prompts = [aded.chat_tokens(p["messages"]) for p in bench.load_prompts(args.workloads.split(","), args.prompts, 0)]
    bench.timed_generate(aded, prompts[0], 16, eog), bench.timed_generate(plain, prompts[0], 16, eog)   # warm-up
    SECONDS.clear(), CALLS.clear()
    plain_s = plain_n = aded_s = aded_n = steps = plain_dec = aded_dec = 0   # decoding only: after the first token

    def decoding(llm, p):   # (seconds, tokens, seconds inside llama_decode) after the first token
        at_first = []
        r = bench.timed_generate(llm, p, 128, eog, on_first=lambda: at_first.append(DECODE[0]))
        return r.total_s - r.first_s, len(r.tokens) - 1, DECODE[0] - at_first[0]
    for p in prompts:
        s, n, d = decoding(plain, p)
        plain_s, plain_n, plain_dec = plain_s + s, plain_n + n, plain_dec + d
        s, n, d = decoding(aded, p)
        aded_s, aded_n, aded_dec, steps = aded_s + s, aded_n + n, aded_dec + d, steps + aded.last_stats.steps
    print(f"{path}, n_gpu_layers={args.ngl}, {L.system_info()[:100]}")
    print(f"plain {1e3 * plain_s / plain_n:.3f} ms/token ({1e3 * (plain_s - plain_dec) / plain_n:.3f} outside "
          f"llama_decode); aded {1e3 * aded_s / aded_n:.3f} ms/token ({1e3 * (aded_s - aded_dec) / aded_n:.3f} outside), "
          f"{aded_n / steps:.2f} tokens/step, {1e3 * aded_s / steps:.3f} ms/step over {steps} steps, "
          f"verify batch {aded._pad or 'as the tree'}; per step (update: the prompt's too):")
    for key in sorted(SECONDS, key=lambda k: -SECONDS[k]):
        print(f"  {key:22s} {1e3 * SECONDS[key] / steps:7.3f} ms/step {1e6 * SECONDS[key] / CALLS[key]:9.1f} us/call"
              f" {CALLS[key]:6d} calls")


if __name__ == "__main__":
    main()
