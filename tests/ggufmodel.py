"""Test models: llama-architecture GGUF files with random weights, written with
the PyPI `gguf` package, deterministic from a seed, with a small generated
SentencePiece-style vocabulary (byte fallback tokens plus some pieces).

  python -m tests.ggufmodel OUT.gguf --layers 2 --embd 256 --ff 688   (tens of MiB)
  python -m tests.ggufmodel OUT.gguf --size-gib 4                      (benchmark size)

Weights are F16 (never repacked by llama.cpp's CPU backend), or Q8_0 or Q4_0
(`--type`; repacked at load on x86 into heap buffers, as the models people
serve are), except the norms (F32). Quantized weights are quantized by the
gguf package's own quantizer from a random sample of rows, tiled to the
tensor's size (quick for benchmark-size models).

  python -m tests.ggufmodel OUT.gguf --size-gib 2.2 --type Q4_0"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("HUGEPAGE_AGENT_CACHE", Path.home() / ".cache/hugepage-agent"))

PIECES = [" the", " a", " of", " and", " to", " in", " is", " it", " that", " for", " on",
          " with", " as", " was", " he", " be", " at", " by", " this", " huge", " page",
          " model", " memory", " token", "s", "ed", "ing", "er", "ly", "e", "t", "a", "o",
          "i", "n", " ", "."]


@dataclass(frozen=True)
class Shape:
    layers: int = 2
    embd: int = 256
    ff: int = 688
    heads: int = 4
    kv_heads: int = 4
    ctx: int = 512
    seed: int = 1234
    qtype: str = "F16"  # F16, Q8_0 or Q4_0

    @property
    def vocab(self) -> int:
        return 3 + 256 + len(PIECES)

    @property
    def weight_bytes(self) -> float:
        return BYTES_PER_WEIGHT[self.qtype]

    def nbytes(self) -> int:
        wb = self.weight_bytes
        per_layer = wb * (4 * self.embd * self.embd + 3 * self.embd * self.ff) + 8 * self.embd
        return int(self.layers * per_layer + 2 * wb * self.vocab * self.embd + 4 * self.embd)

    @staticmethod
    def for_size(size: int, seed: int = 1234, qtype: str = "F16") -> Shape:
        embd, ff = 2048, 5504
        per_layer = Shape(layers=1, embd=embd, ff=ff, heads=16, kv_heads=16,
                          qtype=qtype).nbytes()
        return Shape(layers=max(1, round(size / per_layer)), embd=embd, ff=ff, heads=16,
                     kv_heads=16, seed=seed, qtype=qtype)


BYTES_PER_WEIGHT = {"F16": 2.0, "Q8_0": 34 / 32, "Q4_0": 18 / 32}


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    import gguf

    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256
    tokens += [p.replace(" ", "\u2581") for p in PIECES]
    types += [gguf.TokenType.NORMAL] * len(PIECES)
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(PIECES))]
    return tokens, scores, [int(t) for t in types]


def write(path: Path, shape: Shape) -> Path:
    import gguf

    rng = np.random.default_rng(shape.seed)
    tmp = path.with_name(path.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_name(f"hugepage-agent test model {shape.layers}x{shape.embd}")
    w.add_context_length(shape.ctx)
    w.add_embedding_length(shape.embd)
    w.add_block_count(shape.layers)
    w.add_feed_forward_length(shape.ff)
    w.add_head_count(shape.heads)
    w.add_head_count_kv(shape.kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(shape.embd // shape.heads)
    w.add_file_type({"F16": gguf.LlamaFileType.MOSTLY_F16,
                     "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                     "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[shape.qtype])
    tokens, scores, types = vocabulary()
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)

    e, f, v = shape.embd, shape.ff, shape.vocab
    kv = e * shape.kv_heads // shape.heads
    specs: list[tuple[str, tuple[int, ...], type]] = [("token_embd.weight", (v, e), np.float16)]
    for i in range(shape.layers):
        b = f"blk.{i}."
        specs += [(b + "attn_norm.weight", (e,), np.float32),
                  (b + "attn_q.weight", (e, e), np.float16),
                  (b + "attn_k.weight", (kv, e), np.float16),
                  (b + "attn_v.weight", (kv, e), np.float16),
                  (b + "attn_output.weight", (e, e), np.float16),
                  (b + "ffn_norm.weight", (e,), np.float32),
                  (b + "ffn_gate.weight", (f, e), np.float16),
                  (b + "ffn_up.weight", (f, e), np.float16),
                  (b + "ffn_down.weight", (e, f), np.float16)]
    specs += [("output_norm.weight", (e,), np.float32), ("output.weight", (v, e), np.float16)]
    qtype = None if shape.qtype == "F16" else gguf.GGMLQuantizationType[shape.qtype]
    for name, dims, dt in specs:
        if qtype is not None and dt == np.float16:
            byte_shape = gguf.quant_shape_to_byte_shape(dims, qtype)
            w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)),
                              raw_dtype=qtype)
        else:
            nbytes = int(np.prod(dims)) * np.dtype(dt).itemsize
            w.add_tensor_info(name, dims, np.dtype(dt), nbytes)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, dims, dt in specs:
        if name.endswith("norm.weight"):
            data = np.ones(dims, dtype=np.float32)
        elif qtype is not None:
            data = _quantized(rng, dims, qtype)
        else:
            scale = 1.0 / np.sqrt(dims[-1])
            data = (rng.standard_normal(dims, dtype=np.float32) * scale).astype(dt)
        w.write_tensor_data(data)
    w.close()
    tmp.rename(path)
    return path


def _quantized(rng: np.random.Generator, dims: tuple[int, ...], qtype: object) -> np.ndarray:
    """Random rows quantized by the gguf package, tiled to the tensor's rows."""
    import gguf

    rows, cols = dims
    sample = min(rows, 64)
    f = rng.standard_normal((sample, cols), dtype=np.float32) / np.float32(np.sqrt(cols))
    q = gguf.quants.quantize(f, qtype)  # type: ignore[arg-type]
    reps = -(-rows // sample)
    return np.ascontiguousarray(np.tile(q, (reps, 1))[:rows])


def cached(shape: Shape) -> Path:
    """The model for this shape, written once into the cache."""
    key = hashlib.sha256(json.dumps(asdict(shape), sort_keys=True).encode()).hexdigest()[:12]
    path = CACHE / "models" / f"llama-{shape.layers}x{shape.embd}-{shape.qtype}-{key}.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path, shape)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--embd", type=int, default=256)
    ap.add_argument("--ff", type=int, default=688)
    ap.add_argument("--size-gib", type=float)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--type", choices=sorted(BYTES_PER_WEIGHT), default="F16")
    a = ap.parse_args()
    shape = (Shape.for_size(int(a.size_gib * (1 << 30)), a.seed, a.type) if a.size_gib
             else Shape(layers=a.layers, embd=a.embd, ff=a.ff, seed=a.seed, qtype=a.type))
    write(a.out, shape)
    print(f"{a.out}: {a.out.stat().st_size} bytes, {shape}")


if __name__ == "__main__":
    main()
