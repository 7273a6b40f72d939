"""What a model's server will allocate, projected before it starts, so that
`pool.size = "auto"` covers the first start: the weights as loaded, the KV
cache for its context and cache types, the compute buffers, and what the
load itself needs for a while (staging buffers).

Two sources:
  - llama.cpp's own projection, from `llama-fit-params --fit-print` next to
    the server binary (the same code that sizes the server's buffers);
  - where that is missing or fails, an estimate from the GGUF header and the
    server's arguments (weights exact, KV cache exact for plain attention,
    compute buffers from a formula that errs high).
Every allocation is rounded up to whole huge pages, as the wrapper serves it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from hugepage_agent import amounts, consts, gguf, loadmode, serverargs
from hugepage_agent.config import Config, ModelConfig
from hugepage_agent.errors import HostError
from hugepage_agent.host import Host

log = logging.getLogger(__name__)

MIB = amounts.MIB
DIO_STAGING = 64 * MIB  # llama.cpp's direct I/O staging buffer (LLAMA_DIRECT_IO_BUFFER_SIZE)
FIT_TIMEOUT = 60.0
# arguments that change what the server allocates, passed on to llama-fit-params
FIT_ARGS_WITH_VALUE = {"-c", "--ctx-size", "-np", "--parallel", "-ctk", "--cache-type-k",
                       "-ctv", "--cache-type-v", "-b", "--batch-size", "-ub", "--ubatch-size",
                       "-fa", "--flash-attn", "-ngl", "--n-gpu-layers", "--gpu-layers",
                       "-lm", "--load-mode"}
FIT_ARGS_FLAGS = {"--swa-full", "-kvu", "--kv-unified", "-no-kvu", "--no-kv-unified",
                  "-nr", "--no-repack", "--repack"}


SCHED_BYTES_PER_NODE = 20224  # ggml's scheduler metadata, per graph node (measured)


@dataclass(frozen=True)
class Footprint:
    weights: int  # bytes the weights take in heap buffers (repacked ones, when mapped)
    file_copy: int  # bytes of the file the wrapper copies (mmap load mode)
    dead: int  # of the file copy, what repack makes dead
    repacked: int  # the weights llama.cpp repacks into buffers of its own
    kv: int
    compute: int
    meta: int  # the graph scheduler's own buffer
    transient: int  # load-time staging served from huge pages, held while weights load
    source: str  # "llama-fit-params" or "estimate"
    load_mode: str
    alloc_min: int  # allocations below this are not served from huge pages

    def pool_bytes(self, page: int) -> int:
        """What the pool must hold for this server at its peak, allocation by
        allocation, each rounded up to whole pages as the wrapper serves it."""
        def up(n: int) -> int:
            return -(-n // page) * page if n >= self.alloc_min and n else 0
        # the weights come as two buffers (plain and repacked): one more page at most
        loaded = up(self.weights) + (page if self.weights else 0) + up(self.file_copy)
        return max(loaded + up(self.transient),
                   loaded + up(self.kv) + up(self.compute) + up(self.meta))

    def breakdown(self) -> str:
        parts = [("weights", self.weights), ("file copy", self.file_copy),
                 ("KV cache", self.kv), ("compute", self.compute + self.meta),
                 ("load staging", self.transient)]
        text = ", ".join(f"{name} {amounts.human_bytes(n)}" for name, n in parts if n)
        return f"{text} (load mode {self.load_mode}; {self.source})"

    def to_json(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @staticmethod
    def from_json(data: object) -> Footprint | None:
        if not isinstance(data, dict):
            return None
        try:
            return Footprint(**{k: data[k] for k in Footprint.__dataclass_fields__})
        except (KeyError, TypeError):
            return None


_arg = serverargs.value


def _int_arg(args: Sequence[str], default: int, *names: str) -> int:
    v = _arg(args, *names)
    try:
        return int(v) if v is not None else default
    except ValueError:
        return default


def repack_on(args: Sequence[str]) -> bool:
    on = True
    for a in args:
        if a in ("-nr", "--no-repack"):
            on = False
        elif a == "--repack":
            on = True
    return on


def context_cells(model: gguf.Model, args: Sequence[str]) -> int:
    n_ctx = _int_arg(args, 0, "-c", "--ctx-size")
    if n_ctx <= 0:
        n_ctx = model.get_int("context_length", 4096)
    return -(-n_ctx // 256) * 256


def estimate_compute(model: gguf.Model, args: Sequence[str]) -> int:
    """The CPU compute buffer: the widest activations of one micro-batch, the
    attention mask (and scores, without flash attention), the logits. Fitted
    to llama.cpp's own figures for llama models; errs high."""
    ubatch = _int_arg(args, 512, "-ub", "--ubatch-size")
    batch = _int_arg(args, 2048, "-b", "--batch-size")
    ubatch = min(ubatch, batch)
    embd = model.get_int("embedding_length")
    ff = model.get_int("feed_forward_length", 4 * embd)
    heads = model.get_int("attention.head_count", 1) or 1
    vocab_v = model.metadata.get(f"{model.arch}.vocab_size")
    vocab = int(vocab_v) if isinstance(vocab_v, int) else max(
        (t.dims[1] for t in model.tensors if t.name.startswith("output.") and len(t.dims) == 2),
        default=32000)
    cells = context_cells(model, args)
    flash = (_arg(args, "-fa", "--flash-attn") or "auto") != "off"
    scores = ubatch * cells * 2 if flash else ubatch * cells * heads * 4
    acts = ubatch * (6 * embd + 3 * ff) * 4
    logits = ubatch * vocab * 4
    return acts + scores + logits


