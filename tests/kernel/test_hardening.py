"""What root writes never follows a link or a path another user controls; the
servers' user and what it can read; release without the model files; the
daemon's adapters refusing what they cannot check (no root needed for most)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hugepage_agent import modelfiles, serveruser
from hugepage_agent.cli import main
from hugepage_agent.daemon import Job, Worker, extending_timeout
from hugepage_agent.dbus_service import AccessDenied, Agent1
from hugepage_agent.errors import HostError, printable
from hugepage_agent.host import Host
from tests.conftest import IS_ROOT, REPO
from tests.faketree import make_tree, snapshot


def test_write_never_follows_a_link_on_the_way(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    victim = outside / "hugepage_agent.prom"
    victim.write_text("keep")
    victim.chmod(0o600)
    (root / "metrics").symlink_to(outside)
    host = Host(root)
    with pytest.raises(HostError, match="a link or a missing directory"):
        host.write_atomic("/metrics/hugepage_agent.prom", "new")
    assert victim.read_text() == "keep" and stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert sorted(p.name for p in outside.iterdir()) == ["hugepage_agent.prom"]


def test_a_link_at_the_target_name_is_replaced_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("keep")
    victim.chmod(0o600)
    (root / "d" / "f").symlink_to(victim)
    Host(root).write_atomic("/d/f", "new", mode=0o640)
    assert victim.read_text() == "keep" and stat.S_IMODE(victim.stat().st_mode) == 0o600
    f = root / "d" / "f"
    assert not f.is_symlink() and f.read_text() == "new"
    assert stat.S_IMODE(f.stat().st_mode) == 0o640
    assert [p.name for p in (root / "d").iterdir()] == ["f"], "temporary file left behind"


@pytest.mark.skipif(not IS_ROOT, reason="needs root: chown to another user")
def test_untrusted_directories_are_named(tmp_path: Path) -> None:
    root = tmp_path / "root"
    d = root / "var" / "lib" / "prom"
    d.mkdir(parents=True)
    for p in (root / "var", root / "var" / "lib", d):
        p.chmod(0o755)
    host = Host(root)
    assert host.untrusted("/var/lib/prom") is None
    assert host.untrusted("/var/lib/prom/missing") is None
    (root / "var" / "lib").chmod(0o777)
    assert host.untrusted("/var/lib/prom") == "/var/lib is writable by group and others"
    (root / "var" / "lib").chmod(0o755)
    os.chown(d, 65534, 65534)
    assert host.untrusted("/var/lib/prom") == "/var/lib/prom is owned by uid 65534, not root"
    os.chown(d, 0, 0)
    (root / "var" / "link").symlink_to("lib")
    assert host.untrusted("/var/link/prom") == "/var/link is a symbolic link"


def passwd(root: Path, uid: int = 997) -> None:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/passwd").write_text(
        f"root:x:0:0:root:/root:/bin/bash\nhugepage-llama:x:{uid}:{uid}::/nonexistent:"
        "/usr/sbin/nologin\n")
    (root / "etc/group").write_text(f"root:x:0:\nhugepage-llama:x:{uid}:\nmodels:x:1500:"
                                    "alice,hugepage-llama\n")


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """A directory outside /tmp (the servers' sandbox hides /tmp)."""
    base = Path("/var/lib") if IS_ROOT else REPO / "wrapper_c" / "build"
    base.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix="hugepage-agent-test-", dir=base))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


def test_server_user_and_what_it_can_read(tmp_path: Path, outside_tmp: Path) -> None:
    passwd(tmp_path)
    user = serveruser.lookup(Host(tmp_path))
    assert user is not None and user.uid == 997 and user.groups == {997, 1500}
    models_dir = outside_tmp / "models"
    models_dir.mkdir(mode=0o755)
    m = models_dir / "m.gguf"
    m.write_bytes(b"GGUF")
    m.chmod(0o644)
    assert serveruser.cannot_read(str(m), user) is None
    m.chmod(0o600)
    why = serveruser.cannot_read(str(m), user)
    assert why is not None and "is not readable by hugepage-llama" in why
    os.chown(m, 0, 1500) if IS_ROOT else None
    m.chmod(0o640)
    if IS_ROOT:  # readable through a supplementary group
        assert serveruser.cannot_read(str(m), user) is None
    m.chmod(0o644)
    models_dir.chmod(0o700)
    why = serveruser.cannot_read(str(m), user)
    assert why is not None and f"{models_dir} is not searchable" in why
    models_dir.chmod(0o755)
    assert "private, empty one" in (serveruser.cannot_read("/tmp/x.gguf", user) or "")


