"""Runs inside the two-node QEMU guest for bench.numa_placement: one server at a
time, for the same repacked (Q4_0) model, each until it answers /health,
then its memory per node from numa_maps. Writes /mnt/hpa/results.json.
Standard library only (the guest's Python 3.11)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

SHARE = Path("/mnt/hpa")
SERVER = "/usr/local/bin/llama-server"
MODEL = "/srv/models/bench.gguf"
PORT = 8090
BASE = [SERVER, "--model", MODEL, "-c", "256", "-np", "1", "--host", "127.0.0.1",
        "--port", str(PORT)]
CONTENDERS = {
    "plain llama.cpp, mmap": ["--numa", "distribute", "-t", "4"],
    "plain llama.cpp, dio": ["--numa", "distribute", "-t", "4", "--load-mode", "dio"],
    "wrapper, auto (--numa distribute)": ["--numa", "distribute", "-t", "4"],
    "wrapper, pinned to node 1": ["-t", "2"],
}


def by_node(pid: int) -> dict[str, dict[str, int]]:
    """Bytes per node: huge pages, and everything else the process maps."""
    out: dict[str, dict[str, int]] = {"huge": {}, "small": {}}
    for line in Path(f"/proc/{pid}/numa_maps").read_text().splitlines():
        size = re.search(r"kernelpagesize_kB=(\d+)", line)
        kb = int(size.group(1)) if size else 4
        kind = "huge" if kb >= 2048 else "small"
        for node, pages in re.findall(r"\bN(\d+)=(\d+)", line):
            out[kind][node] = out[kind].get(node, 0) + int(pages) * kb * 1024
    return out


def ready(proc: subprocess.Popen[bytes], timeout: float = 900) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=5) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.2)
    return None


def main() -> None:
    subprocess.run(["dpkg", "-i", str(SHARE / "hugepage-agent.deb")], check=True,
                   capture_output=True)
    # the package starts the agent, whose pool for no models is empty: the
    # pools here are set by hand, the same for every contender
    subprocess.run(["systemctl", "disable", "--now", "hugepage-agent.service"], check=True,
                   capture_output=True)
    shutil.copy(SHARE / "llama-server", SERVER)
    os.chmod(SERVER, 0o755)
    Path(MODEL).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(SHARE / "model.gguf", MODEL)
    for node in (0, 1):
        Path(f"/sys/devices/system/node/node{node}/hugepages/hugepages-2048kB/"
             "nr_hugepages").write_text("200")
    cfg = Path("/etc/hugepage-agent/config.toml")
    cfg.write_text(f'[server]\nbinary = "{SERVER}"\n')
    results = {}
    runs = int((SHARE / "runs").read_text()) if (SHARE / "runs").exists() else 1
    for run in range(runs):
        for name, args in CONTENDERS.items():
            argv = [*BASE, *args]
            if name.startswith("wrapper, auto"):
                argv = ["hugepage-agent", "exec", "--", *argv]
            elif name.startswith("wrapper, pinned"):
                argv = ["numactl", "--cpunodebind=1", "hugepage-agent", "exec", "--numa", "1",
                        "--", *argv]
            subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=False)
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            secs = ready(proc)
            entry = {"ready": secs, "memory": by_node(proc.pid) if secs is not None else None}
            proc.terminate()
            proc.wait(120)
            results.setdefault(name, []).append(entry)
            (SHARE / "results.json").write_text(json.dumps(results, indent=1))
            print(name, run, entry, flush=True)


if __name__ == "__main__":
    main()
