"""llama.cpp's own speculative tools as benchmark peers (built by `make peers`, native/peers.sh).

The binaries are compiled from the llama.cpp that llama-cpp-python 0.3.36 vendors, with the
CPU flags of native/build.sh, so a peer differs from aded-edge in its algorithm and in running
as a C++ program, not in the kernels. This module runs one and parses what it prints; it does
not import llama_cpp.

Tools (PEER_TOOLS):
  llama-completion          plain generation, the same-binary baseline (`llama-cli` is the
                            chat UI in this llama.cpp and is not built)
  llama-lookup              prompt lookup decoding: n-grams (1 to 4 tokens) of the prompt and
                            output draft up to n_draft tokens (tool default 3)
  llama-speculative         a draft model drafts up to n_draft tokens (tool default 3)
  llama-speculative-simple  llama.cpp's common speculator: a draft model, or `--spec-type
                            ngram-simple|ngram-map-k|ngram-mod|...` through spec_type

Timings: the speculative tools print "decoded N tokens in X seconds" (N generated tokens
including the first, X from the end of prompt evaluation to the last token, drafting and
sampling included); llama-completion prints only llama_perf lines, so its decode time is
"eval time" (one-token decodes) plus "sampling time". `decode_tok_s` is (tokens - 1) / decode
seconds for every tool, the definition of `bench.Timed.decode_tok_s`; `tool_tok_s` is the speed
the tool itself prints (N / X, or llama_perf's eval tokens per second).
"""
from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PLAIN_TOOL = "llama-completion"
PEER_TOOLS = ("llama-completion", "llama-lookup", "llama-speculative", "llama-speculative-simple")
SPECULATIVE_TOOLS = ("llama-lookup", "llama-speculative", "llama-speculative-simple")
DEFAULT_N_DRAFT = {"llama-speculative": 16}   # others: the tool's own default (3)
BIN_ENV = "ADED_EDGE_PEERS"


class PeerError(RuntimeError):
    """A peer tool is missing, failed, or printed something this module cannot read."""


def default_bin_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "native" / "build" / "peers" / "bin"


def _bin_dir(root=None) -> Path:
    root = Path(root or os.environ.get(BIN_ENV) or default_bin_dir()).expanduser()
    return root / "bin" if (root / "bin").is_dir() else root


def find_binaries(root=None) -> dict[str, Path]:
    """The peer tools present under root ($ADED_EDGE_PEERS, else native/build/peers/bin; a
    folder holding bin/ is accepted too): {tool name: path}, only executables that exist."""
    d = _bin_dir(root)
    found = {}
    for name in PEER_TOOLS:
        p = d / name
        if p.is_file() and os.access(p, os.X_OK):
            found[name] = p
    return found


