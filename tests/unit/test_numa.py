"""NUMA placement, the pure parts: model.numa in the configuration, the auto
pool split per node, the pinned model's cpuset, numa_maps parsing, `exec
--numa`. On fake /sys trees with one and two nodes; the real two-node kernel
is tests/e2e/test_numa_guest.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hugepage_agent import config, modelfiles, numamaps, numanodes, unitfiles
from hugepage_agent.cli import main
from hugepage_agent.errors import AgentError
from hugepage_agent.execwrap import numa_option
from tests.faketree import GIB_KB, make_tree, snapshot

MIB = 1 << 20


@pytest.fixture
def models(tmp_path: Path) -> tuple[Path, Path]:
    out = []
    for name in ("a", "b"):
        p = tmp_path / "models" / f"{name}.gguf"
        p.parent.mkdir(exist_ok=True)
        with open(p, "wb") as f:
            f.truncate(1024 * MIB)  # not a GGUF: the pool takes its file size
        out.append(p)
    return out[0], out[1]


def two_models(a: Path, b: Path, numa_b: str = "1", extra: str = "") -> str:
    return (f"{extra}[[model]]\nname = \"spread\"\npath = \"{a}\"\n"
            f"[[model]]\nname = \"pinned\"\npath = \"{b}\"\nnuma = {numa_b}\n")


def apply(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str],
          nodes: tuple[int, ...], *extra: str, mem_kb: int = 24 * GIB_KB
          ) -> tuple[int, str, str, bool]:
    root = tmp_path / "root"
    make_tree(root, nodes=nodes, mem_total_kb=mem_kb)
    cfg = tmp_path / "config.toml"
    cfg.write_text(text)
    before = snapshot(root)
    rc = main(["apply", "--root", str(root), "--config", str(cfg), "--dry-run", *extra])
    out, err = capsys.readouterr()
    return rc, out, err, snapshot(root) == before


@pytest.mark.parametrize(("value", "message"), [
    ("1", "model[1].numa: NUMA node 1 does not exist on this host (online: 0)"),
    ("[0, 3]", "model[1].numa: NUMA node 3 does not exist"),
    ('"sometimes"', "model[1].numa: 'sometimes' is not one of \"auto\", \"interleave\""),
    ("[]", "model[1].numa: an empty list of nodes"),
    ("-1", "model[1].numa: -1 is not a NUMA node number"),
    ("true", "model[1].numa: expected a string or a whole number or a list"),
])
def test_bad_placement_names_file_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          models: tuple[Path, Path], value: str,
                                          message: str) -> None:
    rc, _, err, unchanged = apply(tmp_path, two_models(*models, value), capsys, (0,))
    assert rc == 2 and message in err and str(tmp_path / "config.toml") in err, err
    assert unchanged and "Traceback" not in err


def test_one_node_host_every_value_as_today(tmp_path: Path, models: tuple[Path, Path]) -> None:
    host = make_tree(tmp_path / "root", nodes=(0,))
    topo = numanodes.read_topology(host)
    for value, env in (('"auto"', None), ('"interleave"', "interleave"), ("0", "0"),
                       ('"off"', "off"), ("[0]", "0")):
        cfg_file = tmp_path / "c.toml"
        cfg_file.write_text(two_models(*models, value))
        cfg = config.load(host, str(cfg_file))
        m = cfg.models[1]
        assert numanodes.wrapper_value(m) == env
        assert numanodes.cpuset(m, topo) is None and numanodes.placement_nodes(m, topo) == ()
        dropin = unitfiles.render_dropin(m, {}, numanodes.cpuset(m, topo))
        assert "AllowedCPUs" not in dropin and "AllowedMemoryNodes" not in dropin


def test_pinned_model_gets_cpuset_and_wrapper_setting(tmp_path: Path,
                                                      models: tuple[Path, Path]) -> None:
    host = make_tree(tmp_path / "root", nodes=(0, 1))
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(two_models(*models, "1"))
    cfg = config.load(host, str(cfg_file))
    files = modelfiles.render_all(cfg, "/usr/lib/hugepage-agent/libhugepage-wrapper.so",
                                  numanodes.read_topology(host))
    pinned = files[unitfiles.dropin_path("llama-server@pinned.service")]
    spread = files[unitfiles.dropin_path("llama-server@spread.service")]
    assert "AllowedCPUs=2-3\n" in pinned and "AllowedMemoryNodes=1\n" in pinned
    assert 'Environment="HUGEPAGE_WRAPPER_NUMA=1"' in pinned
    # auto is the library's default: nothing written, nothing changed for old servers
    assert "HUGEPAGE_WRAPPER_NUMA" not in spread and "Allowed" not in spread


def test_dry_run_splits_the_auto_pool_per_node(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               models: tuple[Path, Path]) -> None:
    rc, out, err, unchanged = apply(tmp_path, two_models(*models, "1"), capsys, (0, 1))
    assert rc == 0 and unchanged, err
    lines = [ln.strip() for ln in out.splitlines() if "per node:" in ln]
    # 512 pages a model: spread 256 + 256, pinned 512 on node 1; 2 % headroom in proportion
    assert lines[0] == "per node: node 0: 262, node 1: 784", out
    assert lines[1:] == ["per node: node 0: 256, node 1: 256", "per node: node 1: 512"]
    assert "would set 2M pool on node 0: 0 -> 262 pages" in out, out
    # what a pod serving one of them requests (issue 19's Kubernetes note)
    assert out.count("in a Kubernetes pod: hugepages-2Mi: 1024Mi (requests and limits)") == 2


def test_pinned_models_above_their_node_are_refused(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    models: tuple[Path, Path]) -> None:
    # 4 GiB, 2 GiB a node; 90 % of it is 1.8 GiB, the pinned models need 2 GiB there
    text = two_models(*models, "1").replace('name = "spread"', 'name = "spread"\nnuma = 1')
    rc, _, err, unchanged = apply(tmp_path, text, capsys, (0, 1), mem_kb=4 * GIB_KB)
    assert rc == 2 and unchanged
    assert "pool.limit: NUMA node 1 would need" in err and "models spread, pinned" in err, err


def test_numa_maps_parse() -> None:
    text = (
        "7f0000000000 interleave:0-1 file=/memfd:hugepage-wrapper-heap\\040(deleted) huge "
        "anon=8 dirty=8 N0=4 N1=4 kernelpagesize_kB=2048\n"
        "7f1000000000 bind:1 file=/memfd:hugepage-wrapper:/m.gguf\\040(deleted) huge "
        "dirty=3 N1=3 kernelpagesize_kB=2048\n"
        "7f2000000000 default file=/dev/hugepages/x huge dirty=1 N0=1 kernelpagesize_kB=1048576\n"
        "7f3000000000 default anon=100 dirty=100 N0=60 N1=40 kernelpagesize_kB=4\n")
    use = numamaps.parse(text)
    assert use.node_bytes == {0: 4 * 2 * MIB + 1024 * MIB, 1: 7 * 2 * MIB}
    assert use.policies == {"interleave:0-1", "bind:1"}
    assert use.policy_nodes() == (0, 1)
    assert use.off((1,)) == use.node_bytes[0]


def test_exec_numa_option_is_checked() -> None:
    assert numa_option("interleave", [0, 1]) == "interleave"
    assert numa_option("0-1", [0, 1]) == "0-1"
    with pytest.raises(AgentError, match="NUMA node 2 does not exist"):
        numa_option("2", [0, 1])
    with pytest.raises(AgentError, match="expected auto, interleave, off"):
        numa_option("near", [0, 1])


def test_split_and_lists() -> None:
    assert numanodes.split_pages(7, (0, 1)) == {0: 4, 1: 3}
    assert numanodes.split_pages(5, (1,)) == {1: 5}
    assert numanodes.compact_list([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


def test_status_per_node_and_the_misplaced_verdict(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A model pinned to node 1 whose huge pages sit three quarters on node 0
    (started before its placement changed, say): status says so per node,
    calls it misplaced (DEGRADED), and the metrics carry the node label."""
    from hugepage_agent import gguf
    from tests import ggufmodel
    from tests.unit.test_agent_fake import WRAPPER_VMA, _vma

    model = ggufmodel.write(tmp_path / "q4.gguf", ggufmodel.Shape(
        layers=2, embd=256, ff=704, qtype="Q4_0"))
    assert gguf.read_path(str(model)).weight_bytes > 0
    root = tmp_path / "root"
    make_tree(root, nodes=(0, 1))
    proc = root / "proc/4242"
    proc.mkdir(parents=True)
    heap = "/memfd:hugepage-wrapper-heap (deleted)"
    (proc / "maps").write_text("7f2000000000-7f2000010000 r-xp 00000000 fd:00 7    "
                               "/usr/lib/hugepage-agent/libhugepage-wrapper.so\n")
    (proc / "cmdline").write_text(f"llama-server\0--model\0{model}\0")
    (proc / "smaps").write_text(_vma(0x7f1000000000, 16384, heap, Private_Hugetlb=16384)
                                + WRAPPER_VMA)
    (proc / "numa_maps").write_text(
        "7f1000000000 bind:1 file=/memfd:hugepage-wrapper-heap\\040(deleted) huge anon=8 "
        "dirty=8 N0=6 N1=2 kernelpagesize_kB=2048\n"
        "7f2000000000 default file=/usr/lib/hugepage-agent/libhugepage-wrapper.so mapped=4 "
        "N0=4 kernelpagesize_kB=4\n")
    server = tmp_path / "llama-server"
    server.write_bytes(b"\0--load-mode\0")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[server]\nbinary = "{server}"\n[thp]\nenabled = "keep"\ndefrag = "keep"\n'
                   f'[[model]]\nname = "q4"\npath = "{model}"\nnuma = 1\n')
    rc = main(["status", "--json", "--root", str(root), "--config", str(cfg)])
    data = json.loads(capsys.readouterr().out)
    m = data["models"][0]
    assert m["numa"]["node_bytes"] == {"0": 12 * MIB, "1": 4 * MIB}
    assert m["numa"]["placement"] == [1] and m["numa"]["policies"] == ["bind:1"]
    assert m["numa"]["off_node_ratio"] == 0.75
    assert "misplaced: 75 % of its huge pages off node(s) 1" in m["verdict"], m["verdict"]
    assert rc == 1 and any("misplaced" in p for p in data["problems"])
    main(["status", "--root", str(root), "--config", str(cfg)])
    text = capsys.readouterr().out
    assert "NUMA: node 0 12.00 MiB, node 1 4.00 MiB (placement nodes 1; policy bind:1)" in text
    main(["status", "--prometheus", "--root", str(root), "--config", str(cfg)])
    prom = capsys.readouterr().out
    assert 'hugepage_agent_model_numa_hugetlb_bytes{node="0",model="q4"' in prom
    assert 'hugepage_agent_model_off_node_ratio{model="q4",unit="llama-server@q4.service"} 0.75' \
        in prom


def test_last_apply_records_each_nodes_pool(tmp_path: Path, models: tuple[Path, Path]) -> None:
    root = tmp_path / "root"
    make_tree(root, nodes=(0, 1))
    cfg = tmp_path / "c.toml"
    cfg.write_text(two_models(*models, "1", extra='[reserve]\npretouch = "never"\n'))
    assert main(["apply", "--root", str(root), "--config", str(cfg)]) == 0
    state = json.loads((root / "run/hugepage-agent/last-apply.json").read_text())
    assert state["per_pool"] == [
        {"pool": "2M pool on node 0", "target": 262, "achieved": 262},
        {"pool": "2M pool on node 1", "target": 784, "achieved": 784}]
    tmpfiles = (root / "etc/tmpfiles.d/80-hugepage-agent.conf").read_text()
    assert "node0/hugepages/hugepages-2048kB/nr_hugepages - - - - 262" in tmpfiles
    assert "node1/hugepages/hugepages-2048kB/nr_hugepages - - - - 784" in tmpfiles
