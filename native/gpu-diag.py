"""Two measurements that decide how speculation pays on a backend (used on an H200 and H100s;
see docs/performance-log.md, GPU):

1. batch variance: how far the logits of one position move between a batch of 1 and the same
   position first in a batch of k tokens (0 on the CPU build; up to 2.7 logits on CUDA);
2. step breakdown: plain ms/token against aded's, and aded's decode time by batch size.

    .venv/bin/python native/gpu-diag.py [-ngl N] [--model NAME_OR_PATH]
"""
import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import llama_cpp  # noqa: E402
from aded_edge import llama as L, models  # noqa: E402
from test_lossless import PROMPTS, first_n  # noqa: E402


def batch_variance(path, ngl, ks=(2, 4, 8, 9, 16, 32, 64)):
    llm = llama_cpp.Llama(path, n_ctx=512, n_threads=min(os.cpu_count(), 4), logits_all=True, verbose=False,
                          n_gpu_layers=ngl)
    filler = [(7 + 31 * i) % llm.n_vocab() for i in range(max(ks))]
    worst = defaultdict(list)
    for text in PROMPTS:
        toks = llm.tokenize(text.encode(), add_bos=False, special=True)
        llm.reset(); llm.eval(toks[:-1]); llm.eval(toks[-1:])
        alone = llm.scores[len(toks) - 1].copy()
        for k in ks:
            llm.reset(); llm.eval(toks[:-1]); llm.eval(toks[-1:] + filler[:k - 1])
            worst[k].append(float(np.abs(llm.scores[len(toks) - 1] - alone).max()))
    print("largest |logit(batch of k) - logit(alone)| over", len(PROMPTS), "positions: "
          + ", ".join(f"k={k}: {max(v):.3f} (median {np.median(v):.3f})" for k, v in worst.items()))


def step_breakdown(path, ngl, n_prompts=8, n_tokens=128):
    common = dict(n_ctx=4096, n_threads=os.cpu_count(), n_threads_batch=os.cpu_count(), verbose=False,
                  n_gpu_layers=ngl)
    aded, plain = L.AdedLlama(path, persist=False, **common), llama_cpp.Llama(path, **common)
    by_size, decode = defaultdict(list), aded._decode

    def timed(batch, meanwhile=None):
        t = time.perf_counter()
        decode(batch, meanwhile)
        by_size[int(batch.n_tokens)].append(time.perf_counter() - t)
    aded._decode = timed
    prompts = [plain.tokenize(p.encode(), add_bos=False, special=True) for p in PROMPTS[:n_prompts]]

    def run(llm, prompt, n=n_tokens):
        return len(first_n(llm.generate(prompt, temp=0.0), n))
    run(aded, prompts[0], 16), run(plain, prompts[0], 16)   # warm-up
    by_size.clear()
    t = time.perf_counter(); n_plain = sum(run(plain, p) for p in prompts); t_plain = time.perf_counter() - t
    t, n_aded, steps = time.perf_counter(), 0, 0
    for p in prompts:
        n_aded += run(aded, p)
        steps += aded.last_stats.steps
    t_aded = time.perf_counter() - t
    print(f"plain {1e3 * t_plain / n_plain:.2f} ms/token; aded {1e3 * t_aded / n_aded:.2f} ms/token, "
          f"{n_aded / steps:.2f} tokens/step, verify batch {aded._pad or 'as the tree'}")
    print("aded decode ms by batch size (median, count): " + ", ".join(
        f"{k}: {1e3 * np.median(v):.2f} ({len(v)})" for k, v in sorted(by_size.items()) if len(v) >= 3))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-ngl", type=int, default=0, help="model layers on the GPU (-1 = all)")
    ap.add_argument("--model", default=models.DEFAULT_MODEL)
    args = ap.parse_args()
    path = str(models.resolve(args.model))
    print(f"{path}, n_gpu_layers={args.ngl}, {L.system_info()[:120]}")
    batch_variance(path, args.ngl)
    step_breakdown(path, args.ngl)
