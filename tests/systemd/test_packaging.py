"""Packaging: the Debian package (lintian clean) installed with apt into a
clean container with a real systemd, used as an operator would, and purged;
and the RPM built from the same tree."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IS_ROOT, MAPTOOL, REPO
from tests.container import Container, booted

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root: builds packages, boots nspawn")
VERSION = next(line.split('"')[1] for line in
               (REPO / "agent/hugepage_agent/__init__.py").read_text().splitlines()
               if line.startswith("__version__"))


def test_one_version_everywhere(dist: Path) -> None:
    deb = next(dist.glob("*.deb"))
    rpm = next(dist.glob("*.rpm"))
    assert deb.name == f"hugepage-agent_{VERSION}_amd64.deb"
    assert rpm.name.startswith(f"hugepage-agent-{VERSION}-1.")
    r = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True,
                       check=True)
    assert r.stdout.strip() == VERSION


def test_deb_is_lintian_clean(dist: Path) -> None:
    r = subprocess.run(["lintian", "--fail-on", "error", str(next(dist.glob("*.deb")))],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0 and not any(line.startswith("E:") for line in r.stdout.splitlines())


def test_deb_contents(dist: Path) -> None:
    r = subprocess.run(["dpkg-deb", "-c", str(next(dist.glob("*.deb")))], capture_output=True,
                       text=True, check=True)
    files = {line.split()[-1].lstrip(".") for line in r.stdout.splitlines()}
    for f in ("/usr/share/man/man8/hugepage-agent.8.gz",
              "/usr/share/man/man5/hugepage-agent.toml.5.gz",
              "/usr/share/bash-completion/completions/hugepage-agent",
              "/usr/share/hugepage-agent/prometheus/hugepage-agent.rules.yml",
              "/usr/lib/sysusers.d/hugepage-agent.conf",
              "/usr/share/doc/hugepage-agent/README.md"):
        assert f in files, f


def test_rpm_contents(dist: Path) -> None:
    r = subprocess.run(["rpm", "-qpl", str(next(dist.glob("*.rpm")))], capture_output=True,
                       text=True, check=True)
    files = r.stdout.split()
    for f in ("/usr/bin/hugepage-agent", "/usr/lib/hugepage-agent/libhugepage-wrapper.so",
              "/usr/lib/systemd/system/hugepage-agent.service",
              "/usr/lib/systemd/system/llama-server@.service",
              "/usr/share/dbus-1/system.d/net.hugepageagent.Agent1.conf",
              "/etc/hugepage-agent/config.toml"):
        assert f in files
    for f in ("/usr/lib/sysusers.d/hugepage-agent.conf",
              "/usr/share/bash-completion/completions/hugepage-agent",
              "/usr/share/hugepage-agent/prometheus/hugepage-agent.rules.yml"):
        assert f in files, f
    assert any(f.startswith("/usr/share/man/man8/hugepage-agent.8") for f in files)
    assert any(f.startswith("/usr/share/man/man5/hugepage-agent.toml.5") for f in files)
    conf = subprocess.run(["rpm", "-qpc", str(next(dist.glob("*.rpm")))], capture_output=True,
                          text=True, check=True).stdout.split()
    assert conf == ["/etc/hugepage-agent/config.toml"]


def rpm_scriptlets(rpm: Path) -> dict[str, str]:
    """The RPM's scriptlets as rpm itself reports them: name -> body."""
    out = subprocess.run(["rpm", "-qp", "--scripts", str(rpm)], capture_output=True,
                         text=True, check=True).stdout
    parts = re.split(r"^(\w+) scriptlet \(using /bin/sh\):\n", out, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_rpm_scriptlets_run_clean(dist: Path, tmp_path: Path) -> None:
    """Each scriptlet, run as rpm runs it (sh, with $1 the package count) and
    with stand-ins for systemctl and systemd-sysusers that record their
    arguments: exit 0, nothing on stderr (a file path pasted as a command says
    `not found` there), shellcheck clean."""
    scripts = rpm_scriptlets(next(dist.glob("*.rpm")))
    assert set(scripts) == {"postinstall", "preuninstall"}, scripts
    stubs = tmp_path / "bin"
    stubs.mkdir()
    log = tmp_path / "calls"
    for tool in ("systemctl", "systemd-sysusers"):
        (stubs / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\n')
        (stubs / tool).chmod(0o755)
    for name, arg in (("postinstall", "1"), ("preuninstall", "0")):
        body = scripts[name]
        r = subprocess.run(["/bin/sh", "-c", body, "sh", arg], capture_output=True, text=True,
                           env={"PATH": f"{stubs}:/usr/bin:/bin"}, check=False)
        assert r.returncode == 0 and r.stderr == "", (name, r.stderr, body)
        if shutil.which("shellcheck") is None:
            pytest.fail("shellcheck is missing: scripts/deps.sh installs it")
        sc = subprocess.run(["shellcheck", "-s", "sh", "-"], input=body, capture_output=True,
                            text=True, check=False)
        assert sc.returncode == 0, (name, sc.stdout)
    assert "systemd-sysusers /usr/lib/sysusers.d/hugepage-agent.conf" in log.read_text()


def serve_model(ct: Container) -> int:
    """Configure model m (the fake server, on /srv/models/m.gguf), reload the
    agent and wait for its unit's main process: its pid."""
    ct.path("/etc/hugepage-agent/config.d").mkdir(exist_ok=True)
    ct.path("/etc/hugepage-agent/config.d/50-model.toml").write_text(
        '[wrapper]\nmin_size = "64M"\n[server]\nbinary = "/usr/local/bin/fakeserver"\n'
        '[[model]]\nname = "m"\npath = "/srv/models/m.gguf"\nargs = ["--port", "8080"]\n')
    ct.systemctl("reload", "hugepage-agent.service")
    deadline = time.monotonic() + 30
    pid = 0
    while time.monotonic() < deadline and not pid:
        pid = int(ct.prop("llama-server@m.service", "MainPID") or 0)
        time.sleep(0.2)
    assert pid, ct.journal("llama-server@m.service") + ct.journal("hugepage-agent.service")
    return pid


@pytest.fixture(scope="module")
def clean_ct(dist: Path, wrapper_build: Path) -> Iterator[Container]:
    def setup(c: Container) -> None:
        for deb in dist.glob("*.deb"):
            (c.root / "root" / deb.name).write_bytes(deb.read_bytes())
        (c.root / "srv/models").mkdir(parents=True)
        subprocess.run([str(MAPTOOL), "mkfile", str(c.root / "srv/models/m.gguf"),
                        str(200 << 20)], check=True)

    with booted("hpa-pkg", setup, install=False, stop_units=["llama-server@m.service"]) as c:
        yield c


def test_install_use_and_purge_like_an_operator(clean_ct: Container) -> None:
    ct = clean_ct
    deb = f"/root/hugepage-agent_{VERSION}_amd64.deb"
    r = ct.run("apt-get", "install", "-y", "--no-install-recommends", deb, check=False,
               timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert ct.path("/etc/hugepage-agent/config.toml").exists()
    ct.systemctl("enable", "--now", "hugepage-agent.service")
    assert ct.prop("hugepage-agent.service", "ActiveState") == "active"
    assert ct.prop("hugepage-agent.service", "UnitFileState") == "enabled"
    s = ct.run("hugepage-agent", "status", check=False)
    assert "2M" in s.stdout and "THP" in s.stdout, s.stdout + s.stderr

    # serve a model: configuration, reload, the unit runs with the wrapper
    pid = serve_model(ct)
    env = ct.proc(pid, "environ").read_bytes().split(b"\0")
    assert b"LD_PRELOAD=/usr/lib/hugepage-agent/libhugepage-wrapper.so" in env
    data = json.loads(ct.run("hugepage-agent", "status", "--json", check=False).stdout)
    assert [m["unit"] for m in data["models"]] == ["llama-server@m.service"]
    # the package created the servers' user; the server runs as it
    uid = ct.proc(pid, "status").read_text().split("Uid:")[1].split()[0]
    assert ct.run("id", "-un", uid).stdout.strip() == "hugepage-llama"
    assert ct.run("stat", "-c", "%a", "/etc/hugepage-agent/config.toml").stdout.strip() == "600"
    # the units' Documentation= exists
    assert ct.path("/usr/share/doc/hugepage-agent/README.md").is_file()

    # a configured metrics directory: the agent's sandbox lets it write there
    # after a restart, and purge removes the file there too
    ct.path("/srv/metrics").mkdir(mode=0o755)
    ct.path("/etc/hugepage-agent/config.d/40-metrics.toml").write_text(
        '[metrics]\ntextfile_dir = "/srv/metrics"\ninterval = "1s"\n')
    ct.systemctl("reload", "hugepage-agent.service")
    ct.systemctl("restart", "hugepage-agent.service")
    prom = ct.path("/srv/metrics/hugepage_agent.prom")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not prom.exists():
        time.sleep(0.2)
    assert prom.exists(), ct.journal("hugepage-agent.service")
    ct.path("/etc/hugepage-agent/config.d/40-metrics.toml").unlink()

    # purge stops the servers (they run the package's files), then removes what
    # the package and the agent wrote; the pool stays until reboot
    pool_before = Path("/proc/sys/vm/nr_hugepages").read_text()
    r = ct.run("apt-get", "purge", "-y", "hugepage-agent", check=False, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert ct.prop("llama-server@m.service", "ActiveState") in ("inactive", "")
    assert not Path(f"/proc/{ct.leader}/root/proc/{pid}").exists() or \
        "fakeserver" not in ct.proc(pid, "cmdline").read_text(errors="replace")
    for gone in ("/usr/bin/hugepage-agent", "/usr/lib/hugepage-agent",
                 "/srv/metrics/hugepage_agent.prom",
                 "/etc/hugepage-agent/config.toml",
                 "/lib/systemd/system/hugepage-agent.service",
                 "/etc/systemd/system/llama-server@m.service.d",
                 "/etc/sysctl.d/80-hugepage-agent.conf", "/var/lib/hugepage-agent",
                 "/usr/lib/python3/dist-packages/hugepage_agent"):
        assert not ct.path(gone).exists(), f"{gone} left after purge"
    # the operator's own file stays, as dpkg leaves files it did not install
    assert [p.name for p in ct.path("/etc/hugepage-agent").rglob("*") if p.is_file()] == \
        ["50-model.toml"]
    assert Path("/proc/sys/vm/nr_hugepages").read_text() == pool_before


@pytest.fixture(scope="module")
def rpm_ct(dist: Path, wrapper_build: Path) -> Iterator[tuple[Container, list[str]]]:
    """A booted root with the host's rpm in it, and the command that runs it."""
    def setup(c: Container) -> None:
        (c.root / "srv/models").mkdir(parents=True)
        subprocess.run([str(MAPTOOL), "mkfile", str(c.root / "srv/models/m.gguf"),
                        str(200 << 20)], check=True)
        # An RPM distribution's Python looks in site-packages, where the RPM
        # puts the agent; Debian's looks in dist-packages: a .pth bridges the two.
        site = subprocess.run(["rpm", "-qpl", str(next(dist.glob("*.rpm")))],
                              capture_output=True, text=True, check=True).stdout.split()
        pkg = next(f for f in site if f.endswith("/hugepage_agent"))
        (c.root / "usr/lib/python3/dist-packages/rpm-site.pth").write_text(
            str(Path(pkg).parent) + "\n")
        shutil.copy2(next(dist.glob("*.rpm")), c.root / "root/hugepage-agent.rpm")
        rpm_cmd.extend(put_rpm_in(c))

    rpm_cmd: list[str] = []

    with booted("hpa-rpm", setup, install=False, stop_units=["llama-server@m.service"]) as c:
        yield c, rpm_cmd


def put_rpm_in(c: Container) -> list[str]:
    """The host's rpm (Debian's package `rpm`), copied into the root with the
    libraries it links (in /opt/host-rpm/lib) and its macros, so that it runs inside the booted
    container: its scriptlets then reach that systemd as on a host. Returns
    the command line that runs it there."""
    dest = c.root / "opt/host-rpm"
    (dest / "lib").mkdir(parents=True)
    ldd = subprocess.run(["ldd", "/usr/bin/rpm"], capture_output=True, text=True,
                         check=True).stdout
    for lib in re.findall(r"=> (/\S+)", ldd):
        shutil.copy2(lib, dest / "lib")
    for tool in ("rpm", "rpmdb", "rpmkeys", "rpmquery"):  # rpm runs the others by path
        shutil.copy2(f"/usr/bin/{tool}", c.root / "usr/bin" / tool)
    shutil.copytree("/usr/lib/rpm", c.root / "usr/lib/rpm")
    return ["env", "LD_LIBRARY_PATH=/opt/host-rpm/lib", "rpm", "--dbpath", "/var/lib/rpm"]


def deb_files(dist: Path) -> set[str]:
    out = subprocess.run(["dpkg-deb", "-c", str(next(dist.glob("*.deb")))], capture_output=True,
                         text=True, check=True).stdout
    return {line.split(maxsplit=5)[5].lstrip(".").split(" -> ")[0] for line in out.splitlines()
            if not line.startswith("d")}


def same_place(path: str) -> str:
    """A file's place whatever the distribution: Python's directory and the
    man pages' compression aside, the .deb and the .rpm install the same."""
    path = re.sub(r"^/usr/lib/python3[.0-9]*/(dist|site)-packages/", "PYTHON/", path)
    path = re.sub(r"^/lib/systemd/", "/usr/lib/systemd/", path)
    return re.sub(r"\.gz$", "", path)


def test_rpm_installs_runs_and_erases_in_a_booted_root(
        rpm_ct: tuple[Container, list[str]], dist: Path) -> None:
    """The RPM installed for real by rpm itself, in a booted Debian root with
    systemd (its scriptlets run there as on an RPM host), then used and erased
    like the .deb."""
    ct, cmd = rpm_ct
    rpm = next(dist.glob("*.rpm"))
    ct.run(*cmd, "--initdb")
    r = ct.run(*cmd, "-i", "--nodeps", "/root/hugepage-agent.rpm", check=False)
    print(f"\n$ rpm -i --nodeps {rpm.name}\n{r.stdout}{r.stderr}")
    # --nodeps: the Debian root has no RPM database of python3 and the rest
    assert r.returncode == 0 and "scriptlet failed" not in r.stderr, r.stderr
    assert ct.run("getent", "passwd", "hugepage-llama").returncode == 0  # %post: sysusers
    assert ct.prop("hugepage-agent.service", "UnitFileState") == "enabled"  # %post: enable
    # every file the .deb ships, the .rpm ships (its changelog and lintian notes aside)
    rpm_list = subprocess.run(["rpm", "-qpl", str(rpm)], capture_output=True, text=True,
                              check=True).stdout.split()
    debian_only = {"/usr/share/doc/hugepage-agent/changelog",  # dh_installchangelogs
                   "/usr/share/doc/hugepage-agent/changelog.Debian",
                   "/usr/share/lintian/overrides/hugepage-agent"}
    missing = {same_place(f) for f in deb_files(dist)} - {same_place(f) for f in rpm_list} \
        - debian_only
    assert not missing, sorted(missing)

    ct.systemctl("start", "hugepage-agent.service")
    serve_model(ct)
    assert ct.path("/etc/systemd/system/llama-server@m.service.d/50-hugepage-agent.conf").exists()
    assert ct.path("/etc/sysctl.d/80-hugepage-agent.conf").exists()

    r = ct.run(*cmd, "-e", "--nodeps", "hugepage-agent", check=False)
    print(f"$ rpm -e hugepage-agent\n{r.stdout}{r.stderr}")
    assert r.returncode == 0 and "scriptlet failed" not in r.stderr, r.stderr
    # %preun stopped the servers and the agent, and purge-files removed what it wrote
    assert ct.prop("llama-server@m.service", "ActiveState") in ("inactive", "")
    assert ct.prop("hugepage-agent.service", "ActiveState") in ("inactive", "")
    for gone in (*rpm_list, "/etc/systemd/system/llama-server@m.service.d/50-hugepage-agent.conf",
                 "/etc/sysctl.d/80-hugepage-agent.conf", "/var/lib/hugepage-agent"):
        if gone in ("/etc/hugepage-agent", "/etc/hugepage-agent/config.d"):
            continue  # they hold the operator's own file, which stays
        assert not ct.path(gone).exists(), f"{gone} left after erase"
    assert ct.path("/etc/hugepage-agent/config.d/50-model.toml").exists()
