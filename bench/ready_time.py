"""Benchmark: time to ready of llama-server, the agent's default against plain
llama.cpp, in the four cases an operator meets, for the ~2.2 GiB Q4_0 model
(repacked at load) and an F16 model of the same size, -c 4096, 2 threads:

  first    the first start after the pool is reserved: the pool given back
           and reserved again with `hugepage-agent apply` (its pre-touch
           included; the pages had gone back to the host), the file not cached
  warm     a restart with the model file in the page cache
  cold     a restart after the caches were dropped
  kept     a restart with `server.page_cache = "keep"` (the agent's previous
           start left the file in the page cache on purpose)

Contenders: plain llama.cpp (its default, mmap), plain llama.cpp reading
buffered (`--load-mode none`, the floor for a cached file), the agent's
default (`hugepage-agent exec`, as the units run it: the load mode chosen
from the page cache, the file dropped after the load), and in the first case
the agent without its pre-touch (`reserve.pretouch = "never"`). Runs are
interleaved; medians of --runs. Printed per case: ready time and its ratio to
plain llama.cpp, the page cache the model file holds after the start, and
the server's memory in huge pages and in 4 KiB pages. Needs root; restores
nr_hugepages and the persisted pool file.

In warm and cold, "agent, prefault everything" is the agent's default with
HUGEPAGE_WRAPPER_PREFAULT=1: every mapping faulted in at once, as under a NUMA
placement on a host with several nodes (on one node the wrapper prefaults
nothing unless a cgroup limit asks).

  sudo ~/.cache/hugepage-agent/venv/bin/python -m bench.ready_time [--runs 3]
       [--types Q4_0,F16] [--cases first,warm,cold,kept]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests import ggufmodel
from tests.llama import REPO, Server, agent_cmd, agent_env, llama_bin

from bench.llama_e2e import cached_bytes, machine, status_kb, warm

NR = Path("/proc/sys/vm/nr_hugepages")
SYSCTL = Path("/etc/sysctl.d/80-hugepage-agent.conf")
GIB = 1 << 30
CTX = 4096
ARGS = ["--ctx-size", str(CTX)]
PLAIN, FLOOR, AGENT, NO_TOUCH, KEEP, PREFAULT = (
    "plain llama.cpp (mmap)", "plain, buffered (none)", "agent default", "agent, no pre-touch",
    "agent, page_cache keep", "agent, prefault everything")
CASES = {"first": [PLAIN, AGENT, NO_TOUCH], "warm": [PLAIN, FLOOR, AGENT, PREFAULT],
         "cold": [PLAIN, FLOOR, AGENT, PREFAULT], "kept": [PLAIN, FLOOR, KEEP]}
SETTLE = 6.0  # after the pool is given back: the guest reports the freed memory to the host


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3")


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(agent_cmd(*args), env=agent_env(), capture_output=True, text=True,
                          check=False, cwd=REPO)


def write_config(tmp: Path, name: str, llama: Path, model: Path, extra: str) -> Path:
    """`extra` goes in [server], or opens a table of its own."""
    f = tmp / f"{name}.toml"
    f.write_text(f'[server]\nbinary = "{llama}"\n{extra}'
                 '[thp]\nenabled = "keep"\ndefrag = "keep"\n'
                 f'[[model]]\nname = "bench"\npath = "{model}"\nargs = ["--ctx-size", "{CTX}"]\n')
    return f


def reserve_fresh(cfg: Path) -> float:
    """Give the pool back, let the guest report the memory free, reserve again
    with the agent. Returns apply's seconds (reservation and pre-touch)."""
    agent("release", "--config", str(cfg))
    time.sleep(SETTLE)
    t0 = time.monotonic()
    r = agent("apply", "--config", str(cfg))
    if r.returncode != 0:
        raise RuntimeError(f"apply failed: {r.stdout}{r.stderr}")
    return time.monotonic() - t0


def start(llama: Path, model: Path, who: str, cfgs: dict[str, Path], log: Path) -> dict[str, float]:
    if who in (PLAIN, FLOOR):
        wrap: list[str] = []
        args = [*ARGS, *(["--load-mode", "none"] if who == FLOOR else [])]
    else:
        wrap = agent_cmd("exec", "--config", str(cfgs[who]), "--")
        if who == PREFAULT:  # what a NUMA placement costs on one node: every page at once
            wrap = ["env", "HUGEPAGE_WRAPPER_PREFAULT=1", *wrap]
        args = ARGS
    with Server(llama, model, log, wrap=wrap, args=args) as srv:
        secs = srv.wait_ready()
        srv.complete("the model", n=4)
        return {"ready": secs, "cache": cached_bytes(model) / GIB,
                "huge": status_kb(srv.pid, "HugetlbPages") / (1 << 20),
                "small": status_kb(srv.pid, "RssAnon") / (1 << 20)
                + status_kb(srv.pid, "RssFile") / (1 << 20)}


