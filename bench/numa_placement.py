"""Benchmark: where a server's memory lands on a two-node host, plain llama.cpp
(mmap and dio) against the wrapper's auto placement (`--numa distribute`)
and a placement pinned to node 1, with the time to ready of each.

It runs in the QEMU guest of the NUMA tests (tests/numaguest.py: Debian 12's
kernel, two nodes of two CPUs, TCG), for a repacked Q4_0 model of about
145 MiB. Both "nodes" are the same host memory, and TCG emulates every
instruction: the shares per node are real placement, the times say only
that nothing is much slower; token speed means nothing here. On a real
two-socket host measure with `numastat -p PID` and `llama-bench --numa
distribute` with and without the wrapper (docs/benchmarks.md).

  sudo ~/.cache/hugepage-agent/venv/bin/python -m bench.numa_placement [--runs 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests import ggufmodel, numaguest
from tests.e2e.test_numa_guest import SHAPE

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20


def share(by: dict[str, int], node: str) -> str:
    total = sum(by.values())
    return f"{by.get(node, 0) / total * 100:.0f} %" if total else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        share_dir = Path(tmp)
        r = subprocess.run(["bash", str(REPO / "packaging" / "build-deb.sh"), str(share_dir)],
                           capture_output=True, text=True, check=True)
        deb = Path(r.stdout.strip().splitlines()[-1])
        shutil.copy(deb, share_dir / "hugepage-agent.deb")
        shutil.copy(numaguest.portable_server(), share_dir / "llama-server")
        shutil.copy(ggufmodel.cached(SHAPE), share_dir / "model.gguf")
        shutil.copy(Path(__file__).with_name("guest_numa_bench.py"), share_dir / "bench.py")
        (share_dir / "runs").write_text(str(a.runs))
        (share_dir / "run.sh").write_text("exec python3 /mnt/hpa/bench.py\n")
        rc = numaguest.boot(numaguest.image(), share_dir, timeout=3600)
        results: dict[str, list[dict[str, Any]]] = json.loads(
            (share_dir / "results.json").read_text())
        print(f"guest rc {rc}; model {ggufmodel.cached(SHAPE).stat().st_size / MIB:.0f} MiB, "
              f"median of {a.runs} runs, caches dropped before each start\n")
        print("| contender | ready (s) | huge pages node 0 | node 1 | 4 KiB pages node 0 "
              "| node 1 | huge pages (MiB) | 4 KiB (MiB) |")
        print("|---|---|---|---|---|---|---|---|")
        for name, entries in results.items():
            ok = [e for e in entries if e["ready"] is not None]
            if not ok:
                print(f"| {name} | did not start | | | | | | |")
                continue
            mem = ok[-1]["memory"]
            print(f"| {name} | {statistics.median(e['ready'] for e in ok):.1f} | "
                  f"{share(mem['huge'], '0')} | {share(mem['huge'], '1')} | "
                  f"{share(mem['small'], '0')} | {share(mem['small'], '1')} | "
                  f"{sum(mem['huge'].values()) / MIB:.0f} | "
                  f"{sum(mem['small'].values()) / MIB:.0f} |")


if __name__ == "__main__":
    main()
