"""The wrapper under a cgroup's hugetlb limits, on the real kernel (cgroup v2,
where this machine mounts it): a limit of 0 on faults (hugetlb.2MB.max, what a
Kubernetes pod without hugepages-2Mi and runc before 1.1.10 give) made the
first touch of a wrapper allocation die of SIGBUS with the pool's pages free;
a limit of 0 on reservations (hugetlb.2MB.rsvd.max) made the fallback line
blame the pool. Now both fall back before crossing the limit, name it and its
file, and the program runs to the end. The cgroup and the controller setting
made here are removed afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LIBRARY, MAPTOOL, WRAPPER_DIR, needs_root, set_pool

MIB = 1 << 20
ALLOCTOOL = WRAPPER_DIR / "build" / "tests" / "alloctool"
pytestmark = needs_root


def cgroup2_mount() -> Path | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        head, _, tail = line.partition(" - ")
        if tail.split()[:1] == ["cgroup2"]:
            return Path(head.split()[4])
    return None


@pytest.fixture
def limited(kernel_state: None, wrapper_build: Path) -> Iterator[Path]:
    """A cgroup of its own with the hugetlb controller, and a 2 MiB pool of 64
    free pages."""
    mount = cgroup2_mount()
    if mount is None or "hugetlb" not in (mount / "cgroup.controllers").read_text().split():
        pytest.skip("the kernel mounts no cgroup v2 hierarchy with the hugetlb controller")
    own = Path("/proc/self/cgroup").read_text().splitlines()
    parent = mount / next(line[3:] for line in own if line.startswith("0::")).lstrip("/")
    control = parent / "cgroup.subtree_control"
    had = "hugetlb" in control.read_text().split()
    if not had:
        control.write_text("+hugetlb")
    group = parent / f"hpw-limit-{os.getpid()}"
    group.mkdir()
    set_pool(2048, 64)
    try:
        yield group
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            os.kill(int(pid), signal.SIGKILL)
        group.rmdir()
        if not had:
            control.write_text("-hugetlb")


def in_group(group: Path, cmd: list[str], env: dict[str, str],
             stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items()
            if not k.startswith("HUGEPAGE_WRAPPER") and k != "LD_PRELOAD"}
    full.update(env, LD_PRELOAD=str(LIBRARY))
    return subprocess.run(["sh", "-c", f'echo $$ > "{group}/cgroup.procs" && exec "$@"', "sh",
                           *cmd], env=full, capture_output=True, text=True, timeout=120,
                          input=stdin, check=False)


@pytest.mark.parametrize("limit", ["hugetlb.2MB.max", "hugetlb.2MB.rsvd.max"])
def test_an_allocation_past_a_cgroup_limit_falls_back_naming_it(limited: Path,
                                                               limit: str) -> None:
    (limited / limit).write_text("0")
    r = in_group(limited, [str(ALLOCTOOL), "all", str(32 * MIB)], {})
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)  # no SIGBUS (-7)
    assert "huge=0" in r.stdout and "failures=0" in r.stdout, r.stdout
    line = f"cgroup hugetlb limit: need 16 x 2 MiB pages, 0 allowed by {limited}/{limit}"
    assert line in r.stderr and "served by libc in 4 KiB pages" in r.stderr, r.stderr
    assert "huge page pool short" not in r.stderr  # the pool had 64 free


def test_a_file_copy_past_a_cgroup_limit_maps_the_file(limited: Path, tmp_path: Path) -> None:
    (limited / "hugetlb.2MB.max").write_text(str(8 * 2 * MIB))  # 8 pages; the file needs 32
    model = tmp_path / "m.gguf"
    subprocess.run([str(MAPTOOL), "mkfile", str(model), str(64 * MIB)], check=True)
    r = in_group(limited, [str(MAPTOOL), "map", str(model), "0", str(64 * MIB)],
                 {"HUGEPAGE_WRAPPER_MIN_SIZE": str(16 * MIB)})
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert (f"{model}: cgroup hugetlb limit: need 32 x 2 MiB pages, 8 allowed by "
            f"{limited}/hugetlb.2MB.max; falling back to the regular file mapping") in r.stderr
    assert "compare=match" in r.stdout, r.stdout


def test_under_a_limit_that_is_high_enough_huge_pages_are_used(limited: Path) -> None:
    (limited / "hugetlb.2MB.max").write_text(str(32 * 2 * MIB))
    r = in_group(limited, [str(ALLOCTOOL), "hold", str(32 * MIB)], {}, stdin="")
    assert r.returncode == 0 and "huge=1" in r.stdout, (r.stdout, r.stderr)
    assert "cgroup hugetlb limit" not in r.stderr
    assert int((limited / "hugetlb.2MB.max").read_text()) == 32 * 2 * MIB


def test_a_limit_reached_midway_falls_back_from_there_on(limited: Path) -> None:
    """Blocks of 16 pages, several alive at once and from several threads,
    under a limit of 32 pages: some are served from huge pages, the ones past
    the limit by libc, and no touch of any raises SIGBUS (each block is
    faulted in when it is made, so the limit counts what is held)."""
    (limited / "hugetlb.2MB.max").write_text(str(32 * 2 * MIB))
    r = in_group(limited, [str(ALLOCTOOL), "all", str(32 * MIB)], {})
    assert r.returncode == 0 and "failures=0" in r.stdout, (r.returncode, r.stdout, r.stderr)
    assert f"allowed by {limited}/hugetlb.2MB.max; served by libc" in r.stderr, r.stderr
    assert "huge=1" in r.stdout  # the first block, within the limit
