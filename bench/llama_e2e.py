"""Benchmark: llama-server and llama-bench on a ~4 GiB model, in one run, for
  - plain mmap (llama.cpp's default),
  - the seed's approach (tests' libseedwrap.so: anonymous MAP_HUGETLB + pread),
  - this wrapper (libhugepage-wrapper.so),
printing: time from start to /health ready (page cache warm, and cold after
dropping caches), prompt processing and token generation (llama-bench, mean
and spread), and memory after load (huge pages used, page cache held for the
model file, process RSS, FilePmdMapped of a plain mapping). Needs root.

  sudo ~/.cache/hugepage-agent/venv/bin/python -m bench.llama_e2e [--size-gib 4] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tests import ggufmodel
from tests.llama import Server, llama_bin

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "wrapper_c" / "build"
NR = Path("/proc/sys/vm/nr_hugepages")
# Seconds llama-bench waits after loading, before measuring: freeing gigabytes of
# page cache (the wrapper drops the model's) makes this VM's guest report the
# freed memory to the host for a second or two, which slowed the first samples
# after load by up to 25 % (measured: 38, 30, 39 t/s); steady state is what counts.
SETTLE = 5
CONTENDERS = {
    "plain mmap": {},
    "seed": {"LD_PRELOAD": str(BUILD / "tests" / "libseedwrap.so")},
    "hugepage-wrapper": {"LD_PRELOAD": str(BUILD / "libhugepage-wrapper.so")},
}


def free_huge() -> int:
    return int(Path("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages").read_text())


def cached_bytes(path: Path) -> int:
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout.strip()
    return int(out or 0)


def proc_status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def smaps_sum(pid: int, model: Path, key: str) -> int:
    total, current = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and ":" not in head[0] and len(head) >= 5:
            current = line.endswith(f" {model}")
        elif current and line.startswith(key + ":"):
            total += int(head[1]) * 1024
    return total


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def load_run(binary: Path, model: Path, env: dict[str, str], cold: bool,
             log: Path) -> dict[str, float]:
    if cold:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3")
    else:
        warm(model)
    before = free_huge()
    with Server(binary, model, log, env=env) as srv:
        secs = srv.wait_ready()
        srv.complete("the model", n=4)
        return {
            "ready_s": secs,
            "huge_used_gib": (before - free_huge()) * 2 / 1024,
            "cache_gib": cached_bytes(model) / (1 << 30),
            "rss_gib": proc_status_kb(srv.pid, "VmRSS") / (1 << 20),
            "pmd_gib": smaps_sum(srv.pid, model, "FilePmdMapped") / (1 << 30),
            "munmap_warnings": sum("munmap failed" in line
                                   for line in log.read_text(errors="replace").splitlines()),
        }


def bench_once(bench: Path, model: Path, env: dict[str, str], reps: int) -> dict[str, float]:
    full = dict(os.environ, **env)
    warm(model)
    out = subprocess.run([str(bench), "-m", str(model), "-p", "32", "-n", "16", "-t", "2",
                          "--delay", str(SETTLE),
                          "-r", str(reps), "-o", "json"], env=full, capture_output=True,
                         text=True, check=True).stdout
    return {("pp" if row.get("n_prompt", 0) else "tg"): float(row["avg_ts"])
            for row in json.loads(out)}


def bench_rounds(bench: Path, model: Path, rounds: int,
                 reps: int) -> dict[str, dict[str, list[float]]]:
    """llama-bench for every contender, interleaved over rounds (rotating the order),
    since this shared machine drifts by several percent from one minute to the next."""
    names = list(CONTENDERS)
    res: dict[str, dict[str, list[float]]] = {n: {"pp": [], "tg": []} for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            for kind, value in bench_once(bench, model, CONTENDERS[name], reps).items():
                res[name][kind].append(value)
            print(f"round {r + 1} {name}: pp {res[name]['pp'][-1]:.1f} "
                  f"tg {res[name]['tg'][-1]:.2f} t/s", flush=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=float, default=4.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3, help="llama-bench repetitions per round")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved llama-bench rounds")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    subprocess.run(["make", "-s", "-C", str(REPO / "wrapper_c"), "all"], check=True)
    bins = llama_bin()
    model = ggufmodel.cached(ggufmodel.Shape.for_size(int(args.size_gib * (1 << 30))))
    size_gib = model.stat().st_size / (1 << 30)
    saved = NR.read_text().strip()
    need = -(-model.stat().st_size // (2 << 20)) + 8
    tmp = Path(tempfile.mkdtemp())
    try:
        NR.write_text(str(need))
        if int(NR.read_text()) < need:
            print(f"the kernel gave only {NR.read_text().strip()} of {need} pages", file=sys.stderr)
            return 1
        load: dict[str, dict[str, list[dict[str, float]]]] = {
            n: {"warm": [], "cold": []} for n in CONTENDERS}
        for run in range(args.runs):
            for name, env in CONTENDERS.items():
                for mode in ("warm", "cold"):
                    r = load_run(bins / "llama-server", model, env, mode == "cold",
                                 tmp / f"{name}-{mode}-{run}.log")
                    load[name][mode].append(r)
                    print(f"run {run + 1} {name} {mode}: ready in {r['ready_s']:.2f} s",
                          flush=True)
        speed = bench_rounds(bins / "llama-bench", model, args.rounds, args.reps)
    finally:
        NR.write_text(saved)
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line), "?")
    print(f"\nMachine: {cpu}, {os.cpu_count()} CPUs, kernel {platform.release()}; "
          f"model {model.name} ({size_gib:.2f} GiB, F16); load: median of {args.runs} runs; "
          f"speed: mean ± sd over {args.rounds} interleaved llama-bench rounds "
          f"(-p 32 -n 16 -r {args.reps} -t 2 --delay {SETTLE})")
    print("| contender | ready, warm (s) | ready, cold (s) | pp t/s | tg t/s | tg vs plain "
          "| huge pages used (GiB) | page cache after (GiB) | RSS (GiB) | FilePmdMapped (GiB) "
          "| munmap warnings |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    def mean_sd(values: list[float]) -> tuple[float, float]:
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    base_tg = mean_sd(speed["plain mmap"]["tg"])[0]
    for name in CONTENDERS:
        w = load[name]["warm"]
        c = load[name]["cold"]

        def med(rows: list[dict[str, float]], key: str) -> float:
            return statistics.median(r[key] for r in rows)

        pp, tg = mean_sd(speed[name]["pp"]), mean_sd(speed[name]["tg"])
        print(f"| {name} | {med(w, 'ready_s'):.2f} | {med(c, 'ready_s'):.2f} "
              f"| {pp[0]:.1f} ± {pp[1]:.1f} | {tg[0]:.2f} ± {tg[1]:.2f} "
              f"| {tg[0] / base_tg:.3f} | {med(w, 'huge_used_gib'):.2f} "
              f"| {med(w, 'cache_gib'):.2f} | {med(w, 'rss_gib'):.2f} "
              f"| {med(w, 'pmd_gib'):.2f} | {int(med(w, 'munmap_warnings'))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
