"""The preload library's allocator paths against the real kernel: large
allocations served from named huge pages, and what the program observes kept
as libc gives it (calloc zero, realloc keeps contents across the threshold
both ways, alignment, foreign pointers, threads, fork), the same checks
passing without the library; a short pool falls back with one line, strict
mode fails the allocation; the pool's pages come back."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import LIBRARY, WRAPPER_DIR, free_pages, needs_root, set_pool

MIB = 1 << 20
ALLOCTOOL = WRAPPER_DIR / "build" / "tests" / "alloctool"

pytestmark = needs_root


def run(*args: str, env: dict[str, str] | None = None, preload: bool = True,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items()
            if not k.startswith("HUGEPAGE_WRAPPER") and k != "LD_PRELOAD"}
    if preload:
        full["LD_PRELOAD"] = str(LIBRARY)
    full.update(env or {})
    return subprocess.run([str(ALLOCTOOL), *args], env=full, capture_output=True, text=True,
                          input=stdin, timeout=120, check=False)


@pytest.fixture
def pool(kernel_state: None, wrapper_build: Path) -> int:
    return set_pool(2048, 400)


@pytest.mark.parametrize("size", [8 * MIB, 9 * MIB + 123, 64 * MIB])
def test_semantics_same_with_and_without_the_library(pool: int, size: int) -> None:
    start = free_pages(2048)
    with_lib = run("all", str(size))
    without = run("all", str(size), preload=False)
    assert with_lib.returncode == 0, with_lib.stdout + with_lib.stderr
    assert without.returncode == 0, without.stdout
    checks = [line for line in with_lib.stdout.splitlines() if line.startswith(("ok", "FAIL"))]
    assert checks == [line for line in without.stdout.splitlines()
                      if line.startswith(("ok", "FAIL"))]
    assert "huge=1" in with_lib.stdout and "huge=0" in without.stdout
    assert "realloc_up_huge=1" in with_lib.stdout and "realloc_down_huge=0" in with_lib.stdout
    assert with_lib.stderr == ""  # nothing to report when the pool has room
    assert free_pages(2048) == start


def test_below_the_threshold_stays_with_libc(pool: int) -> None:
    r = run("all", str(4 * MIB))
    assert r.returncode == 0, r.stdout
    assert "huge=0" in r.stdout
    off = run("all", str(64 * MIB), env={"HUGEPAGE_WRAPPER_ALLOC_MIN_SIZE": "off"})
    assert off.returncode == 0 and "huge=0" in off.stdout


def test_smaps_attributes_the_allocation(pool: int) -> None:
    p = subprocess.Popen([str(ALLOCTOOL), "hold", str(100 * MIB)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "LD_PRELOAD": str(LIBRARY)})
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert "huge=1" in line, line
        held = 0
        current = False
        for text in Path(f"/proc/{p.pid}/smaps").read_text().splitlines():
            head = text.split()
            if head and "-" in head[0] and ":" not in head[0] and len(head) >= 5:
                current = text.endswith("/memfd:hugepage-wrapper-heap (deleted)")
            elif current and text.startswith("Private_Hugetlb:"):
                held += int(head[1]) * 1024
        assert held == 100 * MIB
    finally:
        p.communicate("", timeout=30)
    assert p.returncode == 0


def test_short_pool_falls_back_with_one_line(pool: int) -> None:
    set_pool(2048, 4)
    r = run("strict", str(64 * MIB))
    assert "ptr=1 errno=0" in r.stdout
    lines = [x for x in r.stderr.splitlines() if "hugepage-wrapper" in x]
    assert len(lines) == 1, r.stderr
    assert "allocation of 64.0 MiB: huge page pool short: need 32 x 2 MiB pages, 4 free; " \
           "served by libc in 4 KiB pages" in lines[0]
    assert free_pages(2048) == 4


def test_strict_mode_fails_the_allocation(pool: int) -> None:
    set_pool(2048, 4)
    r = run("strict", str(64 * MIB), env={"HUGEPAGE_WRAPPER_STRICT": "1"})
    assert "ptr=0 errno=12" in r.stdout
    assert "strict mode" in r.stderr


def test_invalid_threshold_is_reported_once_and_ignored(pool: int) -> None:
    r = run("all", str(16 * MIB), env={"HUGEPAGE_WRAPPER_ALLOC_MIN_SIZE": "lots"})
    assert r.returncode == 0 and "huge=1" in r.stdout
    assert r.stderr.count("HUGEPAGE_WRAPPER_ALLOC_MIN_SIZE") == 1


def test_fallback_lines_end_with_a_reason_the_agent_parses(kernel_state: None,
                                                           wrapper_build: Path,
                                                           tmp_path: Path) -> None:
    """The format the agent reads (journal.parse_fallback), pinned against what
    the library writes with an empty pool: an allocation, and a file copy of a
    file whose path holds ': '."""
    from hugepage_agent import consts, journal
    from tests.conftest import MAPTOOL

    set_pool(2048, 0)
    r = run("all", str(32 * MIB))
    assert r.returncode == 0, r.stdout + r.stderr
    model = tmp_path / "a: b.gguf"
    subprocess.run([str(MAPTOOL), "mkfile", str(model), str(64 * MIB)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUGEPAGE_WRAPPER")}
    m = subprocess.run([str(MAPTOOL), "map", str(model), "0", str(64 * MIB)],
                       env={**env, "LD_PRELOAD": str(LIBRARY),
                            "HUGEPAGE_WRAPPER_MIN_SIZE": str(16 * MIB)},
                       capture_output=True, text=True, check=False)
    assert m.returncode == 0, m.stdout + m.stderr
    lines = (r.stderr + m.stderr).splitlines()
    said = [line for line in lines if "falling back" in line or "served by libc" in line]
    parsed = [journal.parse_fallback(line) for line in said]
    assert said and None not in parsed, said  # every fallback line carries the token
    allocs = [f for f in parsed if f is not None and f.allocation]
    assert allocs and {f.reason for f in allocs} == {consts.REASON_POOL}
    assert allocs[0].subject == "allocation of 32.0 MiB"
    assert allocs[0].why == "huge page pool short: need 16 x 2 MiB pages, 0 free"
    assert allocs[0].now == "served by libc in 4 KiB pages"
    copy = next(f for f in parsed if f is not None and not f.allocation)
    assert copy.subject == str(model) and copy.reason == consts.REASON_POOL
    assert copy.why == "huge page pool short: need 32 x 2 MiB pages, 0 free", copy
    assert copy.now == "falling back to the regular file mapping"
    assert journal.fallback_reason(lines, str(model)) == copy.why
    first = journal.fallback_reason(r.stderr.splitlines(), str(model))
    assert first is not None and first.startswith(
        "allocation of 32.0 MiB: huge page pool short: need 16 x 2 MiB pages, 0 free"), first
    assert journal.parse_fallback("hugepage-wrapper[1]: /m: loaded 1 GiB") is None


@pytest.mark.parametrize("numa", ["auto", "interleave", "0", "off"])
def test_one_node_host_placement_and_prefault_change_nothing(pool: int, numa: str) -> None:
    """On one node every placement is the kernel's own; the prefault faults
    the pages in at once (a pool short there is a fallback, never a SIGBUS),
    and the program sees the same."""
    start = free_pages(2048)
    plain = run("all", str(24 * MIB), preload=False)
    for env in ({"HUGEPAGE_WRAPPER_NUMA": numa},
                {"HUGEPAGE_WRAPPER_NUMA": numa, "HUGEPAGE_WRAPPER_PREFAULT": "1"}):
        r = run("all", str(24 * MIB), env=env)
        assert r.returncode == 0 and r.stderr == "", (env, r.stdout, r.stderr)
        assert "huge=1" in r.stdout
        assert [x for x in r.stdout.splitlines() if x.startswith(("ok", "FAIL"))] == \
            [x for x in plain.stdout.splitlines() if x.startswith(("ok", "FAIL"))]
    assert free_pages(2048) == start


def test_invalid_placement_is_reported_once_and_ignored(pool: int) -> None:
    r = run("all", str(16 * MIB), env={"HUGEPAGE_WRAPPER_NUMA": "near"})
    assert r.returncode == 0 and "huge=1" in r.stdout
    assert r.stderr.count("ignoring invalid HUGEPAGE_WRAPPER_NUMA=\"near\"") == 1, r.stderr
