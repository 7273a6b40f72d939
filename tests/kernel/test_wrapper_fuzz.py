"""The preload library must never change what a program observes.

A differential fuzzer (wrapper_c/tests/mmfuzz.c) runs seeded random sequences
of mmap/munmap/mprotect/madvise/mremap/fork/reads/writes on files and
anonymous memory, and malloc/calloc/realloc/free, once with the library and
once without, and the two outputs (return values, errno, bytes read, faults
taken) must be identical. A threaded stress program (mtstress.c) covers what
one thread cannot: holes reused by other threads' mappings, and fork while
other threads are inside the library. The list of what a copy in huge pages
cannot express, which the fuzzer does not generate, is docs/wrapper-semantics.md.
"""

from __future__ import annotations

import difflib
import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import LIBRARY, MAPTOOL, WRAPPER_DIR, free_pages, needs_root, set_pool

pytestmark = needs_root

MMFUZZ = WRAPPER_DIR / "build" / "tests" / "mmfuzz"
MTSTRESS = WRAPPER_DIR / "build" / "tests" / "mtstress"
MIB = 1 << 20
# Sizes that are not whole huge pages, one that is, and one under a page.
FILES = {"f0": 3 * MIB + 1234, "f1": 8 * MIB, "f2": 5 * MIB + 3 * 4096, "f3": 5000}
SEEDS = [int(s) for s in os.environ.get("HPW_FUZZ_SEEDS", "1,2,3,4,5").split(",")]
OPS = int(os.environ.get("HPW_FUZZ_OPS", "20000"))  # per seed: 100,000 in all by default
POOL = 512  # 2 MiB pages: room for every slot's copy and the children's copy-on-write


@pytest.fixture(scope="module")
def fuzzdir(tmp_path_factory: pytest.TempPathFactory, wrapper_build: Path) -> Path:
    d = tmp_path_factory.mktemp("fuzz")
    for name, size in FILES.items():
        subprocess.run([str(MAPTOOL), "mkfile", str(d / name), str(size)], check=True)
    return d


@pytest.fixture
def pool(kernel_state: None) -> Iterator[int]:
    got = set_pool(2048, POOL)
    if got < POOL:
        pytest.skip(f"kernel gave only {got} 2 MiB pages")
    yield got


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith("HUGEPAGE_WRAPPER") and k != "LD_PRELOAD"}


def fuzz(seed: int, ops: int, directory: Path, preload: bool) -> tuple[str, str]:
    env = clean_env()
    if preload:
        env.update(LD_PRELOAD=str(LIBRARY), HUGEPAGE_WRAPPER_MIN_SIZE="1M",
                   HUGEPAGE_WRAPPER_ALLOC_MIN_SIZE="1M", HUGEPAGE_WRAPPER_LOG="debug")
    p = subprocess.run([str(MMFUZZ), str(seed), str(ops), str(directory)], env=env,
                       capture_output=True, text=True, timeout=600, check=False)
    assert p.returncode == 0, f"seed {seed} {'with' if preload else 'without'} the library: " \
                              f"exit {p.returncode}\n{p.stderr[-2000:]}"
    return p.stdout, p.stderr


def first_difference(a: str, b: str) -> str:
    diff = difflib.unified_diff(a.splitlines(), b.splitlines(), "without", "with library",
                                n=3, lineterm="")
    return "\n".join(list(diff)[:40])


def test_differential_fuzzer_finds_no_difference(pool: int, fuzzdir: Path) -> None:
    start = free_pages(2048)
    jobs = [(seed, preload) for seed in SEEDS for preload in (False, True)]
    with ThreadPoolExecutor(max_workers=2) as ex:
        results = dict(zip(jobs, ex.map(lambda j: fuzz(j[0], OPS, fuzzdir, j[1]), jobs)))
    copies = allocations = demoted = lines = 0
    for seed in SEEDS:
        plain, _ = results[(seed, False)]
        wrapped, log = results[(seed, True)]
        assert plain == wrapped, f"seed {seed}: the library changed what the program " \
                                 f"observed\n{first_difference(plain, wrapped)}"
        assert plain.rstrip().splitlines()[-1].startswith("end ")
        lines += len(plain.splitlines())
        copies += log.count(": loaded ")
        allocations += log.count("allocation of ")
        demoted += log.count("now in 4 KiB pages")
    print(f"\n{len(SEEDS) * OPS} operations per run over seeds {SEEDS}, {lines} observations "
          f"compared; with the library: {copies} file copies, {allocations} huge page "
          f"allocations, {demoted} huge pages split into 4 KiB pages")
    assert len(SEEDS) * OPS >= 100_000 or "HPW_FUZZ_OPS" in os.environ
    # The library really served the memory the fuzzer used, every path of it.
    assert copies >= 20 * len(SEEDS) and allocations >= 20 * len(SEEDS)
    assert demoted >= 20 * len(SEEDS)
    assert free_pages(2048) == start


def test_fuzzer_output_depends_on_what_the_program_sees(fuzzdir: Path) -> None:
    """The comparison is worth something: a different seed, or a file changed
    under the fuzzer, gives a different output."""
    a, _ = fuzz(11, 2000, fuzzdir, preload=False)
    b, _ = fuzz(12, 2000, fuzzdir, preload=False)
    assert a != b
    f1 = fuzzdir / "f1"
    original = f1.read_bytes()
    try:
        f1.write_bytes(bytes([original[0] ^ 1]) + original[1:])
        c, _ = fuzz(11, 2000, fuzzdir, preload=False)
    finally:
        f1.write_bytes(original)
    assert c != a


def stress(path: Path, preload: bool) -> dict[str, int]:
    env = clean_env()
    if preload:
        env.update(LD_PRELOAD=str(LIBRARY), HUGEPAGE_WRAPPER_MIN_SIZE="64M")
    p = subprocess.run([str(MTSTRESS), str(path), "300"], env=env, capture_output=True,
                       text=True, timeout=600, check=False)
    assert p.returncode == 0, p.stderr
    if preload:
        assert ": loaded " in p.stderr
    return {k: int(v) for k, v in (line.split("=") for line in p.stdout.splitlines())}


def test_threads_unmapping_fragments_and_forking(pool: int, tmp_path: Path) -> None:
    big = tmp_path / "model.bin"
    subprocess.run([str(MAPTOOL), "mkfile", str(big), str(256 * MIB)], check=True)
    start = free_pages(2048)
    for preload in (False, True):
        r = stress(big, preload)
        assert r["fragments"] > 1000 and r["anon_ops"] > 0 and r["forks"] == 300
        assert r["fragment_mismatch"] == 0
        assert r["dontneed_failures"] == 0, "MADV_DONTNEED did not zero memory"
        assert r["hung_children"] == 0 and r["failed_children"] == 0
    assert free_pages(2048) == start