@functools.lru_cache(maxsize=64)
def _header(path: str, size: int, mtime_ns: int) -> gguf.Model:
    del size, mtime_ns  # the cache key
    return gguf.read_path(path)


def header(path: str) -> gguf.Model:
    st = os.stat(path)
    return _header(path, st.st_size, st.st_mtime_ns)


def fit_params_binary(server: str) -> str | None:
    candidate = os.path.join(os.path.dirname(server), "llama-fit-params")
    return candidate if os.access(candidate, os.X_OK) else None


def _fit_args(args: Sequence[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(args):
        flag = args[i].partition("=")[0]
        if flag in FIT_ARGS_WITH_VALUE:
            out.append(args[i])
            if "=" not in args[i] and i + 1 < len(args):
                out.append(args[i + 1])
                i += 1
        elif flag in FIT_ARGS_FLAGS:
            out.append(args[i])
        i += 1
    return out


def llama_projection(server: str, path: str, args: Sequence[str]) -> tuple[int, int, int] | None:
    """(model, context, compute) bytes on the host, from llama-fit-params."""
    tool = fit_params_binary(server)
    if tool is None:
        return None
    cmd = [tool, "--model", path, "--fit-print", "on", *_fit_args(args)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=FIT_TIMEOUT,
                           check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.info("llama-fit-params did not answer (%s); estimating instead", e)
        return None
    for line in r.stdout.splitlines():
        words = line.split()
        if len(words) == 4 and words[0] == "Host" and all(w.isdigit() for w in words[1:]):
            model, ctx, compute = (int(w) * MIB for w in words[1:])
            return model, ctx, compute
    log.info("llama-fit-params gave no projection (exit %d): %s; estimating instead",
             r.returncode, (r.stderr.strip().splitlines() or ["no output"])[-1])
    return None


def load_mode(configured: str, binary: str, path: str, args: Sequence[str],
              min_size: int) -> loadmode.LoadMode:
    """The load mode of a model's server, knowing the model: a file llama.cpp
    repacks nothing of (F16, or --no-repack), large enough for the wrapper to
    copy, is best mapped when cached (loadmode.resolve's mapped_ok)."""
    mapped_ok = False
    try:
        size = os.stat(path).st_size
        mapped_ok = size >= min_size and (not repack_on(args) or
                                          header(path).repacked_bytes == 0)
    except (OSError, gguf.GGUFError):
        pass
    return loadmode.resolve(configured, binary, args, mapped_ok)


def project(path: str, args: Sequence[str], server: str, configured_mode: str, *,
            min_size: int, alloc_min: int, use_llama: bool = True) -> Footprint:
    """Raises gguf.GGUFError for a file that is not a GGUF model, OSError for
    one that cannot be read. `min_size`: the smallest file mapping the wrapper
    copies; `alloc_min`: the smallest allocation it serves."""
    model = header(path)
    lm = load_mode(configured_mode, server, path, args, min_size)
    repacked = model.repacked_bytes if repack_on(args) else 0
    kv = context_cells(model, args) * model.kv_bytes_per_cell(
        (_arg(args, "-ctk", "--cache-type-k") or "f16").lower(),
        (_arg(args, "-ctv", "--cache-type-v") or "f16").lower())
    compute = estimate_compute(model, args)
    source = "estimate"
    projection = llama_projection(server, path, [*lm.added, *args]) if use_llama else None
    if projection is not None:
        _, kv, compute = projection
        source = "llama-fit-params"
    meta = max(1024, 8 * len(model.tensors)) * SCHED_BYTES_PER_NODE
    if lm.heap:
        weights, file_copy, dead = model.weight_bytes, 0, 0
        if lm.cached_mode == "mmap":  # a cached start copies the whole file
            weights = max(weights, os.stat(path).st_size)
        # a repacked tensor is read into a buffer of its size, through a staging buffer
        staging = (min(DIO_STAGING, model.largest_repacked)
                   if lm.mode == "dio" or lm.cached is not None else 0)
        transient = sum(n for n in (model.largest_repacked, staging) if n >= alloc_min)
    else:  # mapped: the wrapper copies the file; repack copies part of it again
        size = os.stat(path).st_size
        weights = repacked
        file_copy = size if size >= min_size else 0
        dead = min(repacked, file_copy)
        transient = 0
    return Footprint(weights=weights, file_copy=file_copy, dead=dead, repacked=repacked,
                     kv=kv, compute=compute, meta=meta, transient=transient, source=source,
                     load_mode=lm.mode, alloc_min=alloc_min)


CACHE_FILE = consts.FOOTPRINT_CACHE


def server_load_mode(m: ModelConfig, cfg: Config) -> str:
    """The load mode a model's server runs with, unless its arguments choose:
    server.load_mode for the agent's units (an image's too); llama.cpp's own (a
    mapping, which the wrapper copies: "keep") for an operator's unit or
    container, whose command line the agent does not write."""
    return cfg.server.load_mode if m.kind in ("template", "image") else "keep"


def _cache_key(m: ModelConfig, cfg: Config) -> str:
    try:
        st = os.stat(m.path)
        server = os.stat(cfg.server.binary).st_mtime_ns
    except OSError:
        st, server = None, 0
    return json.dumps([m.path, st.st_size if st else 0, st.st_mtime_ns if st else 0,
                       list(m.args), cfg.server.binary, server, server_load_mode(m, cfg),
                       cfg.wrapper.min_size, cfg.wrapper.alloc_min_size])


def project_models(host: Host, cfg: Config, fresh: bool) -> dict[str, Footprint]:
    """Each GGUF model's footprint. `fresh`: ask llama.cpp (slow; apply does it)
    and remember the answers in /run; otherwise take the remembered ones, or
    estimate. Models that are not GGUF files are left out (their file size
    stands in)."""
    cached: object = {}
    if not fresh:
        with contextlib.suppress(ValueError, HostError):
            cached = json.loads(host.read_optional(CACHE_FILE) or "{}")
    if not isinstance(cached, dict):
        cached = {}
    out: dict[str, Footprint] = {}
    for m in cfg.models:
        key = _cache_key(m, cfg)
        fp = None if fresh else Footprint.from_json(cached.get(key))
        if fp is None:
            try:
                fp = project(m.path, m.args, cfg.server.binary, server_load_mode(m, cfg),
                             min_size=cfg.wrapper.min_size,
                             alloc_min=cfg.wrapper.alloc_min_size, use_llama=fresh)
            except (OSError, gguf.GGUFError) as e:
                log.debug("%s: no projection (%s); the file size stands in", m.path, e)
                continue
        out[m.name] = fp
    return out


def remember(host: Host, cfg: Config, footprints: dict[str, Footprint]) -> None:
    data = {_cache_key(m, cfg): footprints[m.name].to_json()
            for m in cfg.models if m.name in footprints}
    try:
        host.write_atomic(CACHE_FILE, json.dumps(data, indent=1) + "\n")
    except HostError as e:
        log.warning("could not remember the models' projections: %s", e)
