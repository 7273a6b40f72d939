"""Runs inside the QEMU guest (tests/numaguest.py boots it; Debian 12 with
systemd as PID 1, cgroup v2, Debian's podman and docker.io): installs the
agent from its .deb, imports the test images (Debian roots with llama-server
as the entrypoint), and serves one model from a Podman image, one from a
Docker image and one from a Docker Compose service the scenario starts with
the override `hugepage-agent compose` prints; then a plain llama-server for
comparison, the health-check-style commands, a bullseye image (glibc 2.31),
a removed model and a changed image. It asserts nothing: it records what it
saw in /mnt/hpa/results.json, and tests/e2e/test_containers.py judges.

Python 3.11 of the guest's Debian, standard library only.
"""

from __future__ import annotations

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
from guestlib import (
    SHARE,
    complete,
    journal,
    model_entry,
    out,
    run,
    save,
    status,
    step,
    wait_health,
)

MODELS = Path("/srv/models")
COMPOSE = Path("/srv/compose")
SERVER = "/usr/local/bin/llama-server"
ARGS = ["-c", "256", "-np", "1", "--host", "127.0.0.1", "-t", "2"]
PORTS = {"pod": 8091, "dock": 8092, "cpu0": 8093, "plain": 8094}
IMAGE = "localhost/hpa-llama"
# the compose service's command line, which its model's args repeat: the
# override then puts the agent's load mode in front of it
CPU0_COMMAND = ["--model", "/app/models/model.gguf", *ARGS, "--port", str(PORTS["cpu0"])]
CPU0 = (f'\n[[model]]\nname = "cpu0"\npath = "{MODELS}/cpu0.gguf"\n'
        f'container = "llama-cpu-0"\nargs = {json.dumps(CPU0_COMMAND)}\n')
CHANGES = ["--change", 'ENTRYPOINT ["/app/llama-server"]', "--change", "WORKDIR /app"]
out["seconds"] = {}


