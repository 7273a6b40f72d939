"""The GGUF header reader, the load mode, the projection of a server's memory
and the smaps parser: pure logic, on models written with the gguf package
and on synthetic smaps text (no root, no llama.cpp)."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest

from hugepage_agent import coverage, footprint, gguf, loadmode
from tests import ggufmodel

MIB = 1 << 20
SHAPE = dict(layers=2, embd=256, ff=704, heads=4, kv_heads=2, ctx=1024)


@pytest.fixture(scope="module", params=["F16", "Q8_0", "Q4_0"])
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / f"{request.param}.gguf"
    return ggufmodel.write(path, ggufmodel.Shape(**SHAPE, qtype=request.param))  # type: ignore[arg-type]


def test_reader_accounts_for_every_byte(model: Path) -> None:
    m = gguf.read_path(str(model))
    assert m.arch == "llama" and m.get_int("block_count") == 2
    assert m.data_offset + m.weight_bytes == model.stat().st_size
    assert len(m.tensors) == 2 * 9 + 3
    # K and V: 2 layers x (256 / 4 heads x 2 KV heads) x 2 bytes, each
    assert m.kv_bytes_per_cell() == 2 * 2 * 128 * 2
    assert m.kv_bytes_per_cell("q8_0", "q8_0") == int(2 * 2 * 128 * 34 / 32)


def test_repacked_weights_by_type(model: Path) -> None:
    m = gguf.read_path(str(model))
    if model.stem == "F16":
        assert m.repacked_bytes == 0
    else:  # every matrix but the token embeddings
        embd = next(t for t in m.tensors if t.name == "token_embd.weight")
        norms = sum(t.nbytes for t in m.tensors if t.name.endswith("norm.weight"))
        assert m.repacked_bytes == m.weight_bytes - embd.nbytes - norms


@pytest.mark.parametrize("data, why", [
    (b"GGUX" + b"\0" * 20, "no GGUF magic"),
    (b"GGUF" + struct.pack("<I", 9) + b"\0" * 16, "version 9"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 40), "string of"),
    (b"GGUF" + struct.pack("<IQQ", 3, 1, 0), "truncated"),
])
def test_reader_refuses_broken_headers(data: bytes, why: str) -> None:
    with pytest.raises(gguf.GGUFError, match=why):
        gguf.read(io.BytesIO(data))


@pytest.mark.parametrize("args, mode", [
    ([], None), (["--load-mode", "mmap"], "mmap"), (["-lm", "none"], "none"),
    (["--load-mode=dio"], "dio"), (["--no-mmap"], "none"), (["--mlock"], "mlock"),
    (["-c", "4096", "--direct-io"], "dio"), (["--port", "8080"], None),
])
def test_operator_choice(args: list[str], mode: str | None) -> None:
    assert loadmode.operator_choice(args) == mode


def test_resolve_follows_what_the_binary_knows(tmp_path: Path) -> None:
    new, old, oldest = tmp_path / "new", tmp_path / "old", tmp_path / "oldest"
    new.write_bytes(b"\0--load-mode\0--no-mmap\0")
    old.write_bytes(b"\0--direct-io\0--no-mmap\0")
    oldest.write_bytes(b"\0--threads\0")
    assert loadmode.resolve("dio", str(new), []).added == ("--load-mode", "dio")
    assert loadmode.resolve("none", str(new), []).added == ("--load-mode", "none")
    assert loadmode.resolve("dio", str(old), []).added == ("--direct-io",)
    assert loadmode.resolve("none", str(old), []).added == ("--no-mmap",)
    lm = loadmode.resolve("dio", str(oldest), [])
    assert lm.added == () and lm.mode == "mmap" and lm.chosen_by == "llama.cpp" and not lm.heap
    auto = loadmode.resolve("auto", str(new), [])
    assert auto.added == ("--load-mode", "dio") and auto.cached == ("--load-mode", "none")
    assert auto.heap and auto.evidence == f"--load-mode found in {new}"
    assert loadmode.resolve("auto", str(old), []).cached == ("--no-mmap",)
    own = loadmode.resolve("dio", str(new), ["--load-mode", "mmap"])
    assert own.added == () and own.chosen_by == "operator" and "repack" in own.note
    assert loadmode.resolve("keep", str(new), []).added == ()


def test_projection_covers_weights_kv_and_compute(model: Path, tmp_path: Path) -> None:
    server = tmp_path / "llama-server"
    server.write_bytes(b"--load-mode")
    m = gguf.read_path(str(model))
    fp = footprint.project(str(model), ["-c", "2048"], str(server), "dio", min_size=1 << 30,
                           alloc_min=MIB, use_llama=False)
    assert fp.source == "estimate" and fp.load_mode == "dio"
    assert fp.weights == m.weight_bytes and fp.file_copy == 0 and fp.dead == 0
    assert fp.kv == 2048 * m.kv_bytes_per_cell()
    assert fp.compute > 0 and fp.meta >= 1024 * footprint.SCHED_BYTES_PER_NODE
    page = 2 * MIB
    assert fp.pool_bytes(page) % page == 0
    assert fp.pool_bytes(page) >= fp.weights + fp.kv + fp.compute + fp.meta
    quarter = footprint.project(str(model), ["-c", "2048", "-ctk", "q4_0", "-ctv", "q4_0"],
                                str(server), "dio", min_size=1 << 30, alloc_min=MIB,
                                use_llama=False)
    assert quarter.kv == pytest.approx(fp.kv * 18 / 32 / 2, rel=0.01)
    mapped = footprint.project(str(model), ["--load-mode", "mmap"], str(server), "dio",
                               min_size=1, alloc_min=MIB, use_llama=False)
    assert mapped.file_copy == model.stat().st_size
    assert mapped.dead == m.repacked_bytes and mapped.weights == m.repacked_bytes
    norepack = footprint.project(str(model), ["--load-mode", "mmap", "--no-repack"],
                                 str(server), "dio", min_size=1, alloc_min=MIB,
                                 use_llama=False)
    assert norepack.dead == 0


def test_context_defaults_to_the_trained_one(model: Path) -> None:
    m = gguf.read_path(str(model))
    assert footprint.context_cells(m, []) == 1024
    assert footprint.context_cells(m, ["--ctx-size=1000"]) == 1024  # padded to 256
    assert footprint.context_cells(m, ["-c", "0"]) == 1024


SMAPS = """\
7f0000000000-7f0000400000 r--s 00000000 00:11 1 /memfd:hugepage-wrapper:/m.gguf (deleted)
Size:               4096 kB
KernelPageSize:     2048 kB
Private_Hugetlb:    4096 kB
7f1000000000-7f1010000000 rw-p 00000000 00:11 2 /memfd:hugepage-wrapper-heap (deleted)
Size:             262144 kB
KernelPageSize:     2048 kB
Private_Hugetlb:  262144 kB
7f2000000000-7f2002000000 rw-p 00000000 00:00 0
Size:              32768 kB
Rss:               30000 kB
7f3000000000-7f3000100000 rw-p 00000000 00:00 0
Size:               1024 kB
Rss:                1024 kB
7f4000000000-7f4000800000 r--s 00000000 08:01 3 /m.gguf
Size:               8192 kB
Rss:                 100 kB
FilePmdMapped:         0 kB
7f5000000000-7f5000100000 r-xp 00000000 08:01 4 /usr/lib/hugepage-agent/libhugepage-wrapper.so
Size:               1024 kB
Rss:                 200 kB
"""


def test_smaps_split_by_kind() -> None:
    c = coverage.parse_smaps(SMAPS, "/m.gguf", large=8 * MIB)
    assert c.file_hugetlb_bytes == 4 * MIB and c.heap_hugetlb_bytes == 256 * MIB
    assert c.large_anon_bytes == 30000 * 1024  # the 1 MiB mapping is not large
    assert c.file_mapped_bytes == 100 * 1024 and c.wrapper_loaded and not c.filling
    assert c.page_size_kb == 2048
    assert c.fallback_bytes == 30100 * 1024
    none = coverage.parse_smaps(SMAPS, "/m.gguf", large=0)
    assert none.large_anon_bytes == 0
