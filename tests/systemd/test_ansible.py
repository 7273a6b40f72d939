"""The Ansible role and rollout playbook (packaging/ansible), for real: three
Debian containers booted with systemd-nspawn, driven by ansible-playbook
through Ansible's nsenter connection (community.docker.nsenter). The first
run installs the package and serves a model on each host; the second changes
nothing and restarts nothing; a broken model on host 2 stops the rollout
before host 3 and leaves host 2 serving its old model; a changed argument
reaches the server on every host (/proc/PID/cmdline); new arguments that make
host 2's server fail stop the rollout there, with host 2's server running its
old arguments again; removing a model from a host's variables stops its unit.
ansible-lint is clean.

The three containers share the host's kernel, so they share one huge page
pool: every host is given the same explicit pool size, large enough for all."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IS_ROOT, MAPTOOL, REPO
from tests.container import Container, booted

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root: boots systemd-nspawn")
ANSIBLE = REPO / "packaging" / "ansible"
HOSTS = ("h1", "h2", "h3")
MIB = 1 << 20
SETTINGS = {"server": {"binary": "/usr/local/bin/fakeserver"}, "wrapper": {"min_size": "1M"},
            "pool": {"size": 24}, "metrics": {"textfile_dir": ""}}


def test_role_and_playbook_are_ansible_lint_clean() -> None:
    if shutil.which("ansible-lint") is None:
        pytest.fail("ansible-lint is missing: scripts/deps.sh installs it")
    r = subprocess.run(["ansible-lint", "rollout.yml", "roles/hugepage_agent"], cwd=ANSIBLE,
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="module")
def fleet(dist: Path, wrapper_build: Path) -> Iterator[dict[str, Container]]:
    def setup(c: Container) -> None:
        models = c.path("/srv/models")
        models.mkdir(parents=True)
        for name in ("m", "n", "secret"):
            subprocess.run([str(MAPTOOL), "mkfile", str(models / f"{name}.gguf"), str(4 * MIB)],
                           check=True)
        (models / "secret.gguf").chmod(0o600)  # its server cannot read it: DEGRADED

    with contextlib.ExitStack() as stack:
        cts = {h: stack.enter_context(booted(f"hpa-{h}", setup, install=False,
                                             stop_units=["llama-server@*.service"]))
               for h in HOSTS}
        yield cts


def inventory(tmp: Path, fleet: dict[str, Container], models: dict[str, list[dict[str, Any]]],
              wait: int = 60) -> Path:
    lines = ["[inference]"]
    for h, c in fleet.items():
        lines.append(f"{h} ansible_connection=community.docker.nsenter "
                     f"ansible_nsenter_pid={c.leader} ansible_python_interpreter=/usr/bin/python3")
    (tmp / "inventory.ini").write_text("\n".join(lines) + "\n")
    (tmp / "host_vars").mkdir(exist_ok=True)
    for h, ms in models.items():
        (tmp / "host_vars" / f"{h}.yml").write_text(json.dumps(
            {"hugepage_agent_models": ms, "hugepage_agent_settings": SETTINGS,
             "hugepage_agent_wait_seconds": wait}))
    return tmp / "inventory.ini"


def playbook(inv: Path, deb: Path) -> tuple[int, str, dict[str, dict[str, int]]]:
    r = subprocess.run(["ansible-playbook", "-i", str(inv), str(ANSIBLE / "rollout.yml"),
                        "-e", f"hugepage_agent_package={deb}"], cwd=ANSIBLE,
                       capture_output=True, text=True, timeout=900, check=False,
                       env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(inv.parent),
                            "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"})
    recap = {}
    for m in re.finditer(r"^(h\d)\s+:\s+(.*)$", r.stdout, flags=re.M):
        recap[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return r.returncode, r.stdout + r.stderr, recap


def model(i: int, name: str = "m") -> dict[str, Any]:
    return {"name": f"{name}{i}", "path": f"/srv/models/{name}.gguf",
            "args": ["--port", str(8080 + i)]}


def pid(c: Container, unit: str) -> int:
    return int(c.prop(unit, "MainPID") or 0)


def cmdline(c: Container, p: int) -> list[str]:
    return c.proc(p, "cmdline").read_bytes().decode().split("\0")[:-1]


# One fleet's life in order (roll-out, a second run, a change, a failure, removal):
# each step starts from the state the one before left, so it reads best whole.
def test_rollout_idempotence_stop_on_failure_and_removal(  # noqa: PLR0915
        fleet: dict[str, Container], dist: Path, tmp_path: Path) -> None:
    deb = next(dist.glob("*.deb"))
    want = {h: [model(i)] for i, h in enumerate(HOSTS, 1)}
    inv = inventory(tmp_path, fleet, want)

    # 1. the first run installs and serves a model on each host
    rc, out, recap = playbook(inv, deb)
    assert rc == 0, out[-6000:]
    pids = {}
    for i, h in enumerate(HOSTS, 1):
        c = fleet[h]
        unit = f"llama-server@m{i}.service"
        assert c.prop(unit, "ActiveState") == "active", c.journal(unit)
        pids[h] = pid(c, unit)
        s = c.run("hugepage-agent", "status", check=False)
        assert s.returncode == 0, s.stdout
        assert recap[h]["changed"] > 0 and recap[h]["failed"] == 0

    # 2. the same inventory again: nothing changes, nothing restarts
    rc, out, recap = playbook(inv, deb)
    assert rc == 0, out[-6000:]
    assert {h: recap[h]["changed"] for h in HOSTS} == {h: 0 for h in HOSTS}, out[-6000:]
    assert {h: pid(fleet[h], f"llama-server@m{i}.service")
            for i, h in enumerate(HOSTS, 1)} == pids

    # 3. a broken model on host 2 (and a change for host 3): the rollout stops at host 2
    dropin = "/etc/hugepage-agent/config.d/60-ansible.toml"
    before = {h: fleet[h].path(dropin).read_text() for h in HOSTS}
    broken = dict(want, h2=[{**model(2), "path": "/srv/models/missing.gguf"}],
                  h3=[model(3), model(3, "n")])
    inv = inventory(tmp_path, fleet, broken)
    rc, out, recap = playbook(inv, deb)
    assert rc != 0
    assert recap["h2"]["failed"] == 1, out[-6000:]
    assert "h3" not in recap or recap["h3"]["ok"] == 0, out[-6000:]  # never reached
    h2, h3 = fleet["h2"], fleet["h3"]
    assert h2.path(dropin).read_text() == before["h2"]  # the old configuration stays
    assert pid(h2, "llama-server@m2.service") == pids["h2"]
    assert h3.path(dropin).read_text() == before["h3"]
    assert h3.prop("llama-server@n3.service", "ActiveState") == "inactive"

    # 4. a host that ends DEGRADED (a model its server cannot read) stops the
    # rollout too, and runs its previous configuration again
    degraded = dict(want, h2=[model(2), {**model(2, "s"), "path": "/srv/models/secret.gguf"}],
                    h3=[model(3), model(3, "n")])
    inv = inventory(tmp_path, fleet, degraded, wait=5)
    rc, out, recap = playbook(inv, deb)
    assert rc != 0 and recap["h2"]["failed"] == 1, out[-6000:]
    assert "did not reach its configuration" in out
    assert "h3" not in recap or recap["h3"]["ok"] == 0, out[-6000:]
    assert h2.path(dropin).read_text() == before["h2"]
    assert pid(h2, "llama-server@m2.service") == pids["h2"]
    assert h2.prop("llama-server@s2.service", "ActiveState") == "inactive"
    assert not h2.path("/var/lib/hugepage-agent/models/s2.json").exists()
    assert h3.path(dropin).read_text() == before["h3"]

    # 5. a changed argument reaches the server on every host of the rollout
    def with_args(i: int, *extra: str) -> list[dict[str, Any]]:
        return [{**model(i), "args": [*model(i)["args"], *extra]}]

    changed = {h: with_args(i, "-c", "8192") for i, h in enumerate(HOSTS, 1)}
    rc, out, recap = playbook(inventory(tmp_path, fleet, changed), deb)
    assert rc == 0, out[-6000:]
    for i, h in enumerate(HOSTS, 1):
        p = pid(fleet[h], f"llama-server@m{i}.service")
        assert p != pids[h] and cmdline(fleet[h], p)[-2:] == ["-c", "8192"], (h, out[-3000:])
        pids[h] = p

    # 6. new arguments that make host 2's server fail at start: the rollout stops
    # there, and host 2 runs its previous drop-in, its server its old arguments
    before = {h: fleet[h].path(dropin).read_text() for h in HOSTS}
    failing = dict(changed, h2=with_args(2, "-c", "8192", "--fail-start"), h3=with_args(3))
    rc, out, recap = playbook(inventory(tmp_path, fleet, failing), deb)
    assert rc != 0 and recap["h2"]["failed"] == 1, out[-6000:]
    assert "h3" not in recap or recap["h3"]["ok"] == 0, out[-6000:]
    assert "model m2: llama-server@m2.service" in out, out[-6000:]
    assert h2.path(dropin).read_text() == before["h2"]
    assert h2.prop("llama-server@m2.service", "ActiveState") == "active"
    p2 = pid(h2, "llama-server@m2.service")
    assert cmdline(h2, p2)[-2:] == ["-c", "8192"], cmdline(h2, p2)
    assert pid(h3, "llama-server@m3.service") == pids["h3"]  # never reached
    assert cmdline(h3, pids["h3"])[-2:] == ["-c", "8192"]
    pids["h2"] = p2

    # 7. removing a model from host 1's variables stops its unit
    inv = inventory(tmp_path, fleet, dict(changed, h1=[]))
    rc, out, recap = playbook(inv, deb)
    assert rc == 0, out[-6000:]
    h1 = fleet["h1"]
    assert h1.prop("llama-server@m1.service", "ActiveState") == "inactive"
    assert not h1.path("/var/lib/hugepage-agent/models/m1.json").exists()
    assert not h1.path("/etc/systemd/system/llama-server@m1.service.d").exists()
    assert recap["h2"]["changed"] == 0 and recap["h3"]["changed"] == 0
    assert pid(fleet["h2"], "llama-server@m2.service") == pids["h2"]
