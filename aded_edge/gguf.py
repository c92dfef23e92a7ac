"""Read a GGUF header without llama.cpp: validate the file before loading it (clear errors for a
missing, foreign or truncated file) and show its metadata."""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

MAGIC = b"GGUF"
# ggml type id -> (elements per block, bytes per block); unknown types skip the size check
GGML_BLOCKS = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 36),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110),
    22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8),
    29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17),
}
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
              11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
              17: "Q5_K_M", 18: "Q6_K", 30: "IQ4_XS", 32: "BF16"}
MAX_STRING = 1 << 30     # a longer metadata string means a corrupt header
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


class GGUFError(ValueError):
    """The file is not a usable GGUF model."""


@dataclass
class GGUFInfo:
    path: str
    version: int
    n_tensors: int
    metadata: dict = field(repr=False)   # key -> value; long arrays are kept as their length only
    n_params: int
    data_end: int                        # byte offset the tensor data must reach
    file_size: int

    def get(self, key, default=None):
        return self.metadata.get(key, default)

    @property
    def architecture(self) -> str:
        return str(self.get("general.architecture", "unknown"))

    @property
    def quantization(self) -> str:
        ft = self.get("general.file_type")
        return FILE_TYPES.get(ft, f"type {ft}") if ft is not None else "unknown"

    @property
    def context_length(self):
        return self.get(f"{self.architecture}.context_length")

    @property
    def vocab_size(self):
        return self.get("tokenizer.ggml.tokens")  # stored as the array's length


class _Reader:
    def __init__(self, f):
        self.f = f

    def take(self, fmt):
        size = struct.calcsize(fmt)
        b = self.f.read(size)
        if len(b) != size:
            raise EOFError
        return struct.unpack(fmt, b)[0]

    def string(self):
        n = self.take("<Q")
        if n > MAX_STRING:
            raise GGUFError("corrupt string length")
        b = self.f.read(n)
        if len(b) != n:
            raise EOFError
        return b.decode("utf-8", errors="replace")

    def skip_strings(self, n):
        """Step over n strings without decoding them (Qwen2.5's header with its 151,936 tokens and
        their merges: 0.06 s, against 0.19 s decoding each)."""
        read, seek, length = self.f.read, self.f.seek, struct.Struct("<Q").unpack
        for _ in range(n):
            b = read(8)
            if len(b) != 8:
                raise EOFError
            size = length(b)[0]
            if size > MAX_STRING:
                raise GGUFError("corrupt string length")
            seek(size, os.SEEK_CUR)

    def value(self, vtype):
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype == 8:
            return self.string()
        if vtype == 9:
            etype, n = self.take("<I"), self.take("<Q")
            if n > 1 << 32:
                raise GGUFError("corrupt array length")
            if etype in _SCALARS and n > 64:  # skip long numeric arrays, keep their length
                self.f.seek(n * struct.calcsize(_SCALARS[etype]), os.SEEK_CUR)
                return n
            if etype == 8 and n > 64:         # and long string arrays (a vocabulary, its merges)
                self.skip_strings(n)
                return n
            items = [self.value(etype) for _ in range(n)]
            return n if n > 64 else items
        raise GGUFError(f"unknown metadata value type {vtype}")


def read_gguf(path) -> GGUFInfo:
    """Parse and validate a GGUF file's header; raises GGUFError with a one-line reason."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise GGUFError(f"model file not found: {path}")
    if os.path.isdir(path):
        raise GGUFError(f"model path is a directory, not a GGUF file: {path}")
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            if f.read(4) != MAGIC:
                raise GGUFError(f"not a GGUF model file (bad magic): {path}")
            r = _Reader(f)
            version = r.take("<I")
            if version not in (2, 3):
                raise GGUFError(f"unsupported GGUF version {version}: {path}")
            n_tensors, n_kv = r.take("<Q"), r.take("<Q")
            if n_tensors > 1 << 20 or n_kv > 1 << 20:
                raise GGUFError(f"corrupt GGUF header (counts out of range): {path}")
            meta = {}
            for _ in range(n_kv):
                key = r.string()
                meta[key] = r.value(r.take("<I"))
            align = int(meta.get("general.alignment", 32))
            end, n_params = 0, 0
            for _ in range(n_tensors):
                r.string()
                n_dims = r.take("<I")
                if n_dims > 8:
                    raise GGUFError(f"corrupt tensor info: {path}")
                n_el = 1
                for _ in range(n_dims):
                    n_el *= r.take("<Q")
                ttype, offset = r.take("<I"), r.take("<Q")
                n_params += n_el
                block, nbytes = GGML_BLOCKS.get(ttype, (1, 0))
                end = max(end, offset + n_el // block * nbytes)
            data_start = (f.tell() + align - 1) // align * align
    except EOFError:
        raise GGUFError(f"truncated GGUF file (header cut short): {path}") from None
    except OSError as e:
        raise GGUFError(f"cannot read model file {path}: {e.strerror}") from None
    info = GGUFInfo(path, version, n_tensors, meta, n_params, data_start + end, size)
    if size < info.data_end:
        raise GGUFError(f"truncated GGUF file: {path} has {size} bytes, its tensors need {info.data_end}")
    return info
