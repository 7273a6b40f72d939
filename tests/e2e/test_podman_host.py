"""A model served from a container image on this host, for real: Debian 12's
podman (with runc: crun refuses this machine's hybrid cgroups), the agent's
own `run-container` (what llama-container@NAME runs; systemd is not PID 1
here, so it runs by hand, and podman keeps the payload in its own cgroup),
the image check, `status` without systemd, and the health-check-style
commands. The systemd units, Docker and Compose are tested in the QEMU guest
(tests/e2e/test_containers.py).

Root here lacks CAP_SYS_RESOURCE and runc cannot set podman's default rlimits
(RLIMIT_NPROC above 32768 is refused), so the models pass lower ones in
model.runtime_args, as an operator on such a host would."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hugepage_agent import config, containerargs, modelfiles, unitfiles
from hugepage_agent.host import Host
from tests import ggufmodel, images
from tests.conftest import IS_ROOT, LIBRARY
from tests.e2e.test_llama import memory
from tests.llama import Server, agent_cmd, agent_env, free_port, llama_bin

pytestmark = [pytest.mark.skipif(not IS_ROOT, reason="needs root: podman runs rootful"),
              pytest.mark.skipif(shutil.which("podman") is None,
                                 reason="podman is not installed (scripts/deps.sh installs it)")]

IMAGE = "localhost/hugepage-agent-test"
RLIMITS = ["--ulimit=nofile=1024:1024", "--ulimit=nproc=1000:1000"]
SHAPE = ggufmodel.Shape(layers=5, embd=2048, ff=5504, heads=16, kv_heads=16, ctx=256,
                        qtype="Q4_0")
MIB = 1 << 20


def podman(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check,
                          timeout=300)


@pytest.fixture(scope="module")
def llama() -> Path:
    return llama_bin() / "llama-server"


@pytest.fixture(scope="module")
def tagged(llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """bookworm and bullseye images with this host's llama-server; removed after."""
    tmp = tmp_path_factory.mktemp("images")
    refs = {}
    for suite in ("bookworm", "bullseye"):
        refs[suite] = f"{IMAGE}:{suite}"
        images.import_image("podman", images.with_server(images.base(suite), llama,
                                                         tmp / f"{suite}.tar"), refs[suite])
    yield refs
    for ref in refs.values():
        podman("rmi", "-f", ref)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    m = tmp_path / "models" / "q4.gguf"
    m.parent.mkdir()
    shutil.copy(ggufmodel.cached(SHAPE), m)
    for p in (tmp_path, m.parent, m):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return m


def write_config(tmp_path: Path, body: str) -> Path:
    f = tmp_path / "config.toml"
    f.write_text(f'[wrapper]\nlibrary = "{LIBRARY}"\n[metrics]\ntextfile_dir = ""\n'
                 f'[thp]\nenabled = "keep"\ndefrag = "keep"\n{body}')
    return f


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(agent_cmd(*args), capture_output=True, text=True, check=False,
                          env=agent_env(), timeout=600)


def containers() -> list[str]:
    return sorted(podman("ps", "-a", "--format", "{{.Names}}").stdout.split())


def test_an_image_with_an_older_glibc_is_refused_naming_both_versions(
        wrapper_build: Path, tagged: dict[str, str], model: Path, tmp_path: Path) -> None:
    before = containers()
    cfg = write_config(tmp_path, "".join(
        f'[[model]]\nname = "{s}"\npath = "{model}"\nimage = "{ref}"\n'
        for s, ref in tagged.items()))
    r = agent("apply", "--dry-run", "--config", str(cfg))
    assert r.returncode == 1, r.stdout + r.stderr
    refused = [line for line in r.stdout.splitlines() if line.startswith("error: model ")]
    assert len(refused) == 1, r.stdout
    assert refused[0].startswith(f"error: model bullseye: image {tagged['bullseye']} runs "
                                 "glibc 2.31 (")
    assert "needs glibc 2.3" in refused[0] and "the agent will not start its unit" in refused[0]
    assert containers() == before  # the check's containers were created and removed


MUSL_LIBC = Path("/usr/lib/x86_64-linux-musl/libc.so")


@pytest.mark.skipif(shutil.which("musl-gcc") is None or not MUSL_LIBC.exists(),
                    reason="musl-tools is not installed (scripts/deps.sh installs it)")
