"""A Debian 12 guest with two NUMA nodes of two CPUs each, booted under QEMU
(TCG: KVM does not boot on these VMs), for the placement tests.

The guest image, its kernel and initrd are built once by scripts/guest.sh and
cached; each boot uses them read-only (snapshot=on). What a run needs goes in
a directory shared over 9p (tag "hpa", /mnt/hpa in the guest): run.sh, which
the guest runs as root at boot before powering off, and its inputs; the
guest writes its output back there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NODE_MEM_MIB = 1536  # per node
CPUS_PER_NODE = 2


def image() -> Path:
    r = subprocess.run(["bash", str(REPO / "scripts" / "guest.sh")], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return Path(r.stdout.strip().splitlines()[-1])


def portable_server() -> Path:
    """llama-server built for any AVX2 CPU (QEMU's TCG emulates no AVX-512)."""
    r = subprocess.run(["bash", str(REPO / "scripts" / "llama.sh"), "--portable"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return Path(r.stdout.strip().splitlines()[-1]) / "llama-server"


def command(guest: Path, share: Path) -> list[str]:
    nodes = 2
    args = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-machine", "q35",
            "-smp", f"{nodes * CPUS_PER_NODE},sockets={nodes},cores={CPUS_PER_NODE}",
            "-m", f"{nodes * NODE_MEM_MIB}M"]
    for n in range(nodes):
        cpus = f"{n * CPUS_PER_NODE}-{(n + 1) * CPUS_PER_NODE - 1}"
        args += ["-object", f"memory-backend-ram,id=m{n},size={NODE_MEM_MIB}M",
                 "-numa", f"node,nodeid={n},cpus={cpus},memdev=m{n}"]
    args += ["-numa", "dist,src=0,dst=1,val=21",
             "-kernel", str(guest / "vmlinuz"), "-initrd", str(guest / "initrd.img"),
             "-append", "console=ttyS0 root=/dev/vda rw quiet",
             "-drive", f"file={guest / 'guest.img'},if=virtio,format=raw,snapshot=on",
             "-virtfs", f"local,path={share},mount_tag=hpa,security_model=none,id=hpa",
             "-display", "none", "-serial", f"file:{share / 'console.log'}",
             "-no-reboot", "-nic", "none"]
    return args


def run_scenario(share: Path, scenario: str, timeout: float) -> dict[str, Any]:
    """Boot the guest once to run tests/`scenario` (with tests/guestlib.py
    beside it) on what `share` holds; the results it recorded, which must end
    with the step "done"."""
    for name, to in ((scenario, "scenario.py"), ("guestlib.py", "guestlib.py")):
        shutil.copy(REPO / "tests" / name, share / to)
    (share / "run.sh").write_text("exec python3 /mnt/hpa/scenario.py\n")
    rc = boot(image(), share, timeout)
    log = (share / "run.log").read_text() if (share / "run.log").exists() else ""
    results = share / "results.json"
    assert results.exists(), f"the guest wrote no results (rc {rc}); its log:\n{log[-4000:]}"
    data: dict[str, Any] = json.loads(results.read_text())
    assert rc == 0 and data["steps"][-1] == "done", \
        f"the scenario stopped at {data['steps'][-1]!r} (rc {rc}):\n{log[-4000:]}"
    return data


def boot(guest: Path, share: Path, timeout: float) -> int:
    """Boot the guest once; it runs share/run.sh and powers off. The exit
    status of run.sh (-1: none was written, the guest did not finish)."""
    proc = subprocess.Popen(command(guest, share), stdin=subprocess.DEVNULL,
                            stdout=(share / "qemu.log").open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)
    rc = share / "run.rc"
    return int(rc.read_text().strip() or -1) if rc.exists() else -1
