"""Benchmark: how long `hugepage-agent status` takes with a few models running.

Starts N stand-in servers (tests' fakeserver) mapping N model files under
`hugepage-agent exec`, with a configuration naming them, and times the whole
command (interpreter start included) over many runs, for the human view and
--json, against the target of 150 ms. Prints the median and the spread.
Needs root (sizes the pool; restores it).
  sudo ~/.cache/hugepage-agent/venv/bin/python -m bench.status_speed [--models 3] [--runs 30]
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

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "wrapper_c" / "build" / "tests"
NR = Path("/proc/sys/vm/nr_hugepages")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    subprocess.run(["make", "-s", "-C", str(REPO / "wrapper_c"), "all"], check=True)
    tmp = Path(tempfile.mkdtemp())
    env = dict(os.environ, PYTHONPATH=str(REPO / "agent"))
    cfg = tmp / "config.toml"
    text = '[wrapper]\nmin_size = "16M"\n[thp]\nenabled = "keep"\ndefrag = "keep"\n'
    for i in range(args.models):
        f = tmp / f"m{i}.gguf"
        subprocess.run([str(TOOLS / "maptool"), "mkfile", str(f), str(64 << 20)], check=True)
        text += f'[[model]]\nname = "m{i}"\npath = "{f}"\n'
    cfg.write_text(text)
    saved = NR.read_text().strip()
    servers = []
    try:
        NR.write_text(str(args.models * 33 + 8))
        for i in range(args.models):
            servers.append(subprocess.Popen(
                [sys.executable, "-m", "hugepage_agent", "exec", "--config", str(cfg), "--",
                 str(TOOLS / "fakeserver"), "--model", str(tmp / f"m{i}.gguf")],
                env=env, stderr=subprocess.DEVNULL))
        time.sleep(2)
        results = {}
        for label, extra in (("status", []), ("status --json", ["--json"])):
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                r = subprocess.run([sys.executable, "-m", "hugepage_agent", "status",
                                    "--config", str(cfg), *extra], env=env,
                                   capture_output=True, text=True, check=False)
                times.append((time.perf_counter() - t0) * 1000)
                assert r.returncode in (0, 1), r.stderr
            assert r.stdout.count("loaded") >= args.models, r.stdout
            results[label] = times
        python = subprocess.run([sys.executable, "-c", "pass"], check=True)
        del python
        t0 = time.perf_counter()
        for _ in range(args.runs):
            subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare = (time.perf_counter() - t0) * 1000 / args.runs
    finally:
        for s in servers:
            s.terminate()
            s.wait()
        NR.write_text(saved)
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    print(f"`hugepage-agent status` with {args.models} models running, {args.runs} runs "
          f"({os.cpu_count()} CPUs); target: median under 150 ms")
    print(f"{'command':<22} {'median ms':>10} {'p10':>7} {'p90':>7}")
    for label, times in results.items():
        q = statistics.quantiles(times, n=10)
        print(f"{label:<22} {statistics.median(times):>10.1f} {q[0]:>7.1f} {q[-1]:>7.1f}")
    print(f"{'(python -c pass)':<22} {bare:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