def build_command(tool: str, binary, model_path, prompt_file, n_predict: int, threads: int, n_ctx: int,
                  draft_model=None, n_draft: int | None = None, spec_type: str | None = None,
                  n_gpu_layers: int | None = None, flash_attn: str = "off", extra_args=()) -> list[str]:
    """The argv of one greedy run. The prompt comes from a file (-f) with escapes off, so it is
    tokenized byte for byte as given, special tokens (<|im_start|> ...) parsed as special, with
    the model's BOS added when its GGUF asks for one, exactly as every tool here tokenizes.
    flash_attn "off" matches llama-cpp-python's default (the tools' own default is "auto")."""
    if tool not in PEER_TOOLS:
        raise PeerError(f"unknown peer tool {tool!r}; known: {', '.join(PEER_TOOLS)}")
    cmd = [str(binary), "-m", str(model_path), "-f", str(prompt_file), "--no-escape",
           "-t", str(threads), "-tb", str(threads), "-c", str(n_ctx), "-fa", flash_attn,
           "--temp", "0", "--top-k", "1", "--seed", "0"]
    if tool == PLAIN_TOOL:
        # no chat template (the prompt is already formatted), no prompt echo, special tokens shown
        cmd += ["-n", str(n_predict), "-no-cnv", "--no-display-prompt", "-sp"]
    else:
        # these stop once they have generated MORE than -n tokens (at least -n + 1)
        cmd += ["-n", str(max(n_predict - 1, 1))]
        n_draft = n_draft if n_draft is not None else DEFAULT_N_DRAFT.get(tool)
        if n_draft is not None:
            cmd += ["--spec-draft-n-max", str(n_draft)]
    if tool == "llama-speculative" and draft_model is None:
        raise PeerError("llama-speculative needs a draft model (draft_model=...)")
    if draft_model is not None:
        if tool not in ("llama-speculative", "llama-speculative-simple"):
            raise PeerError(f"{tool} takes no draft model")
        cmd += ["-md", str(draft_model)]
    if tool == "llama-speculative-simple" and spec_type is None:
        if draft_model is None:
            raise PeerError("llama-speculative-simple needs a draft model or a spec_type (e.g. ngram-simple)")
        spec_type = "draft-simple"   # a draft model alone enables nothing in this tool
    if spec_type is not None:
        if tool != "llama-speculative-simple":
            raise PeerError(f"{tool} takes no --spec-type (llama-speculative-simple does)")
        cmd += ["--spec-type", spec_type]
    if n_gpu_layers is not None:
        cmd += ["-ngl", str(n_gpu_layers)]
        if draft_model is not None:
            cmd += ["-ngld", str(n_gpu_layers)]
    return cmd + [str(a) for a in extra_args]


_NUM = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf)"
# common log lines may start with a timestamp and a level letter ("0.27.593.982 I "), the default here
_P = r"^(?:[\d.]+ [A-Z] )?"
_RE = {
    "decoded": re.compile(r"decoded\s+(\d+) tokens in\s+" + _NUM + r" seconds, speed:\s+" + _NUM + r" t/s"),
    "encoded": re.compile(r"encoded\s+(\d+) tokens in\s+" + _NUM + r" seconds, speed:\s+" + _NUM + r" t/s"),
    "n_draft": re.compile(_P + r"\s*n_draft\s*=\s*(\d+)", re.M),
    "n_predict": re.compile(_P + r"\s*n_predict\s*=\s*(\d+)", re.M),
    "n_drafted": re.compile(_P + r"\s*n_drafted\s*=\s*(\d+)", re.M),
    "n_accept": re.compile(_P + r"\s*n_accept\s*=\s*(\d+)", re.M),
    "accept": re.compile(_P + r"\s*accept\s*=\s*" + _NUM + "%", re.M),
}
# llama_perf lines: "<func>: prompt eval time = X ms / N tokens (...)", "<func>: eval time = X ms / N runs (...)"
_PERF = re.compile(_P + r"(\w+):\s+(prompt eval|eval|sampling|load|total) time\s*=\s*" + _NUM
                   + r" ms(?:\s*/\s*(\d+) (tokens|runs))?", re.M)
_END_OF_TEXT = " [end of text]\n"


def _f(s: str) -> float:
    return float(s)


def _perf_blocks(text: str) -> dict[str, dict]:
    """{function name: {"eval_ms", "eval_runs", "prompt_ms", "prompt_tokens", "sampling_ms", ...}};
    the target model's block is common_perf_print's, a draft model's is llama_perf_context_print's."""
    blocks: dict[str, dict] = {}
    for m in _PERF.finditer(text):
        func, kind, ms, n = m.group(1), m.group(2), _f(m.group(3)), m.group(4)
        b = blocks.setdefault(func, {})
        key = {"prompt eval": "prompt", "eval": "eval"}.get(kind, kind)
        b[f"{key}_ms"] = ms
        if n is not None:
            b[f"{key}_{'runs' if kind == 'eval' else 'tokens'}"] = int(n)
    return blocks


