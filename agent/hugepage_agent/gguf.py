"""Reading a GGUF model's header: the metadata and the tensor table, enough
to project what a llama.cpp server will allocate for it (weights, KV cache)
and which weights its CPU backend repacks. Pure parsing over a binary
stream; nothing here loads tensor data.

The format: magic "GGUF", version (2 or 3), tensor count, metadata count,
the metadata (key, type, value), the tensor infos (name, dims, type, offset),
then the data, aligned to `general.alignment` (32 by default).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

MAX_STRING = 1 << 24
MAX_ARRAY = 1 << 26
MAX_COUNT = 1 << 24

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
T_STRING, T_ARRAY = 8, 9

# ggml types: (block size, bytes per block); what the repack types are on x86
TYPE_SIZES = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176),
    14: (256, 210), 15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98),
    19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1),
    25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2), 34: (256, 54),
    35: (256, 66), 39: (32, 17),
}
TYPE_NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 8: "Q8_0", 10: "Q2_K", 12: "Q4_K", 13: "Q5_K",
              14: "Q6_K", 20: "IQ4_NL", 30: "BF16", 39: "MXFP4"}
# Types llama.cpp's CPU backend repacks into its own buffers on x86 with AVX2
# (ggml-cpu/repack.cpp), for 2-D weights whose rows come in groups of 8.
REPACK_TYPES = frozenset({2, 8, 10, 12, 13, 14, 20, 39})
CACHE_TYPE_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32,
                    "q4_1": 20 / 32, "iq4_nl": 18 / 32, "q5_0": 22 / 32, "q5_1": 24 / 32}


class GGUFError(ValueError):
    pass


@dataclass(frozen=True)
class Tensor:
    name: str
    dims: tuple[int, ...]
    type: int
    offset: int
    nbytes: int

    @property
    def repacked(self) -> bool:
        """Whether the CPU backend copies this weight into a repack buffer at load
        (2-D matrix weights of a repack type; embeddings are read by row instead)."""
        return (self.type in REPACK_TYPES and len(self.dims) == 2 and self.dims[1] % 8 == 0
                and not self.name.startswith("token_embd"))


@dataclass(frozen=True)
class Model:
    metadata: dict[str, object]
    tensors: tuple[Tensor, ...]
    data_offset: int

    @property
    def arch(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def get_int(self, key: str, default: int = 0) -> int:
        v = self.metadata.get(f"{self.arch}.{key}", default)
        if isinstance(v, list):  # per-layer values: the largest
            v = max((int(x) for x in v), default=default)
        return int(v) if isinstance(v, (int, float)) else default

    @property
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def repacked_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors if t.repacked)

    @property
    def largest_repacked(self) -> int:
        return max((t.nbytes for t in self.tensors if t.repacked), default=0)

    def kv_bytes_per_cell(self, type_k: str = "f16", type_v: str = "f16") -> int:
        """Bytes one KV cache cell takes over all layers."""
        layers = self.get_int("block_count")
        embd = self.get_int("embedding_length")
        heads = self.get_int("attention.head_count", 1) or 1
        kv_heads = self.get_int("attention.head_count_kv", heads) or heads
        head_k = self.get_int("attention.key_length", embd // heads)
        head_v = self.get_int("attention.value_length", embd // heads)
        per_layer = (head_k * kv_heads * CACHE_TYPE_BYTES.get(type_k, 2.0)
                     + head_v * kv_heads * CACHE_TYPE_BYTES.get(type_v, 2.0))
        return int(layers * per_layer)


class _Reader:
    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.pos = 0

    def take(self, n: int) -> bytes:
        b = self.f.read(n)
        if len(b) != n:
            raise GGUFError(f"truncated at byte {self.pos}")
        self.pos += n
        return b

    def scalar(self, fmt: str) -> object:
        v: object = struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]
        return v

    def u32(self) -> int:
        n: int = struct.unpack("<I", self.take(4))[0]
        return n

    def u64(self) -> int:
        n: int = struct.unpack("<Q", self.take(8))[0]
        return n

    def string(self) -> str:
        n = self.u64()
        if n > MAX_STRING:
            raise GGUFError(f"a string of {n} bytes at byte {self.pos}")
        return self.take(n).decode("utf-8", errors="replace")

    def value(self, vtype: int, keep: bool = True) -> object:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == T_STRING:
            return self.string()
        if vtype == T_ARRAY:
            itype, n = self.u32(), self.u64()
            if n > MAX_ARRAY:
                raise GGUFError(f"an array of {n} items at byte {self.pos}")
            if itype in _SCALARS and not keep:  # skip a large array (vocabulary scores)
                self.take(n * struct.calcsize(_SCALARS[itype]))
                return None
            items = [self.value(itype, keep) for _ in range(n)]
            return items if keep else None
        raise GGUFError(f"unknown value type {vtype} at byte {self.pos}")


def read(f: BinaryIO) -> Model:
    r = _Reader(f)
    if r.take(4) != b"GGUF":
        raise GGUFError("not a GGUF file (no GGUF magic)")
    version = r.u32()
    if version not in (2, 3):
        raise GGUFError(f"GGUF version {version} is not supported")
    n_tensors, n_kv = r.u64(), r.u64()
    if n_tensors > MAX_COUNT or n_kv > MAX_COUNT:
        raise GGUFError("implausible tensor or metadata count")
    meta: dict[str, object] = {}
    for _ in range(n_kv):
        key = r.string()
        vtype = r.u32()
        # vocabularies are large and not needed: skipped, not kept
        keep = not key.startswith("tokenizer.")
        meta[key] = r.value(vtype, keep)
    infos = []
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.u32()
        if n_dims > 8:
            raise GGUFError(f"tensor {name}: {n_dims} dimensions")
        dims = tuple(r.u64() for _ in range(n_dims))
        ttype = r.u32()
        offset = r.u64()
        infos.append((name, dims, ttype, offset))
    align_v = meta.get("general.alignment", 32)
    align = int(align_v) if isinstance(align_v, int) and align_v > 0 else 32
    data_offset = (r.pos + align - 1) // align * align
    tensors = []
    for name, dims, ttype, offset in infos:
        elems = 1
        for d in dims:
            elems *= d
        block, size = TYPE_SIZES.get(ttype, (0, 0))
        if block == 0:
            raise GGUFError(f"tensor {name}: unknown ggml type {ttype}")
        tensors.append(Tensor(name, dims, ttype, offset, elems // block * size))
    return Model(meta, tuple(tensors), data_offset)


def read_path(path: str) -> Model:
    try:
        with open(path, "rb", buffering=1 << 20) as f:
            return read(f)
    except OSError as e:
        raise GGUFError(f"cannot read: {e.strerror or e}") from e
