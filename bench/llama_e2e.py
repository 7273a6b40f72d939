"""Benchmark: llama-server and llama-bench on a ~2.2 GiB Q4_0 model (repacked at
load, as the models people serve are) and an F16 model of similar size, in
one run, for
  - plain llama.cpp (mmap, no wrapper),
  - the wrapper's file-only mode (the model file mapping copied into huge
    pages, allocations left to libc: what the product did before),
  - the new default (the agent's `--load-mode dio`; the weights, repack, KV
    cache and compute buffers allocated from huge pages),
  - the same with `--load-mode none` (buffered reads),
printing: time to /health ready (page cache warm, and cold after dropping
caches; the pool touched once first, see prefault_pool), the server's
memory by kind (huge pages, anonymous, file), the pool pages it holds
against the huge pages it reads, the page cache left for the model, VmPTE;
then prompt processing and token generation (llama-bench, interleaved
rounds). Needs root; restores nr_hugepages.

  sudo ~/.cache/hugepage-agent/venv/bin/python -m bench.llama_e2e [--runs 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from tests import ggufmodel
from tests.llama import Server, llama_bin

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "wrapper_c" / "build"
NR = Path("/proc/sys/vm/nr_hugepages")
POOL = Path("/sys/kernel/mm/hugepages/hugepages-2048kB")
MIB, GIB = 1 << 20, 1 << 30
CTX = 4096
# Seconds llama-bench waits after loading, before measuring: freeing gigabytes of
# page cache makes this VM's guest report the freed memory to the host for a
# second or two, which slowed the first samples after load.
SETTLE = 5
LIB = str(BUILD / "libhugepage-wrapper.so")
# name: (environment, extra server arguments, llama-bench load mode)
CONTENDERS: dict[str, tuple[dict[str, str], list[str], str]] = {
    "plain llama.cpp (mmap)": ({}, [], "mmap"),
    "file-only wrapper (before)": ({"LD_PRELOAD": LIB, "HUGEPAGE_WRAPPER_MIN_SIZE": "64M",
                                    "HUGEPAGE_WRAPPER_ALLOC_MIN_SIZE": "off"}, [], "mmap"),
    "new default (dio + allocations)": ({"LD_PRELOAD": LIB}, ["--load-mode", "dio"], "dio"),
    "allocations, --load-mode none": ({"LD_PRELOAD": LIB}, ["--load-mode", "none"], "none"),
}


def prefault_pool(pages: int) -> None:
    """Touch every page of the pool once. On this VM the host backs guest memory
    lazily and takes back what the guest reports free (virtio free page
    reporting), so the first touch of a page after boot costs a host fault:
    the first server after the pool is reserved would pay it for all of it
    (measured: 13 s instead of 5 s to ready). Pool pages are never reported
    free, so once touched they stay backed, as on a host that has served since
    boot. Plain llama.cpp's 4 KiB pages come from memory the guest keeps
    freeing and reporting, so it pays that cost on every start here."""
    size = pages * 2 * MIB
    fd = os.memfd_create("bench-prefault", os.MFD_HUGETLB)
    try:
        os.ftruncate(fd, size)
        with mmap.mmap(fd, size) as m:
            for off in range(0, size, 2 * MIB):
                m[off] = 1
    finally:
        os.close(fd)


def in_use_pages() -> int:
    def n(name: str) -> int:
        return int((POOL / name).read_text())
    return n("nr_hugepages") - n("free_hugepages") + n("resv_hugepages")


def cached_bytes(path: Path) -> int:
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout.strip()
    return int(out or 0)


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def huge_read(pid: int, model: Path, dead: int) -> int:
    """Huge page bytes the server has faulted, less the dead part of a file copy."""
    total = copy = 0
    current = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and ":" not in head[0] and len(head) >= 5:
            current = line.endswith(f"/memfd:hugepage-wrapper:{model} (deleted)")
        elif line.startswith(("Private_Hugetlb:", "Shared_Hugetlb:")):
            total += int(head[1]) * 1024
            copy += int(head[1]) * 1024 if current else 0
    return total - min(copy, dead)


def machine() -> str:
    """The line each benchmark opens with: what it ran on."""
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line), "?")
    return f"Machine: {cpu}, {os.cpu_count()} CPUs, kernel {platform.release()}"


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def load_run(binary: Path, model: Path, name: str, log: Path, *, cold: bool,
             dead: int) -> dict[str, float]:
    env, extra, _ = CONTENDERS[name]
    if cold:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3")
    else:
        warm(model)
    before = in_use_pages()
    peak = [0]
    done = threading.Event()

    def sample() -> None:  # the pool pages the load takes at its peak
        while not done.wait(0.02):
            peak[0] = max(peak[0], in_use_pages() - before)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with Server(binary, model, log, env=env, args=["--ctx-size", str(CTX), *extra]) as srv:
        secs = srv.wait_ready()
        srv.complete("the model", n=4)
        done.set()
        sampler.join()
        held = (in_use_pages() - before) * 2 * MIB
        read = huge_read(srv.pid, model, dead)
        return {
            "ready_s": secs,
            "huge_gib": status_kb(srv.pid, "HugetlbPages") / (1 << 20),
            "anon_gib": status_kb(srv.pid, "RssAnon") / (1 << 20),
            "file_gib": status_kb(srv.pid, "RssFile") / (1 << 20),
            "held_over_read": held / read if read else 0.0,
            "peak_gib": peak[0] * 2 * MIB / GIB,
            "cache_gib": cached_bytes(model) / GIB,
            "pte_mib": status_kb(srv.pid, "VmPTE") / 1024,
            "fallbacks": sum("served by libc" in x or "pool short" in x
                             for x in log.read_text(errors="replace").splitlines()),
        }


def bench_once(bench: Path, model: Path, name: str, reps: int) -> dict[str, float]:
    env, _, mode = CONTENDERS[name]
    warm(model)
    out = subprocess.run([str(bench), "-m", str(model), "-p", "32", "-n", "16", "-t", "2",
                          "-lm", mode, "--delay", str(SETTLE), "-r", str(reps), "-o", "json"],
                         env=dict(os.environ, **env), capture_output=True, text=True,
                         check=True).stdout
    return {("pp" if row.get("n_prompt", 0) else "tg"): float(row["avg_ts"])
            for row in json.loads(out)}


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def one_model(qtype: str, args: argparse.Namespace, bins: Path, tmp: Path) -> None:
    sys.path.insert(0, str(REPO / "agent"))
    from hugepage_agent import gguf

    model = ggufmodel.cached(ggufmodel.Shape.for_size(int(args.size_gib * GIB), qtype=qtype))
    header = gguf.read_path(str(model))
    dead = header.repacked_bytes
    kv = CTX * header.kv_bytes_per_cell()
    need = -(-(model.stat().st_size * 2 + kv) // (2 * MIB)) + 256
    NR.write_text(str(need))
    if int(NR.read_text()) < need:
        print(f"the kernel gave only {NR.read_text().strip()} of {need} pages", file=sys.stderr)
        return
    prefault_pool(need)
    names = list(CONTENDERS)
    load: dict[str, dict[str, list[dict[str, float]]]] = {
        n: {"warm": [], "cold": []} for n in names}
    for run in range(args.runs):
        for name in names:
            for mode in ("warm", "cold"):
                r = load_run(bins / "llama-server", model, name,
                             tmp / f"{qtype}-{run}-{mode}.log", cold=mode == "cold", dead=dead)
                load[name][mode].append(r)
                print(f"{qtype} run {run + 1} {name} {mode}: ready in {r['ready_s']:.2f} s",
                      flush=True)
    speed: dict[str, dict[str, list[float]]] = {n: {"pp": [], "tg": []} for n in names[:3]}
    for r in range(args.rounds):  # rotating order: this shared machine drifts
        order = names[:3][r % 3:] + names[:3][:r % 3]
        for name in order:
            for kind, value in bench_once(bins / "llama-bench", model, name, args.reps).items():
                speed[name][kind].append(value)
            print(f"{qtype} round {r + 1} {name}: pp {speed[name]['pp'][-1]:.1f} "
                  f"tg {speed[name]['tg'][-1]:.2f} t/s", flush=True)
    print(f"\n{qtype}: {model.name} ({model.stat().st_size / GIB:.2f} GiB, "
          f"{dead / GIB:.2f} GiB repacked), -c {CTX} (KV cache {kv / GIB:.2f} GiB), "
          f"2 threads; load: median of {args.runs} runs; speed: mean ± sd over "
          f"{args.rounds} interleaved llama-bench rounds (-p 32 -n 16 -r {args.reps})")
    print("| contender | ready warm (s) | ready cold (s) | vs plain, warm | huge pages (GiB) "
          "| anon 4 KiB (GiB) | file (GiB) | pool held / huge read | peak pool in load (GiB) "
          "| page cache after (GiB) "
          "| VmPTE (MiB) | fallbacks | pp t/s | tg t/s | pp, tg vs plain |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    base = load[names[0]]["warm"]
    (tmp / f"{qtype}.json").write_text(json.dumps({"load": load, "speed": speed}))

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(row[key] for row in rows)

    base_pp = mean_sd(speed[names[0]]["pp"])[0]
    base_tg = mean_sd(speed[names[0]]["tg"])[0]
    for name in names:
        w, c = load[name]["warm"], load[name]["cold"]
        sp = speed.get(name)
        pp = mean_sd(sp["pp"]) if sp else (0.0, 0.0)
        tg = mean_sd(sp["tg"]) if sp else (0.0, 0.0)
        ratio = (f"{pp[0] / base_pp:.3f}, {tg[0] / base_tg:.3f}" if sp else "-")
        print(f"| {name} | {med(w, 'ready_s'):.2f} | {med(c, 'ready_s'):.2f} "
              f"| {med(w, 'ready_s') / med(base, 'ready_s'):.2f} | {med(w, 'huge_gib'):.2f} "
              f"| {med(w, 'anon_gib'):.2f} | {med(w, 'file_gib'):.2f} "
              f"| {med(w, 'held_over_read'):.3f} | {med(w, 'peak_gib'):.2f} "
              f"| {med(w, 'cache_gib'):.2f} "
              f"| {med(w, 'pte_mib'):.1f} | {int(med(w, 'fallbacks'))} "
              + (f"| {pp[0]:.1f} ± {pp[1]:.1f} | {tg[0]:.2f} ± {tg[1]:.2f} | {ratio} |"
                 if sp else "| - | - | - |"))
    print()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=float, default=2.2)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3, help="llama-bench repetitions per round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved llama-bench rounds")
    ap.add_argument("--types", default="Q4_0,F16")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    subprocess.run(["make", "-s", "-C", str(REPO / "wrapper_c"), "all"], check=True)
    bins = llama_bin()
    saved = NR.read_text().strip()
    print(machine())
    tmp = Path(tempfile.mkdtemp())
    try:
        for qtype in args.types.split(","):
            one_model(qtype, args, bins, tmp)
    finally:
        NR.write_text(saved)
    return 0


if __name__ == "__main__":
    sys.exit(main())
