"""llama.cpp servers in containers, for real: Debian 12's podman, docker.io
and docker-compose under systemd 252 (cgroup v2), in the QEMU guest
(tests/numaguest.py), with the agent installed from its .deb. No registry is
reachable, so the images are Debian roots made with debootstrap (bookworm,
trixie, and bullseye with glibc 2.31) with the portable llama-server as
their entrypoint, imported in the guest. The guest records
(guest_container_scenario.py); the tests here judge, parsing the servers'
smaps themselves.

One boot serves every test of the module (about 6 minutes under TCG)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests import ggufmodel, images, numaguest
from tests.conftest import IS_ROOT
from tests.e2e.test_llama import memory

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not IS_ROOT, reason="needs root: builds the guest image "
                                 "and the container images with debootstrap")]

# the NUMA tests' model: Q4_0, repacked by llama.cpp, so its weights are heap
# allocations the wrapper serves; about 145 MiB
SHAPE = ggufmodel.Shape(layers=5, embd=2048, ff=5504, heads=16, kv_heads=16, ctx=256,
                        qtype="Q4_0")
SUITES = ("bookworm", "trixie", "bullseye")
MIB = 1 << 20


@pytest.fixture(scope="module")
def guest(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    server = numaguest.portable_server()
    share = tmp_path_factory.mktemp("container-guest")
    shutil.copy(next(dist.glob("*.deb")), share / "hugepage-agent.deb")
    shutil.copy(server, share / "llama-server")
    shutil.copy(ggufmodel.cached(SHAPE), share / "model.gguf")
    for suite in SUITES:
        images.with_server(images.base(suite), server, share / f"image-{suite}.tar")
    return numaguest.run_scenario(share, "guest_container_scenario.py", timeout=2400)


def model(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(m for m in status["models"] if m["name"] == name)


def inspected_pid(guest: dict[str, Any], name: str) -> int:
    said = guest["inspect"][name]
    assert said["rc"] == 0, said["stderr"]
    return int(json.loads(said["stdout"])[0]["State"]["Pid"])


def huge_share(guest: dict[str, Any], name: str, served_as: str, tmp_path: Path) -> float:
    """Of the server's large memory (huge pages, anonymous mappings of 8 MiB
    or more, the model file mapped), the share in huge pages: parsed here."""
    f = tmp_path / f"{name}.smaps"
    f.write_text(guest["smaps"][name])
    mem = memory(f, Path(served_as))
    assert mem["huge"] > 100 * MIB, mem  # the model's weights, at least
    return mem["huge"] / (mem["huge"] + mem["small_pages"])


@pytest.mark.parametrize(("name", "served_as"), [
    ("pod", "/models/pod.gguf"),  # model.image, podman
    ("dock", "/models/dock.gguf"),  # model.image, runtime = "docker"
    ("cpu0", "/app/models/model.gguf"),  # model.container: the compose service
])
def test_each_container_serves_the_same_tokens_from_huge_pages(
        guest: dict[str, Any], tmp_path: Path, name: str, served_as: str) -> None:
    assert guest["ready"][name] is not None, guest["steps"]
    status = guest["status"]
    m = model(status, name)
    assert m["verdict"] == "loaded", (m["verdict"], status["text"])
    assert m["pid"] == inspected_pid(guest, name)  # the container's server
    assert m["wrapper_loaded"] and (m["coverage"] or 0) >= 0.99
    assert huge_share(guest, name, served_as, tmp_path) >= 0.99
    tokens = guest["completions"][name]
    assert isinstance(tokens, list) and tokens, tokens
    assert tokens == guest["plain_completion"]  # a plain llama-server, no wrapper, no container
    assert status["exit"] == 0, status["text"]


def test_podman_puts_the_server_in_its_units_cgroup(guest: dict[str, Any]) -> None:
    assert "llama-container@pod.service" in guest["cgroup"]["pod"]
    assert "ActiveState=active" in guest["units"]["pod"]
    assert "NRestarts=0" in guest["units"]["pod"]
    inspect = json.loads(guest["inspect"]["pod"]["stdout"])[0]
    assert inspect["Config"]["User"] not in ("", "0", "root", "0:0")  # unprivileged
    assert inspect["HostConfig"]["ReadonlyRootfs"] is True
    mounts = {m["Destination"]: m for m in inspect["Mounts"]}
    assert mounts["/models/pod.gguf"]["RW"] is False
    assert mounts["/opt/hugepage-agent/libhugepage-wrapper.so"]["RW"] is False


@pytest.mark.parametrize("name", ["pod", "dock", "cpu0"])
def test_each_container_places_its_pages_on_both_nodes(guest: dict[str, Any],
                                                       name: str) -> None:
    """numa = "auto" on two nodes, the server's CPUs on both: interleaved, as on
    the host (docker's seccomp needs CAP_SYS_NICE for it, which the agent adds
    on hosts of several nodes, and the compose override asks for)."""
    numa = model(guest["status"], name)["numa"]
    assert numa["policies"] == ["interleave:0-1"], numa
    # both nodes hold its pages (how many depends on what the other models,
    # started at the same time, left free on each node's pool)
    assert set(numa["node_bytes"]) == {"0", "1"}, numa
    assert all(b > 0 for b in numa["node_bytes"].values()), numa


def test_docker_runs_the_image_unprivileged(guest: dict[str, Any]) -> None:
    inspect = json.loads(guest["inspect"]["dock"]["stdout"])[0]
    assert inspect["Config"]["User"] not in ("", "0", "root")
    assert inspect["HostConfig"]["CapDrop"] and "ALL" in [c.upper() for c in
                                                          inspect["HostConfig"]["CapDrop"]]
    assert "no-new-privileges" in inspect["HostConfig"]["SecurityOpt"]
    assert model(guest["status"], "dock")["container"]["runtime"] == "docker"


def test_the_compose_override_is_what_the_service_needed(guest: dict[str, Any]) -> None:
    override = guest["compose_override"]
    assert override["rc"] == 0, override["stderr"]
    assert "/opt/hugepage-agent/libhugepage-wrapper.so:ro" in override["stdout"]
    assert 'cap_add: ["SYS_NICE"]' in override["stdout"]  # two nodes
    assert guest["compose_up"]["rc"] == 0, guest["compose_up"]["stderr"]
    inspect = json.loads(guest["inspect"]["cpu0"]["stdout"])[0]
    env = dict(e.split("=", 1) for e in inspect["Config"]["Env"])
    assert env["LD_PRELOAD"] == "/opt/hugepage-agent/libhugepage-wrapper.so"
    assert model(guest["status"], "cpu0")["container"]["name"] == "llama-cpu-0"


def test_health_check_commands_see_nothing_of_the_library(guest: dict[str, Any]) -> None:
    checks = guest["small"]
    assert len([k for k in checks if k.endswith(" env")]) == 3
    for key, c in checks.items():
        if key.endswith(" env"):
            assert c["stdout"].strip() == "/opt/hugepage-agent/libhugepage-wrapper.so", key
            continue
        assert c["with"]["rc"] == c["without"]["rc"], key
        assert c["with"]["stdout"] == c["without"]["stdout"], key
        assert c["with"]["stderr"] == c["without"]["stderr"], key
        assert "hugepage" not in c["with"]["stderr"], key
        assert c["with"]["rc"] == (0 if key.endswith("/health") else 22), (key, c)


GLIBC_LINE = re.compile(r"runs glibc 2\.31 .*needs glibc 2\.(3[2-9]|[4-9]\d)")


def test_an_image_with_an_older_glibc_is_refused_before_it_starts(
        guest: dict[str, Any]) -> None:
    assert GLIBC_LINE.search(guest["old_apply"]["stdout"]), guest["old_apply"]
    assert GLIBC_LINE.search(guest["old_agent_journal"]), guest["old_agent_journal"][-2000:]
    assert guest["old_start"]["rc"] != 0  # systemctl start: the check failed the start
    assert GLIBC_LINE.search(guest["old_journal"]), guest["old_journal"][-2000:]
    assert guest["old_active"] != "active"
    assert guest["old_listening"] is None
    for runtime in ("podman", "docker"):
        assert "hugepage-agent-old" not in guest["old_containers"][runtime]
        assert not any(n.startswith("hugepage-agent-check-") for n in
                       guest["old_containers"][runtime])  # the check's own, removed
    old = model(guest["old_status"], "old")
    assert old["verdict"].startswith("refused: ") and GLIBC_LINE.search(old["verdict"]), old
    assert guest["old_status"]["exit"] == 1


def test_removing_a_model_stops_and_removes_its_container(guest: dict[str, Any]) -> None:
    assert guest["day2_reload"]["rc"] == 0, guest["day2_reload"]
    assert guest["day2_pod_active"] in ("inactive", "unknown")
    assert "hugepage-agent-pod" not in guest["day2_containers"]["podman"]
    assert "hugepage-agent-dock" in guest["day2_containers"]["docker"]


def test_a_changed_image_reference_is_a_change_not_yet_in_effect(
        guest: dict[str, Any]) -> None:
    dock = model(guest["day2_status"], "dock")
    assert dock["restart_pending"] == ["image changed"], dock
    assert dock["verdict"] == "restart pending: image changed"
    assert guest["day2_status"]["exit"] == 1