def test_a_musl_image_is_refused_before_it_starts(wrapper_build: Path, model: Path,
                                                  tmp_path: Path) -> None:
    """An Alpine-like image: musl's loader and a program built against it as the
    entrypoint (no registry here: built from Debian's musl-tools)."""
    src = tmp_path / "server.c"
    src.write_text('#include <stdio.h>\nint main(void) { puts("llama"); return 0; }\n')
    binary = tmp_path / "llama-server"
    subprocess.run(["musl-gcc", "-o", str(binary), str(src)], check=True)
    tarball = tmp_path / "musl.tar"
    with tarfile.open(tarball, "w") as tar:
        for path, mode in (("./lib", 0o755), ("./app", 0o755), ("./tmp", 0o1777)):
            d = tarfile.TarInfo(path)
            d.type, d.mode = tarfile.DIRTYPE, mode
            tar.addfile(d)
        tar.add(MUSL_LIBC, "./lib/ld-musl-x86_64.so.1")
        tar.add(binary, "./app/llama-server")
    ref = f"{IMAGE}:musl"
    images.import_image("podman", tarball, ref)
    try:
        runs = podman("run", "--rm", *RLIMITS, ref)
        assert runs.returncode == 0 and runs.stdout == "llama\n"  # the image itself works
        preloaded = podman("run", "--rm", *RLIMITS, "-v", f"{LIBRARY}:{containerargs.LIBRARY}:ro",
                           "-e", f"LD_PRELOAD={containerargs.LIBRARY}", ref)
        assert preloaded.returncode != 0  # what the refusal spares the operator
        cfg = write_config(tmp_path, f'[[model]]\nname = "alpine"\npath = "{model}"\n'
                           f'image = "{ref}"\n')
        r = agent("apply", "--dry-run", "--config", str(cfg))
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"error: model alpine: image {ref} runs with musl libc " \
               "(/lib/ld-musl-x86_64.so.1)" in r.stdout, r.stdout
    finally:
        podman("rmi", "-f", ref)


@pytest.fixture
def served(wrapper_build: Path, kernel_state: None, tagged: dict[str, str], model: Path,
           tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Model `q4` from the bookworm image, started as llama-container@q4 would:
    the files the daemon writes for it (modelfiles.render_all) under a root
    prefix that also holds the servers' user (nobody here), and
    `run-container` with its drop-in's environment."""
    Path("/proc/sys/vm/nr_hugepages").write_text("200")
    port = free_port()
    args = ["-c", "256", "-t", "2", "--host", "127.0.0.1", "--port", str(port)]
    cfg = write_config(tmp_path, f'[[model]]\nname = "q4"\npath = "{model}"\n'
                       f'image = "{tagged["bookworm"]}"\nargs = {json.dumps(args)}\n'
                       f"runtime_args = {json.dumps(RLIMITS)}\n")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("hugepage-llama:x:65534:65534::/:/usr/sbin/nologin\n")
    (root / "etc" / "group").write_text("nogroup:x:65534:\n")
    files = modelfiles.render_all(config.load(Host("/"), str(cfg)), str(LIBRARY))
    for path, text in files.items():
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / path.lstrip("/")).write_text(text)
    dropin = files[unitfiles.dropin_path("llama-container@q4.service")]
    env = agent_env(unitfiles.dropin_environment(dropin))
    log = tmp_path / "run-container.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(agent_cmd("run-container", "--root", str(root), "q4"),
                                env=env, stdout=f, stderr=subprocess.STDOUT)
    name = containerargs.container_name("q4")
    try:
        srv = Server.running(proc, port, log)
        srv.wait_ready(300)
        pid = int(podman("inspect", "--format", "{{.State.Pid}}", name, check=True).stdout)
        yield {"port": port, "pid": pid, "cfg": cfg, "server": srv, "name": name,
               "root": root, "log": log}
    finally:
        proc.send_signal(signal.SIGTERM)  # the unit's stop: the client passes it on
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        agent("remove-container", "--root", str(root), "q4")
        assert name not in containers()


def test_run_container_serves_the_image_from_huge_pages(served: dict[str, Any], llama: Path,
                                                        model: Path, tmp_path: Path) -> None:
    pid = served["pid"]
    mem = memory(pid, Path(containerargs.model_path(str(model))))
    assert mem["huge"] > 100 * MIB, mem
    assert mem["huge"] / (mem["huge"] + mem["small_pages"]) >= 0.99, mem
    status = Path(f"/proc/{pid}/status").read_text()
    assert "Uid:\t65534" in status  # the servers' user, not root
    assert "CapEff:\t0000000000000000" in status
    tokens = served["server"].complete("the", n=8)["tokens"]
    with Server(llama, model, tmp_path / "plain.log", args=["-c", "256"]) as plain:
        plain.wait_ready()
        assert tokens == plain.complete("the", n=8)["tokens"]
    r = agent("status", "--json", "--config", str(served["cfg"]))
    entry = json.loads(r.stdout)["models"][0]
    assert entry["pid"] == pid and entry["verdict"] == "loaded", entry
    assert entry["container"] == {"runtime": "podman", "name": served["name"], "pid": pid}
    log = served["log"].read_text(errors="replace")
    assert "hugepage-agent: model q4: load mode" in log  # this start's choice, as the units
    assert "fell back" not in log and "reason=" not in log


def test_health_check_commands_in_the_container_are_untouched(served: dict[str, Any]) -> None:
    url = f"http://127.0.0.1:{served['port']}"
    for path, rc in (("/health", 0), ("/nonexistent", 22)):
        with_lib = podman("exec", served["name"], "curl", "-sS", "-f", url + path)
        without = podman("exec", served["name"], "env", "-u", "LD_PRELOAD", "curl", "-sS", "-f",
                         url + path)
        assert (with_lib.returncode, with_lib.stdout, with_lib.stderr) == \
            (without.returncode, without.stdout, without.stderr)
        assert with_lib.returncode == rc and "hugepage" not in with_lib.stderr
    env = podman("exec", served["name"], "sh", "-c", "echo $LD_PRELOAD")
    assert env.stdout.strip() == containerargs.LIBRARY