def said(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    return {"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr}


def smaps(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/smaps").read_text()
    except OSError as e:
        return f"error: {e}"


def names(runtime: str) -> list[str]:
    r = run(runtime, "ps", "-a", "--format", "{{.Names}}", check=False)
    return sorted(r.stdout.split())


def config(models: str) -> None:
    Path("/etc/hugepage-agent/config.toml").write_text(
        '[metrics]\ntextfile_dir = ""\n\n[reserve]\npretouch = "never"\n' + models)


def model_toml(name: str, extra: str, port: int) -> str:
    return (f'\n[[model]]\nname = "{name}"\npath = "{MODELS}/{name}.gguf"\n'
            f"args = {json.dumps([*ARGS, '--port', str(port)])}\n{extra}\n")


def setup() -> None:
    step("install")
    run("dpkg", "-i", str(SHARE / "hugepage-agent.deb"))
    shutil.copy(SHARE / "llama-server", SERVER)
    os.chmod(SERVER, 0o755)
    MODELS.mkdir(parents=True, exist_ok=True)
    for name in ("pod", "dock", "cpu0", "old"):
        shutil.copy(SHARE / "model.gguf", MODELS / f"{name}.gguf")
        os.chmod(MODELS / f"{name}.gguf", 0o644)
    run("systemctl", "start", "docker.service")
    out["versions"] = {r: run(r, "--version", check=False).stdout.strip()
                       for r in ("podman", "docker", "docker-compose")}
    step("import the images")
    for runtime, suite in (("podman", "bookworm"), ("podman", "bullseye"),
                           ("docker", "trixie"), ("docker", "bookworm")):
        t = time.monotonic()
        run(runtime, "import", *CHANGES, str(SHARE / f"image-{suite}.tar"),
            f"{IMAGE}:{suite}")
        out["seconds"][f"import {runtime} {suite}"] = round(time.monotonic() - t, 1)


def compose_project() -> None:
    """The seed's layout: service llama-cpu-0, its model from .env."""
    COMPOSE.mkdir(parents=True, exist_ok=True)
    (COMPOSE / ".env").write_text(f"LLAMA_CPU0_MODEL={MODELS}/cpu0.gguf\n")
    (COMPOSE / "docker-compose.yml").write_text(f"""\
services:
  llama-cpu-0:
    image: {IMAGE}:bookworm
    container_name: llama-cpu-0
    network_mode: host
    volumes:
      - ${{LLAMA_CPU0_MODEL}}:/app/models/model.gguf:ro
    command: {json.dumps(CPU0_COMMAND)}
""")


def serve() -> None:
    step("configure the container models")
    Path("/etc/hugepage-agent").mkdir(exist_ok=True)
    config(model_toml("pod", f'image = "{IMAGE}:bookworm"', PORTS["pod"])
           + model_toml("dock", f'image = "{IMAGE}:trixie"\nruntime = "docker"', PORTS["dock"])
           + CPU0)
    out["dry_run"] = said(run("hugepage-agent", "apply", "--dry-run", check=False))
    compose_project()
    override = run("hugepage-agent", "compose", "cpu0", check=False)
    out["compose_override"] = said(override)
    (COMPOSE / "docker-compose.override.yml").write_text(override.stdout)
    step("start the agent, its models and the compose service")
    t = time.monotonic()
    run("systemctl", "restart", "hugepage-agent.service")
    out["compose_up"] = said(run("docker-compose", "up", "-d", check=False, cwd=str(COMPOSE)))
    deadline = t + 420  # under TCG: a minute or two each, loading side by side
    out["ready"] = {n: wait_health(PORTS[n], timeout=max(1.0, deadline - time.monotonic()))
                    for n in ("pod", "dock", "cpu0")}
    out["seconds"]["agent start to all healthy"] = round(time.monotonic() - t, 1)
    if None in out["ready"].values():  # what went wrong, then stop: the tests say which
        out["journal"] = {n: journal(f"llama-container@{n}.service") for n in ("pod", "dock")}
        out["agent_journal"] = journal("hugepage-agent.service")
        out["status"] = status()
        raise SystemExit(f"not served: {out['ready']}")
    run("hugepage-agent", "status", "--wait", "300", check=False, timeout=400)
    step("the three models served")
    data = out["status"] = status()
    pids = {n: int(model_entry(data, n)["pid"] or 0) for n in ("pod", "dock", "cpu0")}
    out["smaps"] = {n: smaps(pid) for n, pid in pids.items()}
    out["cgroup"] = {n: Path(f"/proc/{pid}/cgroup").read_text() for n, pid in pids.items()
                     if pid}
    out["completions"] = {n: complete(PORTS[n]) for n in ("pod", "dock", "cpu0")}
    out["units"] = {n: run("systemctl", "show", f"llama-container@{n}.service", "-p",
                           "ActiveState,NRestarts,MainPID,ControlGroup", check=False).stdout
                    for n in ("pod", "dock")}
    out["journal"] = {n: journal(f"llama-container@{n}.service") for n in ("pod", "dock")}
    out["agent_journal"] = journal("hugepage-agent.service")
    out["compose_logs"] = said(run("docker", "logs", "llama-cpu-0", check=False))
    out["inspect"] = {
        "pod": said(run("podman", "inspect", "hugepage-agent-pod", check=False)),
        "dock": said(run("docker", "inspect", "hugepage-agent-dock", check=False)),
        "cpu0": said(run("docker", "inspect", "llama-cpu-0", check=False))}
    out["prometheus"] = run("hugepage-agent", "status", "--prometheus", check=False).stdout
    save()


def plain() -> None:
    step("a plain llama-server with the same arguments, no wrapper")
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    proc = subprocess.Popen([SERVER, "--model", str(MODELS / "pod.gguf"), *ARGS, "--port",
                             str(PORTS["plain"])], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    out["plain_ready"] = wait_health(PORTS["plain"])
    out["plain_completion"] = complete(PORTS["plain"])
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)


def small_processes() -> None:
    step("health-check-style commands in the containers, with and without the preload")
    url = f"http://127.0.0.1:{PORTS['pod']}"
    checks: dict[str, Any] = {}
    for runtime, name, port in (("podman", "hugepage-agent-pod", PORTS["pod"]),
                                ("docker", "hugepage-agent-dock", PORTS["dock"]),
                                ("docker", "llama-cpu-0", PORTS["cpu0"])):
        url = f"http://127.0.0.1:{port}"
        for path in ("/health", "/nonexistent"):
            with_lib = run(runtime, "exec", name, "curl", "-sS", "-f", url + path, check=False)
            without = run(runtime, "exec", name, "env", "-u", "LD_PRELOAD", "curl", "-sS", "-f",
                          url + path, check=False)
            checks[f"{name} {path}"] = {"with": said(with_lib), "without": said(without)}
        checks[f"{name} env"] = said(run(runtime, "exec", name, "sh", "-c", "echo $LD_PRELOAD",
                                         check=False))
    out["small"] = checks


def refused_image() -> None:
    step("a bullseye image (glibc 2.31)")
    Path("/etc/hugepage-agent/config.d").mkdir(exist_ok=True)
    Path("/etc/hugepage-agent/config.d/60-old.toml").write_text(
        model_toml("old", f'image = "{IMAGE}:bullseye"', 8095))
    since = run("date", "+%Y-%m-%d %H:%M:%S").stdout.strip()
    time.sleep(1)
    out["old_apply"] = said(run("hugepage-agent", "apply", "--dry-run", check=False))
    out["old_reload"] = said(run("hugepage-agent", "reload", check=False))
    out["old_start"] = said(run("systemctl", "start", "llama-container@old.service", check=False))
    time.sleep(2)
    out["old_active"] = run("systemctl", "is-active", "llama-container@old.service",
                            check=False).stdout.strip()
    out["old_journal"] = journal("llama-container@old.service", since)
    out["old_agent_journal"] = journal("hugepage-agent.service", since)
    out["old_containers"] = {"podman": names("podman"), "docker": names("docker")}
    out["old_listening"] = wait_health(8095, timeout=3)
    out["old_status"] = status()
    Path("/etc/hugepage-agent/config.d/60-old.toml").unlink()


def day_two() -> None:
    step("remove model pod; change dock's image (restart manual)")
    config(model_toml("dock", f'image = "{IMAGE}:bookworm"\nruntime = "docker"\n'
                      'restart = "manual"', PORTS["dock"])
           + CPU0)
    out["day2_reload"] = said(run("hugepage-agent", "reload", check=False))
    time.sleep(2)
    out["day2_pod_active"] = run("systemctl", "is-active", "llama-container@pod.service",
                                 check=False).stdout.strip()
    out["day2_containers"] = {"podman": names("podman"), "docker": names("docker")}
    out["day2_status"] = status()


def main() -> int:
    setup()
    serve()
    plain()
    small_processes()
    refused_image()
    day_two()
    step("done")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        save()
