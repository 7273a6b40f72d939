"""The preload library against the real kernel: contents compared byte for
byte with read(), /proc/self/smaps showing the region huge-page backed, the
pool's free pages back to their start value after unmap, files on disk
changed only as they should be."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LIBRARY, MAPTOOL, free_pages, needs_root, set_pool

MIB = 1 << 20
GIB = 1 << 30
H2M = 2 * MIB
FILE_SIZE = 300 * MIB + 12345  # not a multiple of any page size

pytestmark = needs_root


def mkfile(path: Path, size: int) -> Path:
    subprocess.run([str(MAPTOOL), "mkfile", str(path), str(size)], check=True)
    return path


def run_map(path: Path | str, offset: int, length: int, *opts: str,
            env: dict[str, str] | None = None, preload: bool = True) -> tuple[dict[str, str], str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HUGEPAGE_WRAPPER")}
    if preload:
        full_env["LD_PRELOAD"] = str(LIBRARY)
        full_env["HUGEPAGE_WRAPPER_MIN_SIZE"] = "64M"
    full_env.update(env or {})
    p = subprocess.run([str(MAPTOOL), "map", str(path), str(offset), str(length), *opts],
                       env=full_env, capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stderr
    out = {}
    for line in p.stdout.splitlines():
        k, _, v = line.partition("=")
        out[k] = v
    return out, p.stderr


def pages(length: int, page: int = H2M) -> int:
    return -(-length // page)


@pytest.fixture(scope="module")
def datadir(tmp_path_factory: pytest.TempPathFactory, wrapper_build: Path) -> Path:
    return tmp_path_factory.mktemp("wrapper")


@pytest.fixture(scope="module")
def data(datadir: Path) -> Path:
    f = mkfile(datadir / "model.gguf", FILE_SIZE)
    os.sync()  # dirty pages cannot be dropped: the page cache tests need it written back
    return f


@pytest.fixture
def pool(kernel_state: None) -> Iterator[int]:
    """A 2 MiB pool with room for two copies of the test file."""
    got = set_pool(2048, 2 * pages(FILE_SIZE) + 8)
    if got < 2 * pages(FILE_SIZE) + 8:
        pytest.skip(f"kernel gave only {got} 2 MiB pages")
    yield got


def whole_pages(path: Path, offset: int, length: int, page: int = H2M) -> int:
    """The huge pages a copy keeps: those wholly inside the file's data (the
    last, partial one is in 4 KiB pages, as the program would see it)."""
    data = min(length, path.stat().st_size - offset)
    return -(-data // 4096) * 4096 // page


def assert_in_huge_pages(r: dict[str, str], path: Path, length: int, page_kb: int = 2048,
                         offset: int = 0) -> None:
    assert r["mmap"] == "ok"
    assert r["compare"] == "match", f"first differing byte at {r['mismatch_at']}"
    if page_kb == 2048:
        assert int(r["map_hugetlb_kb"]) == whole_pages(path, offset, length) * 2048
        assert int(r["map_size_kb"]) * 1024 == -(-length // 4096) * 4096
    else:
        assert int(r["map_hugetlb_kb"]) == int(r["map_size_kb"])
        assert int(r["map_size_kb"]) * 1024 >= length
    assert int(r["map_kernel_page_kb"]) == page_kb
    assert r["map_name"] == f"/memfd:hugepage-wrapper:{path} (deleted)"


def test_exports_only_the_interposed_symbols(wrapper_build: Path) -> None:
    out = subprocess.run(["nm", "-D", "--defined-only", str(wrapper_build)],
                         capture_output=True, text=True, check=True).stdout
    names = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert names == {"mmap", "mmap64", "munmap", "mremap", "mprotect", "madvise", "posix_madvise",
                     "malloc", "free", "calloc", "realloc", "reallocarray", "posix_memalign",
                     "aligned_alloc", "memalign", "malloc_usable_size", "fclose"}


@pytest.mark.parametrize(("offset", "length"), [
    (0, FILE_SIZE),                      # whole file, odd size
    (3 * 4096, FILE_SIZE - 3 * 4096),    # from an offset to the end
    (4096 * 1001, 100 * MIB + 7),         # a middle piece, odd length
    (0, FILE_SIZE + 5 * MIB),            # past the end of the file: zeros
])
def test_contents_match_and_pool_returns(pool: int, data: Path, offset: int,
                                         length: int) -> None:
    start = free_pages(2048)
    r, err = run_map(data, offset, length)
    assert_in_huge_pages(r, data, length, offset=offset)
    assert int(r["free2m_after_map"]) == start - whole_pages(data, offset, length)
    assert r["unmap_rc"] == "0"
    assert int(r["free2m_after_unmap"]) == start
    assert free_pages(2048) == start
    assert f"{data}: loaded" in err and "GiB/s" in err


def test_page_cache_dropped_after_load(pool: int, data: Path) -> None:
    data.read_bytes()  # bring the whole file into the page cache
    r, _ = run_map(data, 0, FILE_SIZE)
    assert_in_huge_pages(r, data, FILE_SIZE)
    assert int(r["cache_after_map_kb"]) * 1024 < FILE_SIZE // 100
    # server.page_cache = "keep": the copy leaves the file in the page cache
    data.read_bytes()
    r, _ = run_map(data, 0, FILE_SIZE, env={"HUGEPAGE_WRAPPER_KEEP_CACHE": "1"})
    assert_in_huge_pages(r, data, FILE_SIZE)
    assert int(r["cache_after_map_kb"]) * 1024 > FILE_SIZE * 0.95


def test_file_mapping_without_wrapper_is_not_hugetlb(data: Path) -> None:
    r, _ = run_map(data, 0, FILE_SIZE, preload=False)
    assert r["compare"] == "match" and r["map_hugetlb_kb"] == "0"


def test_o_direct_fd(pool: int, data: Path) -> None:
    r, err = run_map(data, 8192, FILE_SIZE - 8192, "--direct")
    assert_in_huge_pages(r, data, FILE_SIZE - 8192)
    assert "loaded" in err


def test_llama_unmap_pattern(pool: int, data: Path) -> None:
    """llama.cpp unmaps 4 KiB-aligned leading and trailing fragments after load."""
    start = free_pages(2048)
    head, tail = 37 * 4096, 200 * MIB + 3 * 4096
    r, err = run_map(data, 0, FILE_SIZE, "--llama-unmap", str(head), str(tail))
    assert r["unmap_head_rc"] == "0" and r["unmap_tail_rc"] == "0"
    # The huge pages wholly inside [head, tail) stay; those cut in two became
    # 4 KiB pages (the kernel cannot unmap part of a huge page).
    still = tail // H2M - -(-head // H2M)
    assert int(r["free2m_after_partial"]) == start - still
    assert r["compare_middle"] == "match"
    assert int(r["middle_hugetlb_kb"]) == still * 2048
    assert int(r["middle_size_kb"]) * 1024 == tail - head
    assert r["unmap_rest_rc"] == "0"
    assert int(r["free2m_after_unmap"]) == start
    assert "munmap" not in err


def test_advise_and_protect_on_fragments(pool: int, data: Path) -> None:
    r, _ = run_map(data, 0, FILE_SIZE, "--advise")
    assert r["posix_madvise_rc"] == "0" and r["posix_madvise_random_rc"] == "0"
    assert r["madvise_rc"] == "0" and r["mprotect_rc"] == "0"
    assert r["compare_after_advise"] == "match"


def test_forked_child_reads_the_mapping(pool: int, data: Path) -> None:
    start = free_pages(2048)
    r, _ = run_map(data, 0, FILE_SIZE, "--fork")
    assert r["fork_child"] == "match"
    assert r["compare_after_child"] == "match"  # the child's munmap took nothing away
    assert int(r["free2m_after_unmap"]) == start


def test_concurrent_mappings(kernel_state: None, data: Path) -> None:
    need = 4 * pages(FILE_SIZE)
    if set_pool(2048, need) < need:
        pytest.skip("kernel could not give the pool for four mappings")
    start = free_pages(2048)
    r, err = run_map(data, 0, FILE_SIZE, "--concurrent", "4")
    assert r["concurrent_ok"] == "4"
    assert err.count("loaded") == 4
    assert int(r["free2m_after_unmap"]) == start


def test_pool_short_falls_back(kernel_state: None, data: Path) -> None:
    set_pool(2048, 10)
    r, err = run_map(data, 0, FILE_SIZE)
    assert r["mmap"] == "ok" and r["compare"] == "match"
    assert r["map_hugetlb_kb"] == "0" and r["map_name"] == str(data)
    lines = [line for line in err.splitlines() if "short" in line]
    assert len(lines) == 1
    assert str(data) in lines[0]
    assert f"need {pages(FILE_SIZE)} x 2 MiB pages, 10 free" in lines[0]
    assert free_pages(2048) == 10


def test_pool_short_strict_fails_with_enomem(kernel_state: None, data: Path) -> None:
    set_pool(2048, 10)
    r, err = run_map(data, 0, FILE_SIZE, env={"HUGEPAGE_WRAPPER_STRICT": "1"})
    assert r["mmap"] == "fail" and r["errno"] == "12"
    assert "strict" in err and str(data) in err
    assert free_pages(2048) == 10


def test_writable_shared_mapping_passes_through(pool: int, datadir: Path) -> None:
    f = mkfile(datadir / "writable.bin", 100 * MIB)
    r, err = run_map(f, 0, 100 * MIB, "--write-shared")
    assert r["map_hugetlb_kb"] == "0" and r["msync_rc"] == "0"
    with open(f, "rb") as fh:
        fh.seek(4096)
        assert fh.read(8) == b"MARKER!!"  # the write reached the file
    assert err == ""


def test_small_mapping_and_devices_pass_through(pool: int, datadir: Path) -> None:
    f = mkfile(datadir / "small.bin", 10 * MIB)
    r, _ = run_map(f, 0, 10 * MIB)
    assert r["compare"] == "match" and r["map_hugetlb_kb"] == "0"
    r, err = run_map("/dev/zero", 0, 100 * MIB, "--private")
    assert r["mmap"] == "ok" and r["map_hugetlb_kb"] == "0" and err == ""


def test_invalid_environment_is_reported_once_and_ignored(pool: int, data: Path) -> None:
    r, err = run_map(data, 0, FILE_SIZE, env={
        "HUGEPAGE_WRAPPER_MIN_SIZE": "lots", "HUGEPAGE_WRAPPER_THREADS": "-3",
        "HUGEPAGE_WRAPPER_PAGE_SIZE": "4K", "HUGEPAGE_WRAPPER_LOG": "loud"})
    for name in ("MIN_SIZE", "THREADS", "PAGE_SIZE", "LOG"):
        assert err.count(f"HUGEPAGE_WRAPPER_{name}") == 1
    # the default minimum (1 GiB) applies: the 300 MiB mapping is left alone
    assert r["compare"] == "match" and r["map_hugetlb_kb"] == "0"


def test_threads_setting(pool: int, data: Path) -> None:
    r, err = run_map(data, 0, FILE_SIZE, env={"HUGEPAGE_WRAPPER_THREADS": "3"})
    assert_in_huge_pages(r, data, FILE_SIZE)
    assert "3 threads" in err


def test_quiet_log(pool: int, data: Path) -> None:
    r, err = run_map(data, 0, FILE_SIZE, env={"HUGEPAGE_WRAPPER_LOG": "quiet"})
    assert_in_huge_pages(r, data, FILE_SIZE)
    assert err == ""


def test_one_gib_pages(kernel_state: None, data: Path) -> None:
    if set_pool(1048576, 1) < 1:
        pytest.skip("the kernel could not allocate a 1 GiB page (memory fragmented)")
    set_pool(2048, pages(FILE_SIZE))
    r, err = run_map(data, 0, FILE_SIZE)  # auto, both pools: 2 MiB pages waste less
    assert_in_huge_pages(r, data, FILE_SIZE)
    assert f"0 x 1 GiB and {pages(FILE_SIZE)} x 2 MiB" in err
    set_pool(2048, 0)
    start = free_pages(1048576)
    r, err = run_map(data, 0, FILE_SIZE)  # auto: only the 1 GiB pool has room
    assert_in_huge_pages(r, data, FILE_SIZE, page_kb=1048576)
    assert "1 x 1 GiB" in err
    assert int(r["free1g_after_unmap"]) == start
    r, _ = run_map(data, 0, FILE_SIZE, env={"HUGEPAGE_WRAPPER_PAGE_SIZE": "2M"})
    assert int(r["map_kernel_page_kb"]) == 2048 or r["map_hugetlb_kb"] == "0"


@pytest.mark.slow
def test_file_over_2_gib(kernel_state: None, datadir: Path) -> None:
    size = 2 * GIB + 300 * MIB + 4321
    f = mkfile(datadir / "big.gguf", size)
    try:
        if set_pool(2048, pages(size)) < pages(size):
            pytest.skip("kernel could not give the pool for a 2.3 GiB file")
        start = free_pages(2048)
        r, _ = run_map(f, 0, size, env={"HUGEPAGE_WRAPPER_MIN_SIZE": "1G"})
        assert_in_huge_pages(r, f, size)
        assert int(r["free2m_after_unmap"]) == start
    finally:
        f.unlink()


SHORT_READ_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"  # st_size 4096, reads ~40 bytes


def test_read_error_releases_pages_and_falls_back(kernel_state: None) -> None:
    """A file that ends before its size says (as if it shrank while being read):
    the copy fails, every huge page taken is given back, and the call goes to
    the kernel, which answers as it would without the library."""
    set_pool(2048, 4)
    plain, _ = run_map(SHORT_READ_FILE, 0, 4096, "--keep", preload=False)
    r, err = run_map(SHORT_READ_FILE, 0, 4096, "--keep", env={"HUGEPAGE_WRAPPER_MIN_SIZE": "1"})
    assert "failed while copying" in err and SHORT_READ_FILE in err
    assert r["mmap"] == plain["mmap"] and r.get("errno") == plain.get("errno")
    assert r["free2m_after_unmap"] == "4" and free_pages(2048) == 4
    r, err = run_map(SHORT_READ_FILE, 0, 4096, "--keep",
                     env={"HUGEPAGE_WRAPPER_MIN_SIZE": "1", "HUGEPAGE_WRAPPER_STRICT": "1"})
    assert r["mmap"] == "fail" and r["errno"] == "12" and "strict" in err
    assert free_pages(2048) == 4
