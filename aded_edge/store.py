"""Where a model's matrices live in the per-user cache, keyed by its vocabulary fingerprint:

    <cache>/matrices/<fingerprint>/corpus.npz     static matrix from `aded-edge matrix build`
    <cache>/matrices/<fingerprint>/adaptive.npz   adaptive weights carried between runs
    <cache>/matrices/<fingerprint>/corpus-tokens.npy   the corpus's tokens (benchmark peers)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import models


@dataclass(frozen=True)
class MatrixPaths:
    folder: Path     # one folder per vocabulary
    corpus: Path     # static corpus matrix
    adaptive: Path   # persisted adaptive part
    tokens: Path     # the corpus's token streams (for peers that count the same corpus)


def paths(fingerprint: str) -> MatrixPaths:
    if not fingerprint or not fingerprint.isalnum():
        raise ValueError("a vocabulary fingerprint is a non-empty hex string")
    folder = models.cache_dir() / "matrices" / fingerprint[:16]
    return MatrixPaths(folder, folder / "corpus.npz", folder / "adaptive.npz", folder / "corpus-tokens.npy")