def generated_text(tool: str, stdout: str, prompt: str | None = None) -> str | None:
    """The generated text from a tool's stdout, or None where it cannot be told apart from the
    prompt echo. llama-completion (run with --no-display-prompt) prints only the output, then
    " [end of text]" at an end-of-generation token, then a blank line; the speculative tools
    print two newlines, the prompt's tokens, the output and four newlines."""
    if tool == PLAIN_TOOL:
        out = stdout[:-2] if stdout.endswith("\n\n") else stdout
        return out[:-len(_END_OF_TEXT)] if out.endswith(_END_OF_TEXT) else out
    if prompt is None:
        return None
    i = stdout.find(prompt)
    if i < 0:
        return None
    out = stdout[i + len(prompt):]
    return out[:-4] if out.endswith("\n\n\n\n") else out


def parse_output(tool: str, text: str, stdout: str | None = None, prompt: str | None = None) -> dict:
    """Timings and draft statistics of one run, from its stderr (`text`; stdout and stderr
    together work too) and, for the generated text, its stdout. Pure; raises PeerError when the
    timing lines are missing. Keys: tokens, decode_s, decode_tok_s, tool_tok_s, prompt_tokens,
    prompt_s, n_draft, n_drafted, n_accept, accept_rate (fraction, nan without drafts),
    tokens_per_step (target decodes), text, perf (all llama_perf blocks)."""
    if tool not in PEER_TOOLS:
        raise PeerError(f"unknown peer tool {tool!r}; known: {', '.join(PEER_TOOLS)}")
    perf = _perf_blocks(text)
    target = perf.get("common_perf_print", {})
    nan = float("nan")
    r = dict(tool=tool, n_draft=None, n_drafted=0, n_accept=0, accept_rate=nan, perf=perf)
    if tool == PLAIN_TOOL:
        if "eval_ms" not in target or "eval_runs" not in target:
            raise PeerError(f"{tool}: no 'common_perf_print: eval time = ... ms / N runs' line in its output")
        runs = target["eval_runs"]
        decode_s = (target["eval_ms"] + target.get("sampling_ms", 0.0)) / 1e3
        r.update(tokens=runs + 1, decode_s=decode_s,
                 decode_tok_s=runs / decode_s if decode_s > 0 else nan,
                 tool_tok_s=runs / (target["eval_ms"] / 1e3) if target["eval_ms"] > 0 else nan,
                 prompt_tokens=target.get("prompt_tokens"),
                 prompt_s=target["prompt_ms"] / 1e3 if "prompt_ms" in target else None,
                 tokens_per_step=1.0)
    else:
        m = _RE["decoded"].search(text)
        if not m:
            raise PeerError(f"{tool}: no 'decoded N tokens in X seconds' line in its output")
        n, decode_s, speed = int(m.group(1)), _f(m.group(2)), _f(m.group(3))
        r.update(tokens=n, decode_s=decode_s, tool_tok_s=speed,
                 decode_tok_s=(n - 1) / decode_s if decode_s > 0 else nan)
        e = _RE["encoded"].search(text)
        r.update(prompt_tokens=int(e.group(1)) if e else None, prompt_s=_f(e.group(2)) if e else None)
        for k in ("n_draft", "n_drafted", "n_accept"):
            mm = _RE[k].search(text)
            if mm:
                r[k] = int(mm.group(1))
        if r["n_drafted"]:
            r["accept_rate"] = r["n_accept"] / r["n_drafted"]
        # target decode calls: one-token decodes (eval runs) plus multi-token verify batches,
        # which llama_perf counts as prompt tokens; not separable, so steps are derived:
        # every step emits its accepted drafts plus one token of the target.
        steps = n - r["n_accept"]
        r["tokens_per_step"] = n / steps if steps > 0 else nan
    r["text"] = generated_text(tool, stdout, prompt) if stdout is not None else None
    return r


def _tail(s: str, n: int = 3) -> str:
    lines = [l for l in s.strip().splitlines() if l.strip()]
    return " | ".join(lines[-n:])[-400:]


