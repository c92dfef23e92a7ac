"""aded-edge: lossless ADED speculative decoding for GGUF models on llama.cpp."""
from .config import DraftConfig

__version__ = "0.1.0"
__all__ = ["AdedLlama", "DraftConfig", "__version__"]


def __getattr__(name):
    # AdedLlama pulls in llama_cpp (a native library); import it only when asked for
    if name == "AdedLlama":
        from .llama import AdedLlama
        return AdedLlama
    raise AttributeError(name)