def one_model(qtype: str, runs: int, llama: Path, tmp: Path,
              cases: tuple[str, ...] = tuple(CASES)) -> None:
    model = ggufmodel.cached(ggufmodel.Shape.for_size(int(2.2 * GIB), qtype=qtype))
    cfgs = {AGENT: write_config(tmp, "agent", llama, model, ""),
            NO_TOUCH: write_config(tmp, "notouch", llama, model,
                                   '[reserve]\npretouch = "never"\n'),
            KEEP: write_config(tmp, "keep", llama, model, 'page_cache = "keep"\n')}
    cfgs[PREFAULT] = cfgs[AGENT]
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        c: {w: [] for w in whos} for c, whos in CASES.items()}
    applies: dict[str, list[float]] = {AGENT: [], NO_TOUCH: [], PLAIN: []}
    agent("apply", "--config", str(cfgs[AGENT]))
    for run in range(runs):
        for case, whos in CASES.items():
            if case not in cases:
                continue
            order = whos[run % len(whos):] + whos[:run % len(whos)]
            for who in order:
                if case == "first":
                    applies[who].append(reserve_fresh(cfgs.get(who, cfgs[AGENT])))
                    drop_caches()
                elif case == "warm":
                    warm(model)
                elif case == "cold":
                    drop_caches()
                elif who != KEEP:
                    warm(model)
                elif cached_bytes(model) < 0.95 * model.stat().st_size:
                    # kept: a previous start with page_cache = keep left the file cached
                    start(llama, model, KEEP, cfgs, tmp / "keep-prime.log")
                r = start(llama, model, who, cfgs, tmp / f"{qtype}-{case}-{run}.log")
                results[case][who].append(r)
                print(f"{qtype} run {run + 1} {case:5} {who}: ready {r['ready']:.2f} s, "
                      f"page cache after {r['cache']:.2f} GiB", flush=True)
    size = model.stat().st_size / GIB
    print(f"\n{qtype}: {model.name} ({size:.2f} GiB), -c {CTX}, 2 threads; medians of {runs} "
          "interleaved runs. apply (reserve and pre-touch) before the first start: "
          + ", ".join(f"{who} {statistics.median(v):.1f} s" for who, v in applies.items() if v))
    print("| case | contender | ready (s) | vs plain | vs buffered floor | page cache after "
          "(GiB) | of the file | huge pages (GiB) | 4 KiB RSS (GiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case, whos in CASES.items():
        if case not in cases:
            continue
        base = statistics.median(r["ready"] for r in results[case][PLAIN])
        floor = (statistics.median(r["ready"] for r in results[case][FLOOR])
                 if FLOOR in results[case] else None)
        for who in whos:
            rows = results[case][who]

            def med(key: str, rows: list[dict[str, float]] = rows) -> float:
                return statistics.median(r[key] for r in rows)

            vs_floor = f"{med('ready') / floor:.2f}" if floor else "-"
            print(f"| {case} | {who} | {med('ready'):.2f} | {med('ready') / base:.2f} "
                  f"| {vs_floor} | {med('cache'):.2f} | {med('cache') / size * 100:.0f}% "
                  f"| {med('huge'):.2f} | {med('small'):.2f} |")
    print()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--types", default="Q4_0,F16")
    ap.add_argument("--cases", default=",".join(CASES), help="of " + ", ".join(CASES))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    subprocess.run(["make", "-s", "-C", str(REPO / "wrapper_c"), "all"], check=True)
    llama = llama_bin() / "llama-server"
    saved = NR.read_text().strip()
    saved_sysctl = SYSCTL.read_text() if SYSCTL.exists() else None
    print(machine())
    tmp = Path(tempfile.mkdtemp())
    try:
        for qtype in args.types.split(","):
            one_model(qtype, args.runs, llama, tmp, tuple(args.cases.split(",")))
    finally:
        NR.write_text(saved)
        if saved_sysctl is None:
            SYSCTL.unlink(missing_ok=True)
        else:
            SYSCTL.write_text(saved_sysctl)
    return 0


if __name__ == "__main__":
    sys.exit(main())