def run_peer(tool: str, model_path, prompt_text: str, n_predict: int, threads: int, n_ctx: int = 4096,
             extra_args=(), draft_model=None, timeout: float = 600, n_draft: int | None = None,
             spec_type: str | None = None, n_gpu_layers: int | None = None, flash_attn: str = "off",
             root=None) -> dict:
    """Run one peer tool greedily on an already formatted prompt and return parse_output's dict
    plus tool, cmd (a shell-quoted string), wall_s (whole process, model load included),
    returncode. The prompt is taken literally (no chat template, escapes off, special tokens
    parsed). llama-completion generates exactly n_predict tokens unless it ends earlier; the
    speculative tools stop after at least n_predict and at most n_predict + n_draft tokens.
    n_draft: draft tokens per step (llama-speculative: 16, others: the tool's default, 3)."""
    binaries = find_binaries(root)
    if tool not in PEER_TOOLS:
        raise PeerError(f"unknown peer tool {tool!r}; known: {', '.join(PEER_TOOLS)}")
    if tool not in binaries:
        raise PeerError(f"{tool} not found in {_bin_dir(root)}; build it with `make peers` or set ${BIN_ENV}")
    for p in (model_path, draft_model):
        if p is not None and not Path(p).is_file():
            raise PeerError(f"model file not found: {p}")
    with tempfile.TemporaryDirectory(prefix="aded-peer-") as tmp:
        pf = Path(tmp) / "prompt.txt"
        # -f drops one trailing newline from the file; add one so the prompt survives intact
        pf.write_bytes(prompt_text.encode("utf-8") + b"\n")
        cmd = build_command(tool, binaries[tool], model_path, pf, n_predict, threads, n_ctx,
                            draft_model=draft_model, n_draft=n_draft, spec_type=spec_type,
                            n_gpu_layers=n_gpu_layers, flash_attn=flash_attn, extra_args=extra_args)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                                  env={**os.environ, "LLAMA_ARG_LOG_COLORS": "off"})
        except subprocess.TimeoutExpired:
            raise PeerError(f"{tool} timed out after {timeout:g} s") from None
        except OSError as e:
            raise PeerError(f"{tool} could not start: {e}") from None
        wall = time.perf_counter() - t0
    out = proc.stdout.decode("utf-8", errors="replace")
    err = proc.stderr.decode("utf-8", errors="replace")
    if proc.returncode != 0:
        raise PeerError(f"{tool} exited with status {proc.returncode}: {_tail(err or out)}")
    try:
        r = parse_output(tool, err, stdout=out, prompt=prompt_text)
    except PeerError as e:
        raise PeerError(f"{e} (last lines: {_tail(err)})") from None
    r.update(tool=tool, cmd=shlex.join(cmd), wall_s=wall, returncode=proc.returncode)
    if math.isnan(r["decode_tok_s"]):
        raise PeerError(f"{tool}: no decode time in its output (tokens={r['tokens']})")
    return r


def main(argv=None) -> int:
    """python -m aded_edge.peers TOOL MODEL PROMPT_FILE [-n N] [-t T] [-c N_CTX] [--draft-model M] [--n-draft K]:
    one run, its parsed result as JSON on stdout (the prompt file is read as is, no chat template)."""
    import argparse
    import json
    ap = argparse.ArgumentParser(prog="python -m aded_edge.peers", description=main.__doc__)
    ap.add_argument("tool", choices=PEER_TOOLS)
    ap.add_argument("model")
    ap.add_argument("prompt_file")
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-t", type=int, default=os.cpu_count() or 1)
    ap.add_argument("-c", type=int, default=4096)
    ap.add_argument("--draft-model")
    ap.add_argument("--n-draft", type=int)
    ap.add_argument("--spec-type")
    a = ap.parse_args(argv)
    try:
        r = run_peer(a.tool, a.model, Path(a.prompt_file).read_text(encoding="utf-8"), a.n, a.t, a.c,
                     draft_model=a.draft_model, n_draft=a.n_draft, spec_type=a.spec_type)
    except PeerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    r.pop("perf")
    print(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
