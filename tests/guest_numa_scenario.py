"""Runs inside the two-node QEMU guest (tests/numaguest.py boots it): installs
the agent from its .deb, serves two models (one spread with `--numa
distribute`, one pinned to node 1), a plain llama-server for comparison, then
starves node 1's pool and restarts the pinned model. It asserts nothing: it
records what it saw (status JSON, raw numa_maps, thread affinities, pools,
journal lines) in /mnt/hpa/results.json, and the tests on the host judge.

Python 3.11 of the guest's Debian, standard library only.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))  # guestlib.py, copied beside it
from guestlib import SHARE, complete, journal, out, run, save, status, step, wait_health

MODELS = Path("/srv/models")
SERVER = "/usr/local/bin/llama-server"
ARGS = ["-c", "256", "-np", "1", "--host", "127.0.0.1"]
SPREAD_PORT, PINNED_PORT, PLAIN_PORT = 8081, 8082, 8083


def ready(port: int, timeout: float = 900) -> bool:
    return wait_health(port, timeout) is not None


def process(pid: int) -> dict[str, Any]:
    """What the host parses itself: the raw numa_maps and each thread's CPUs."""
    threads = {}
    for st in glob.glob(f"/proc/{pid}/task/*/status"):
        for line in Path(st).read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                threads[st.split("/")[4]] = line.split(":", 1)[1].strip()
    return {"pid": pid, "numa_maps": Path(f"/proc/{pid}/numa_maps").read_text(),
            "threads": threads}


def pools() -> dict[str, dict[str, int]]:
    res = {}
    for d in sorted(glob.glob("/sys/devices/system/node/node*/hugepages/hugepages-2048kB")):
        node = d.split("/")[5].removeprefix("node")
        res[node] = {k: int(Path(f"{d}/{k}_hugepages").read_text()) for k in ("nr", "free")}
    return res


def model_pid(data: dict[str, Any], name: str) -> int:
    return next(int(m["pid"] or 0) for m in data["models"] if m["name"] == name)


def main() -> int:
    step("install")
    run("dpkg", "-i", str(SHARE / "hugepage-agent.deb"))
    shutil.copy(SHARE / "llama-server", SERVER)
    os.chmod(SERVER, 0o755)
    MODELS.mkdir(parents=True, exist_ok=True)
    for name in ("spread", "pinned"):
        shutil.copy(SHARE / "model.gguf", MODELS / f"{name}.gguf")
        os.chmod(MODELS / f"{name}.gguf", 0o644)
    cfg = f"""
[metrics]
textfile_dir = ""

[reserve]
pretouch = "never"

[[model]]
name = "spread"
path = "{MODELS}/spread.gguf"
args = {json.dumps([*ARGS, "--port", str(SPREAD_PORT), "--numa", "distribute", "-t", "4"])}

[[model]]
name = "pinned"
path = "{MODELS}/pinned.gguf"
args = {json.dumps([*ARGS, "--port", str(PINNED_PORT), "-t", "2"])}
numa = 1
"""
    Path("/etc/hugepage-agent").mkdir(exist_ok=True)
    Path("/etc/hugepage-agent/config.toml").write_text(cfg)
    out["dry_run"] = run("hugepage-agent", "apply", "--dry-run", check=False).stdout
    step("start the agent and its models")
    run("systemctl", "restart", "hugepage-agent.service")
    out["ready"] = {"spread": ready(SPREAD_PORT), "pinned": ready(PINNED_PORT)}
    run("hugepage-agent", "status", "--wait", "600", check=False, timeout=700)
    step("both models served")
    data = status()
    out["status"] = data
    out["pools"] = pools()
    out["processes"] = {n: process(model_pid(data, n)) for n in ("spread", "pinned")
                        if model_pid(data, n)}
    out["completions"] = {"spread": complete(SPREAD_PORT), "pinned": complete(PINNED_PORT)}
    out["journal"] = {n: journal(f"llama-server@{n}.service") for n in ("spread", "pinned")}
    out["dropin"] = Path("/etc/systemd/system/llama-server@pinned.service.d/"
                         "50-hugepage-agent.conf").read_text()
    save()

    step("a plain llama-server with the spread model's arguments, no wrapper")
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    plain = subprocess.Popen([SERVER, "--model", str(MODELS / "spread.gguf"), *ARGS, "--port",
                              str(PLAIN_PORT), "--numa", "distribute", "-t", "4"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out["plain_ready"] = ready(PLAIN_PORT)
    out["plain"] = process(plain.pid)
    out["plain_completion"] = complete(PLAIN_PORT)
    plain.send_signal(signal.SIGTERM)
    plain.wait(timeout=120)
    save()

    step("node 1's pool too small for the pinned model")
    Path("/etc/hugepage-agent/config.d").mkdir(exist_ok=True)
    Path("/etc/hugepage-agent/config.d/50-short.toml").write_text(
        '[pool]\nnodes = { "0" = "95%", "1" = "5%" }\n')
    out["reload"] = run("hugepage-agent", "reload", check=False).stdout
    since = run("date", "+%Y-%m-%d %H:%M:%S").stdout.strip()
    time.sleep(1)
    run("systemctl", "restart", "llama-server@pinned.service", check=False)
    out["short_ready"] = ready(PINNED_PORT)
    time.sleep(3)
    out["short_pools"] = pools()
    out["short_status"] = status()
    out["short_completion"] = complete(PINNED_PORT)
    out["short_journal"] = journal("llama-server@pinned.service", since)
    out["short_unit"] = run("systemctl", "show", "llama-server@pinned.service", "-p",
                            "NRestarts,ExecMainStatus,ActiveState,MainPID").stdout
    step("done")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        save()
