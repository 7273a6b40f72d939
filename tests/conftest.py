"""Shared fixtures: root checks, saving and restoring the kernel state that
tests change, and the wrapper build."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WRAPPER_DIR = REPO / "wrapper_c"
LIBRARY = WRAPPER_DIR / "build" / "libhugepage-wrapper.so"
MAPTOOL = WRAPPER_DIR / "build" / "tests" / "maptool"
HUGEPAGES = Path("/sys/kernel/mm/hugepages")
THP = Path("/sys/kernel/mm/transparent_hugepage")

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root: changes kernel huge page state")


def read_int(path: Path) -> int:
    return int(path.read_text().split()[0])


def pool_knob(kb: int) -> Path:
    return HUGEPAGES / f"hugepages-{kb}kB" / "nr_hugepages"


def _overcommit(kb: int) -> Path:
    return HUGEPAGES / f"hugepages-{kb}kB" / "nr_overcommit_hugepages"


def free_pages(kb: int) -> int:
    return read_int(HUGEPAGES / f"hugepages-{kb}kB" / "free_hugepages")


def set_pool(kb: int, pages: int) -> int:
    """Write a pool size and return what the kernel really gave."""
    pool_knob(kb).write_text(str(pages))
    return read_int(pool_knob(kb))


def memfd_hugetlb_bytes(smaps: Path, model: str | Path) -> int:
    """Huge page bytes of the wrapper's copy of `model` in a process's smaps, read
    here independently of the agent's own parser."""
    total = 0
    current = False
    for line in smaps.read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and ":" not in head[0] and len(head) >= 5:
            current = line.endswith(f"/memfd:hugepage-wrapper:{model} (deleted)")
        elif current and line.startswith(("Shared_Hugetlb:", "Private_Hugetlb:")):
            total += int(head[1]) * 1024
    return total


def _thp_knobs() -> list[Path]:
    knobs = [THP / "enabled", THP / "defrag"]
    knobs += sorted(THP.glob("hugepages-*kB/enabled"))
    return [k for k in knobs if k.exists()]


def _selected(text: str) -> str:
    start = text.find("[")
    return text[start + 1:text.find("]")] if start >= 0 else text.strip()


def cached_bytes(path: Path) -> int:
    """A file's page cache, by util-linux's fincore (independently of the agent)."""
    out = subprocess.run(["fincore", "-b", "-n", "-o", "RES", str(path)], capture_output=True,
                         text=True, check=True).stdout.split()
    return int(out[0])


@contextlib.contextmanager
def saved_kernel_state() -> Iterator[None]:
    """Saves and restores the pools, THP knobs and the agent's persistence files."""
    pools = {kb: read_int(pool_knob(kb)) for kb in (2048, 1048576) if pool_knob(kb).exists()}
    overcommit = {kb: read_int(_overcommit(kb)) for kb in pools}
    thp = {k: _selected(k.read_text()) for k in _thp_knobs()}
    files = {}
    for f in ("/etc/sysctl.d/80-hugepage-agent.conf", "/etc/tmpfiles.d/80-hugepage-agent.conf",
              "/run/hugepage-agent/last-apply.json", "/run/hugepage-agent/footprints.json",
              "/run/hugepage-agent/pretouch.json"):
        p = Path(f)
        files[p] = p.read_bytes() if p.exists() else None
    try:
        for kb, n in overcommit.items():  # surplus pages would blur every pool count
            if n:
                _overcommit(kb).write_text("0")
        yield
    finally:
        for kb, n in overcommit.items():
            if n:
                with contextlib.suppress(OSError):
                    _overcommit(kb).write_text(str(n))
        for kb, n in pools.items():
            with contextlib.suppress(OSError):
                pool_knob(kb).write_text(str(n))
        for k, v in thp.items():
            with contextlib.suppress(OSError):
                k.write_text(v)
        for p, data in files.items():
            if data is None:
                p.unlink(missing_ok=True)
            else:
                p.write_bytes(data)


@pytest.fixture
def kernel_state() -> Iterator[None]:
    if not IS_ROOT:
        pytest.skip("needs root: changes kernel huge page state")
    with saved_kernel_state():
        yield


@pytest.fixture(scope="session")
def wrapper_build() -> Path:
    """Builds the library and the test programs (warnings are errors)."""
    subprocess.run(["make", "-s", "-C", str(WRAPPER_DIR), "WERROR=1", "all"], check=True)
    assert LIBRARY.exists() and MAPTOOL.exists()
    return LIBRARY


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .deb and the .rpm, built once from this tree (packaging/build-*.sh)."""
    out = tmp_path_factory.mktemp("dist")
    for script in ("build-deb.sh", "build-rpm.sh"):
        r = subprocess.run(["bash", str(REPO / "packaging" / script), str(out)],
                           capture_output=True, text=True, check=False)
        assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def demo_cache() -> Path:
    """The demo's heavy parts, as a first run on this machine caches them
    (scripts/llama.sh, scripts/demo.sh model): handed to the container's
    ~/.cache like the cache a second run on a fresh machine finds."""
    r = subprocess.run(["bash", "scripts/demo.sh", "model"], cwd=REPO, capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stderr
    return Path(r.stdout.strip())


ROOT_TIERS = ("kernel", "systemd", "e2e")  # tests/unit needs no root


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tiers are directories: a test under tests/kernel, tests/systemd or
    tests/e2e is marked `root` (`-m "not root"` selects the pure tier)."""
    for item in items:
        if Path(str(item.fspath)).parent.name in ROOT_TIERS:
            item.add_marker(pytest.mark.root)
