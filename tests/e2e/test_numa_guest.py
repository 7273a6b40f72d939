"""NUMA placement on a real two-node kernel: Debian 12's own, in a QEMU guest
(tests/numaguest.py) with the agent installed from its .deb and llama-server
serving a small repacked (Q4_0) model twice: `spread` with `--numa distribute`
and numa = "auto", `pinned` with numa = 1. The guest records (guest_numa_scenario.py);
the tests here judge, parsing numa_maps themselves.

One boot serves every test of the module (about 5 minutes under TCG)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests import ggufmodel, numaguest
from tests.conftest import IS_ROOT

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not IS_ROOT, reason="needs root: builds the guest image "
                                 "with debootstrap")]

# Q4_0: llama.cpp repacks it (AVX2), so its weights are heap allocations the
# wrapper places; 5 layers of 2048: about 145 MiB, 70-odd huge pages a server
SHAPE = ggufmodel.Shape(layers=5, embd=2048, ff=5504, heads=16, kv_heads=16, ctx=256,
                        qtype="Q4_0")
MIB = 1 << 20


@pytest.fixture(scope="module")
def guest(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    share = tmp_path_factory.mktemp("numa-guest")
    shutil.copy(next(dist.glob("*.deb")), share / "hugepage-agent.deb")
    shutil.copy(numaguest.portable_server(), share / "llama-server")
    shutil.copy(ggufmodel.cached(SHAPE), share / "model.gguf")
    return numaguest.run_scenario(share, "guest_numa_scenario.py", timeout=1800)


def huge_by_node(numa_maps: str) -> dict[int, int]:
    """Bytes of huge pages per node, parsed here independently of the agent:
    every line flagged `huge`, N<node>=<pages> times kernelpagesize_kB."""
    out: dict[int, int] = {}
    for line in numa_maps.splitlines():
        if " huge " not in f" {line} ":
            continue
        size = re.search(r"kernelpagesize_kB=(\d+)", line)
        for node, pages in re.findall(r"\bN(\d+)=(\d+)", line):
            out[int(node)] = out.get(int(node), 0) + int(pages) * int(size.group(1)) * 1024 \
                if size else out.get(int(node), 0)
    return out


def all_by_node(numa_maps: str) -> dict[int, int]:
    """Every page the process maps, per node (a plain server's 4 KiB pages too)."""
    out: dict[int, int] = {}
    for line in numa_maps.splitlines():
        size = re.search(r"kernelpagesize_kB=(\d+)", line)
        for node, pages in re.findall(r"\bN(\d+)=(\d+)", line):
            out[int(node)] = out.get(int(node), 0) + int(pages) * int(size.group(1) if size
                                                                     else 4) * 1024
    return out


def model(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(m for m in status["models"] if m["name"] == name)


def shares(by_node: dict[int, int]) -> str:
    total = sum(by_node.values()) or 1
    return ", ".join(f"node {n}: {b / MIB:.0f} MiB ({b / total * 100:.1f} %)"
                     for n, b in sorted(by_node.items()))


def test_both_models_serve_and_the_spread_one_matches_plain_llama(guest: dict[str, Any]) -> None:
    assert guest["ready"] == {"spread": True, "pinned": True}
    c = guest["completions"]
    assert isinstance(c["spread"], list) and len(c["spread"]) == 4, c
    assert isinstance(c["pinned"], list) and len(c["pinned"]) == 4, c
    assert guest["plain_ready"]
    # greedy tokens: the wrapper changes where the memory is, never what it holds
    assert c["spread"] == guest["plain_completion"] == c["pinned"]
    for name in ("spread", "pinned"):
        m = model(guest["status"], name)
        assert m["verdict"] == "loaded", (name, m["verdict"], guest["status"]["text"])
    assert guest["status"]["exit"] == 0, guest["status"]["text"]


def test_spread_model_is_split_half_and_half(guest: dict[str, Any]) -> None:
    """Fact 1: `--numa distribute` and numa = "auto": within 10 % of half and
    half. The plain llama-server's split, for comparison, is printed."""
    mine = huge_by_node(guest["processes"]["spread"]["numa_maps"])
    total = sum(mine.values())
    assert total > 100 * MIB, mine
    assert set(mine) <= {0, 1}
    share0 = mine.get(0, 0) / total
    plain = all_by_node(guest["plain"]["numa_maps"])
    print(f"\nspread model with the wrapper (huge pages): {shares(mine)}"
          f"\nplain llama-server, same arguments (all its pages): {shares(plain)}")
    assert 0.45 <= share0 <= 0.55, shares(mine)
    numa = model(guest["status"], "spread")["numa"]
    assert numa["placement"] == "auto" and numa["nodes"] == [0, 1]
    assert numa["policies"] == ["interleave:0-1"], numa


def test_pinned_model_stays_on_node_1(guest: dict[str, Any]) -> None:
    """Fact 2: all its huge pages on node 1, its threads on node 1's CPUs only."""
    proc = guest["processes"]["pinned"]
    mine = huge_by_node(proc["numa_maps"])
    assert mine.get(1, 0) > 50 * MIB and set(mine) == {1}, shares(mine)
    assert proc["threads"] and set(proc["threads"].values()) == {"2-3"}, proc["threads"]
    assert "AllowedCPUs=2-3" in guest["dropin"] and "AllowedMemoryNodes=1" in guest["dropin"]
    numa = model(guest["status"], "pinned")["numa"]
    assert numa["placement"] == [1] and numa["off_node_ratio"] == 0


def test_node_1_too_small_falls_back_without_sigbus(guest: dict[str, Any]) -> None:
    """Fact 3: the server still serves, its fallback line names node 1, and
    status is DEGRADED naming node 1."""
    assert guest["short_ready"]
    assert isinstance(guest["short_completion"], list), guest["short_completion"]
    assert guest["short_completion"] == guest["completions"]["pinned"]
    unit = dict(line.split("=", 1) for line in guest["short_unit"].split())
    assert unit["ActiveState"] == "active" and unit["NRestarts"] == "0", unit
    log = guest["short_journal"]
    assert "SIGBUS" not in log and "core-dump" not in log
    lines = [ln for ln in log.splitlines() if "reason=node-short" in ln]
    assert lines and all("node 1: " in ln for ln in lines), log[-3000:]
    st = guest["short_status"]
    assert st["exit"] == 1 and st["degraded"]
    problem = next(p for p in st["problems"] if p.startswith("model pinned:"))
    assert "node 1" in problem, st["problems"]
    assert guest["short_pools"]["1"]["nr"] < guest["pools"]["1"]["nr"]


def test_auto_pool_per_node_is_the_projection(guest: dict[str, Any]) -> None:
    """Fact 4: each node's pool is what the models' placements put there plus
    headroom, reserved as planned, and neither model fell back."""
    st = guest["status"]
    by_node = {p["node"]: p for p in st["pools"] if p["page_size_kb"] == 2048
               and p["node"] is not None}
    plan_lines = [ln for ln in guest["dry_run"].splitlines() if "per node:" in ln]
    assert len(plan_lines) >= 3, guest["dry_run"]  # the pool's, then one per model
    split = {name: dict((int(n), int(k)) for n, k in
                        re.findall(r"node (\d+): (\d+)", ln))
             for name, ln in zip(("spread", "pinned"), plan_lines[1:])}
    assert split["pinned"].get(0, 0) == 0 and split["pinned"][1] > 0
    assert abs(split["spread"][0] - split["spread"][1]) <= 1
    for node in (0, 1):
        need = split["spread"].get(node, 0) + split["pinned"].get(node, 0)
        assert by_node[node]["models_need"] == need
        assert by_node[node]["target"] >= need
        assert guest["pools"][str(node)]["nr"] == by_node[node]["target"], (node, by_node)
    for name in ("spread", "pinned"):
        assert "reason=" not in guest["journal"][name], guest["journal"][name][-2000:]


def test_status_per_node_agrees_with_numa_maps(guest: dict[str, Any]) -> None:
    """Fact 5: within 2 % of this test's own parse."""
    for name in ("spread", "pinned"):
        mine = huge_by_node(guest["processes"][name]["numa_maps"])
        theirs = {int(n): b for n, b in model(guest["status"], name)["numa"]["node_bytes"]
                  .items()}
        total = sum(mine.values())
        for node in {*mine, *theirs}:
            assert abs(mine.get(node, 0) - theirs.get(node, 0)) <= 0.02 * total, \
                (name, node, mine, theirs)
    assert "NUMA: node 0" in guest["status"]["text"], guest["status"]["text"]
