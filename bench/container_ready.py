"""Benchmark: ready time and memory of a model served from a container image
against the same model on the host, on this machine with Podman, a ~1 GiB
Q4_0 model (repacked at load), -c 4096, 2 threads, warm and cold:

  host, agent        the host's llama-server as the agent's units run it
                     (`hugepage-agent exec`: wrapper, load mode per start)
  container, agent   the same server in a bookworm image, run with the
                     command `run-container` builds (wrapper mounted and
                     preloaded, the same load mode, the server unprivileged)
  container, plain   the same image without the library: `podman run` with
                     the model mounted, llama.cpp's default (mmap)
  host, plain        plain llama.cpp on the host (mmap), the reference

systemd is not PID 1 here, so the container runs without --cgroups=split
(the guest test runs it under systemd), with explicit rlimits (root here lacks
CAP_SYS_RESOURCE, and runc fails to set podman's default ones). Runs are interleaved; medians of
--runs. Printed: ready time (start to /health 200) and its ratio to plain
llama.cpp on the host, the server's memory in huge pages and in 4 KiB pages.
Needs root; restores nr_hugepages and removes its image and containers.

  sudo ~/.cache/hugepage-agent/venv/bin/python -m bench.container_ready [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tests import ggufmodel, images
from tests.conftest import LIBRARY
from tests.llama import REPO, Server, agent_cmd, free_port, llama_bin

from bench.llama_e2e import machine, status_kb, warm
from bench.ready_time import GIB, NR, SYSCTL, agent, drop_caches

sys.path.insert(0, str(REPO / "agent"))
from hugepage_agent import containerargs, execwrap, footprint, modelstart
from hugepage_agent.config import Config, WrapperConfig

IMAGE = "localhost/hugepage-agent-bench:bookworm"
ARGS = ["--ctx-size", "4096", "--threads", "2", "--host", "127.0.0.1"]
RLIMITS = ("--ulimit=nofile=1024:1024", "--ulimit=nproc=1000:1000")
HOST_AGENT, CT_AGENT, CT_PLAIN, HOST_PLAIN = (
    "host, agent", "container, agent", "container, plain", "host, plain")
WHO = (HOST_AGENT, CT_AGENT, CT_PLAIN, HOST_PLAIN)


def container_argv(model: Path, port: int, plain: bool, llama: Path) -> list[str]:
    """What run-container runs (less --cgroups=split), or the plain image."""
    name = "bench-plain" if plain else "bench"
    if plain:
        return ["podman", "run", "--rm", "--name", containerargs.container_name(name),
                "--network=host", *RLIMITS, "--mount",
                f"type=bind,source={model},target={containerargs.model_path(str(model))},"
                "readonly", IMAGE, "--model", containerargs.model_path(str(model)), *ARGS,
                "--port", str(port)]
    cfg = Config(wrapper=WrapperConfig(library=str(LIBRARY)))
    lm = footprint.load_mode(cfg.server.load_mode, str(llama), str(model), ARGS,
                             cfg.wrapper.min_size)
    choice = modelstart.choose(lm, str(model), cfg.server.page_cache)
    env = {**execwrap.wrapper_env(cfg, str(LIBRARY)), **modelstart.choice_env(choice,
                                                                               str(model))}
    spec = containerargs.RunSpec(runtime="podman", image=IMAGE, name=name, model=str(model),
                                 args=(*ARGS, "--port", str(port)), runtime_args=RLIMITS,
                                 library=str(LIBRARY), user=(65534, 65534), split=False)
    return containerargs.run_argv(spec, "podman", env, choice.args)


def pid_of(container: str) -> int:
    r = subprocess.run(["podman", "inspect", "--format", "{{.State.Pid}}", container],
                       capture_output=True, text=True, check=True)
    return int(r.stdout.strip())


def memory(pid: int) -> dict[str, float]:
    return {"huge": status_kb(pid, "HugetlbPages") / (1 << 20),
            "small": (status_kb(pid, "RssAnon") + status_kb(pid, "RssFile")) / (1 << 20)}


def start(who: str, model: Path, llama: Path, cfg: Path, log: Path) -> dict[str, float]:
    if who in (HOST_AGENT, HOST_PLAIN):
        wrap = agent_cmd("exec", "--config", str(cfg), "--") if who == HOST_AGENT else []
        with Server(llama, model, log, wrap=wrap, args=["--ctx-size", "4096"]) as srv:
            secs = srv.wait_ready()
            return {"ready": secs, **memory(srv.pid)}
    port = free_port()
    argv = container_argv(model, port, who == CT_PLAIN, llama)
    name = argv[argv.index("--name") + 1]
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT)
    try:
        secs = Server.running(proc, port, log).wait_ready(600)
        return {"ready": secs, **memory(pid_of(name))}
    finally:
        subprocess.run(["podman", "stop", "-t", "10", name], capture_output=True, check=False)
        proc.wait(60)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    subprocess.run(["make", "-s", "-C", str(REPO / "wrapper_c"), "all"], check=True)
    llama = llama_bin() / "llama-server"
    model = ggufmodel.cached(ggufmodel.Shape.for_size(GIB, qtype="Q4_0"))
    os.chmod(model, 0o644)
    saved = NR.read_text().strip()
    saved_sysctl = SYSCTL.read_text() if SYSCTL.exists() else None
    tmp = Path(tempfile.mkdtemp())
    print(machine())
    images.import_image("podman", images.with_server(images.base("bookworm"), llama,
                                                     tmp / "image.tar"), IMAGE)
    cfg = tmp / "agent.toml"
    cfg.write_text(f'[wrapper]\nlibrary = "{LIBRARY}"\n[thp]\nenabled = "keep"\n'
                   f'defrag = "keep"\n[metrics]\ntextfile_dir = ""\n[[model]]\nname = "bench"\n'
                   f'path = "{model}"\nargs = {json.dumps(ARGS[:2])}\n')
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        c: {w: [] for w in WHO} for c in ("warm", "cold")}
    try:
        agent("apply", "--config", str(cfg))
        for run in range(args.runs):
            for case in ("warm", "cold"):
                order = WHO[run % len(WHO):] + WHO[:run % len(WHO)]
                for who in order:
                    if case == "cold":
                        drop_caches()
                    else:
                        warm(model)
                    r = start(who, model, llama, cfg, tmp / f"{case}-{run}.log")
                    results[case][who].append(r)
                    print(f"run {run + 1} {case} {who}: ready {r['ready']:.2f} s, huge "
                          f"{r['huge']:.2f} GiB, 4 KiB {r['small']:.2f} GiB", flush=True)
    finally:
        NR.write_text(saved)
        if saved_sysctl is None:
            SYSCTL.unlink(missing_ok=True)
        else:
            SYSCTL.write_text(saved_sysctl)
        subprocess.run(["podman", "rmi", "-f", IMAGE], capture_output=True, check=False)
    size = model.stat().st_size / GIB
    print(f"\n{model.name} ({size:.2f} GiB Q4_0), -c 4096, 2 threads; medians of {args.runs} "
          "interleaved runs")
    print("| case | contender | ready (s) | vs host plain | huge pages (GiB) | 4 KiB RSS (GiB) |")
    print("|---|---|---|---|---|---|")
    for case, rows in results.items():
        base = statistics.median(r["ready"] for r in rows[HOST_PLAIN])
        for who in WHO:
            med = {k: statistics.median(r[k] for r in rows[who]) for k in ("ready", "huge",
                                                                          "small")}
            print(f"| {case} | {who} | {med['ready']:.2f} | {med['ready'] / base:.2f} "
                  f"| {med['huge']:.2f} | {med['small']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
