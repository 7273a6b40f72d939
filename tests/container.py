"""A real systemd booted in a container (systemd-nspawn) for the tests.

See shared/reference/testing-with-real-systemd.md: the root file system is
built once by scripts/rootfs.sh and cached; each session unpacks it, installs
the project into it (scripts/install-files.sh), boots it from cgroups of its
own, and drives it with nsenter and D-Bus. Everything it starts is stopped by
pid, and the cgroups and directories it made are removed."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MASK = ("systemd-udevd.service", "systemd-udevd-control.socket", "systemd-udevd-kernel.socket",
        "systemd-udev-trigger.service", "systemd-udev-settle.service", "console-getty.service",
        "apt-daily.timer", "apt-daily-upgrade.timer", "getty@tty1.service",
        "systemd-firstboot.service")
CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))
PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CHECKOUT = "/root/hugepage-agent"  # where fresh_machine puts the project's files


class ContainerError(RuntimeError):
    pass


def rootfs_tarball() -> Path:
    out = subprocess.run(["bash", str(REPO / "scripts" / "rootfs.sh")], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise ContainerError(f"scripts/rootfs.sh failed: {out.stderr[-2000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


class Container:
    def __init__(self, name: str = "hpa-test") -> None:
        self.name = f"{name}-{os.getpid()}"
        self.dir = Path(tempfile.mkdtemp(prefix="hugepage-agent-ct-", dir="/var/tmp"))
        self.root = self.dir / "root"
        self.log = self.dir / "console.log"
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.leader = 0

    # -- set-up ---------------------------------------------------------------
    def prepare(self, install: bool = True) -> None:
        """Unpack the root file system; with install, put the project in it."""
        self.root.mkdir()
        subprocess.run(["tar", "-C", str(self.root), "-xf", str(rootfs_tarball())], check=True)
        units = self.root / "etc/systemd/system"
        units.mkdir(parents=True, exist_ok=True)
        for u in MASK:
            p = units / u
            p.unlink(missing_ok=True)
            p.symlink_to("/dev/null")
        (self.root / "etc/hostname").write_text(self.name + "\n")
        if install:
            subprocess.run(["bash", str(REPO / "scripts" / "install-files.sh"),
                            str(self.root)], check=True)
        build = REPO / "wrapper_c" / "build" / "tests"
        for tool in ("fakeserver", "maptool"):
            shutil.copy2(build / tool, self.root / "usr/local/bin" / tool)

    def _nspawn(self, args: str) -> tuple[str, dict[str, str]]:
        """The shell command that starts systemd-nspawn from cgroups of the
        container's own (no systemd here to register a scope with)."""
        for base in CGROUP_ROOTS:
            (base / self.name).mkdir(exist_ok=True)
        procs = " ".join(str(base / self.name / "cgroup.procs") for base in CGROUP_ROOTS)
        env = dict(os.environ, SYSTEMD_NSPAWN_API_VFS_WRITABLE="yes")
        return (f"for f in {procs}; do echo $$ > $f; done; exec systemd-nspawn -q "
                f"-D {self.root} -M {self.name} --register=no --keep-unit {args}"), env

    def run_unbooted(self, script: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run a bash script as the container's PID 1: no systemd in it, as in
        a plain container. Every process it leaves dies with it."""
        cmd, env = self._nspawn("--pipe --setenv=PATH=" + PATH.split("=", 1)[1]
                                + " /bin/bash -euo pipefail -c " + shlex.quote(script))
        return subprocess.run(["sh", "-c", cmd], env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def boot(self, timeout: float = 60) -> None:
        cmd, env = self._nspawn("-b --console=read-only")
        with open(self.log, "wb") as log:
            self.nspawn = subprocess.Popen(["sh", "-c", cmd], stdout=log, stderr=log,
                                           stdin=subprocess.DEVNULL, env=env,
                                           start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited: {self.log.read_text()[-3000:]}")
            if not self.leader:
                kids = subprocess.run(["pgrep", "-P", str(self.nspawn.pid)],
                                      capture_output=True, text=True, check=False).stdout.split()
                self.leader = int(kids[0]) if kids else 0
            if self.leader:
                r = self.run("systemctl", "is-system-running", check=False)
                if r.stdout.strip() in ("running", "degraded"):
                    break
            time.sleep(0.2)
        else:
            raise ContainerError(f"the container did not boot: {self.log.read_text()[-3000:]}")
        # Let services write vm.nr_hugepages (read-only in containers by default).
        subprocess.run(["nsenter", "-t", str(self.leader), "-m", "sh", "-c",
                        "mount --bind /proc/sys/vm /proc/sys/vm && "
                        "mount -o remount,bind,rw /proc/sys/vm"], check=True)

    # -- use ------------------------------------------------------------------
    def run(self, *cmd: str, check: bool = True, timeout: float = 120,
            user: str | None = None) -> subprocess.CompletedProcess[str]:
        prefix = ["nsenter", "-t", str(self.leader), "-a", "env", "-i", PATH, "LANG=C.UTF-8"]
        if user is not None:
            prefix += ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
        r = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=timeout,
                           check=False)
        if check and r.returncode != 0:
            raise ContainerError(f"{' '.join(cmd)}: exit {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", *args, check=check)

    def prop(self, unit: str, name: str) -> str:
        return self.systemctl("show", "-p", name, "--value", unit).stdout.strip()

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "--no-pager", "-o", "cat", "-u", unit, check=False).stdout

    def path(self, p: str) -> Path:
        return self.root / p.lstrip("/")

    def live(self, p: str) -> Path:
        """A path as the running container sees it (its /run is a tmpfs of its own)."""
        return Path(f"/proc/{self.leader}/root/{p.lstrip('/')}")

    def proc(self, pid: int, name: str) -> Path:
        """A container process's /proc file, seen from the host."""
        return Path(f"/proc/{self.leader}/root/proc/{pid}/{name}")

    def bus(self) -> Any:
        import pydbus

        return pydbus.connect(f"unix:path=/proc/{self.leader}/root/run/dbus/system_bus_socket")

    # -- tear-down --------------------------------------------------------------
    def stop(self, timeout: float = 15) -> None:
        if self.nspawn is not None and self.nspawn.poll() is None:
            self.nspawn.send_signal(signal.SIGTERM)
            try:
                self.nspawn.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.leader, signal.SIGKILL)
                self.nspawn.kill()
                self.nspawn.wait(10)
        for base in CGROUP_ROOTS:
            d = base / self.name
            if d.exists():
                for sub in sorted(d.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                    if sub.is_dir():
                        with contextlib.suppress(OSError):
                            sub.rmdir()
                with contextlib.suppress(OSError):
                    d.rmdir()
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{self.name}", ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def booted(name: str, setup: Callable[[Container], None], *, install: bool = True,
           stop_units: Sequence[str] = ()) -> Iterator[Container]:
    """A container set up by `setup` (before boot) and booted, with the host's huge
    page state saved, the 2 MiB pool emptied, and all of it restored afterwards."""
    from tests.conftest import saved_kernel_state, set_pool

    with saved_kernel_state():
        set_pool(2048, 0)
        c = Container(name)
        try:
            c.prepare(install=install)
            setup(c)
            c.boot()
            yield c
        finally:
            for unit in stop_units:
                with contextlib.suppress(ContainerError):
                    c.run("systemctl", "stop", unit, check=False)
            c.stop()


def fresh_machine(c: Container, demo_cache: Path) -> None:
    """The checkout at CHECKOUT, the demo's cached parts in root's ~/.cache (as a
    second run on a fresh machine finds them), and no procps: a minimal root,
    where nothing may ask `ps` whether systemd runs."""
    llama = Path(subprocess.run(["bash", "scripts/llama.sh"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.strip())
    cache = c.path("/root/.cache/hugepage-agent")
    (cache / "models").mkdir(parents=True)
    shutil.copy2(demo_cache, cache / "models" / demo_cache.name)
    shutil.copytree(llama, cache / llama.parent.name / "bin")
    for ps in ("/usr/bin/ps", "/bin/ps", "/usr/bin/pgrep", "/usr/bin/pkill"):
        with contextlib.suppress(FileNotFoundError):
            c.path(ps).unlink()
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        src = REPO / f
        if src.is_file():
            dst = c.path(f"{CHECKOUT}/{f}")
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
            dst.chmod(src.stat().st_mode & 0o777)
