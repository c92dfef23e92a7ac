"""aded-edge: lossless ADED speculative decoding for GGUF models on llama.cpp."""
import hashlib
from pathlib import Path

from .config import DraftConfig

KERNEL_FILES = ("trigram.py", "draft.py", "budget.py")   # the modules with Numba kernels (cache=True)


def drop_stale_kernels(root: Path = Path(__file__).parent) -> bool:
    """Numba's on-disk cache checks only the file that defines a kernel, but draft.py and budget.py
    call kernels of trigram.py, compiled into their own machine code: after a change to one kernel
    file the others' cached code would be stale. One stamp covers all of them; when it changes, the
    package's cached kernels are removed (they recompile once). Returns True when it removed them.
    A read-only install caches elsewhere and is only ever replaced whole, so errors are ignored."""
    digest = hashlib.sha1(b"".join((root / name).read_bytes() for name in KERNEL_FILES)).hexdigest()
    cache, stamp = root / "__pycache__", root / "__pycache__" / "aded-kernels.stamp"
    try:
        if stamp.read_text() == digest:
            return False
    except OSError:
        pass                       # no stamp yet: nothing cached can be trusted
    try:
        for f in cache.glob("*.nb[ic]"):
            f.unlink()
        cache.mkdir(exist_ok=True)
        stamp.write_text(digest)
        return True
    except OSError:
        return False


drop_stale_kernels()

__version__ = "0.1.0"
__all__ = ["AdedLlama", "DraftConfig", "__version__"]


def __getattr__(name):
    # AdedLlama pulls in llama_cpp (a native library); import it only when asked for
    if name == "AdedLlama":
        from .llama import AdedLlama
        return AdedLlama
    raise AttributeError(name)