def test_model_files_are_readable_by_root_and_the_servers_group_only(tmp_path: Path) -> None:
    passwd(tmp_path)
    host = Host(tmp_path)
    user = serveruser.lookup(host)
    assert modelfiles.file_mode("/var/lib/hugepage-agent/models/m.json", user) == (0o640, 997)
    assert modelfiles.file_mode("/etc/systemd/system/x.service.d/50-hugepage-agent.conf", user) \
        == (0o644, None)
    (tmp_path / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    assert serveruser.lookup(host) is None
    assert modelfiles.file_mode("/var/lib/hugepage-agent/models/m.json", None) == (0o600, None)


def test_release_needs_no_model_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    make_tree(root, pools={2048: 12, 1048576: 0})
    model = tmp_path / "gone.gguf"
    model.write_bytes(b"x" * 4096)
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[[model]]\nname = "m"\npath = "{model}"\n')
    model.unlink()
    assert main(["release", "--root", str(root), "--config", str(cfg)]) == 0, \
        capsys.readouterr().err
    assert (root / "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages").read_text() == "0"
    before = snapshot(root)
    assert main(["apply", "--root", str(root), "--config", str(cfg)]) == 2  # apply does need it
    assert "gone.gguf" in capsys.readouterr().err and snapshot(root) == before


class FakeBus:
    class dbus:
        @staticmethod
        def GetConnectionUnixUser(sender: str) -> int:
            return {":1.1": 0, ":1.2": 1000}[sender]


class Context:
    def __init__(self, sender: str) -> None:
        self.sender = sender


class FakeAgent:
    reloads = 0

    def status(self) -> dict[str, Any]:
        return {}

    def reload(self) -> tuple[bool, str]:
        self.reloads += 1
        return True, "reloaded"


def test_reload_over_dbus_is_root_only_and_refused_without_a_caller() -> None:
    agent = FakeAgent()
    obj = Agent1(agent, FakeBus())
    with pytest.raises(AccessDenied):
        obj.Reload()  # no dbus_context: nothing to check, so no
    with pytest.raises(AccessDenied):
        obj.Reload(Context(":1.2"))
    assert agent.reloads == 0
    assert obj.Reload(Context(":1.1")) == (True, "reloaded") and agent.reloads == 1


def test_worker_survives_a_failing_job_and_keeps_order() -> None:
    worker = Worker()
    done: list[int] = []

    def boom() -> None:
        raise RuntimeError("unexpected")

    bad = worker.submit(boom)
    jobs = [worker.submit(lambda i=i: done.append(i)) for i in range(5)]
    assert bad.done.wait(5) and bad.result == (False, "internal error: unexpected")
    assert all(j.done.wait(5) for j in jobs) and done == [0, 1, 2, 3, 4]
    assert isinstance(Job(lambda: 1), Job)


def test_extending_timeout_asks_systemd_for_time_while_working() -> None:
    sent: list[str] = []
    with extending_timeout(sent.append):
        pass
    assert sent and sent[0].startswith("EXTEND_TIMEOUT_USEC=")


def test_messages_cannot_forge_lines() -> None:
    assert printable("a\nb\x1b[31m\u2028c") == "a\\x0ab\\x1b[31m\\u2028c"
    assert printable("modèle ü 模型") == "modèle ü 模型"


def test_swapping_the_temporary_file_for_a_link_changes_nothing_it_points_to(
        tmp_path: Path) -> None:
    """An attacker who can write the directory swaps every temporary file for a
    link to a victim, as fast as it can, during 200 writes: the victim keeps
    its mode and contents (the old code chmodded it in 51 of 200)."""
    root = tmp_path / "root"
    d = root / "metrics"
    d.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("secret")
    victim.chmod(0o600)
    stop = threading.Event()
    swaps = [0]

    def attacker() -> None:
        while not stop.is_set():
            for name in os.listdir(d):
                if name.startswith(".hugepage_agent.prom."):
                    with contextlib.suppress(OSError):
                        os.rename(d / name, d / f"stolen{swaps[0]}")
                        os.symlink(victim, d / name)
                        swaps[0] += 1

    t = threading.Thread(target=attacker)
    t.start()
    host = Host(root)
    try:
        for i in range(200):
            with contextlib.suppress(HostError):
                host.write_atomic("/metrics/hugepage_agent.prom", f"value {i}\n")
    finally:
        stop.set()
        t.join()
    print(f"\n{swaps[0]} temporary files swapped for links in 200 writes")
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600 and victim.read_text() == "secret"


@pytest.mark.skipif(not IS_ROOT, reason="needs root: runs status as another user")
def test_status_by_another_user_when_the_configuration_is_root_only(outside_tmp: Path) -> None:
    """A 0600 configuration read by a user who cannot: status still reports the
    pools and THP, and names the file it could not read, without a traceback."""
    root = outside_tmp / "root"
    make_tree(root)
    cfg = root / "etc/hugepage-agent/config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("[pool]\nsize = 4\n")
    cfg.chmod(0o600)
    for dirpath, _, _ in os.walk(root):
        os.chmod(dirpath, 0o755)
    r = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
         "-m", "hugepage_agent", "status", "--json", "--root", str(root)],
        capture_output=True, text=True, check=False,
        env={"PYTHONPATH": str(REPO / "agent"), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    data = json.loads(r.stdout)
    assert "config.toml" in data["config"]["error"] and "root only" in data["config"]["error"]
    assert data["pools"] and data["thp"]["enabled"]


def test_metrics_warnings_are_once_per_reason(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """A metrics directory that was missing (reported once) and then appears
    unsafe is reported again, for the new reason."""
    from hugepage_agent import config
    from hugepage_agent.daemon import Agent

    root = tmp_path / "root"
    make_tree(root)
    cfg = tmp_path / "config.toml"
    cfg.write_text('[metrics]\ntextfile_dir = "/prom"\n')
    agent = Agent(Host(root), str(cfg), None)
    agent.cfg = config.load(agent.host, str(cfg))
    with caplog.at_level("INFO"):
        agent.write_metrics()
        agent.write_metrics()
        (root / "prom").mkdir(mode=0o777)
        (root / "prom").chmod(0o777)
        agent.write_metrics()
        agent.write_metrics()
    text = caplog.text
    assert text.count("/prom does not exist") == 1
    assert text.count("not writing into /prom") == 1
    assert not (root / "prom" / "hugepage_agent.prom").exists()
