"""The README's commands, run as written: its set-up command on a clean Debian
root with a real systemd (the test command is what CI runs), then every other
shell block in order, with a stand-in llama-server and model."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IS_ROOT, REPO
from tests.container import CHECKOUT as SRC
from tests.container import Container, booted, fresh_machine

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root: boots systemd-nspawn")
README = REPO / "README.md"


def sh_blocks() -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", README.read_text(), flags=re.M | re.S)


def test_readme_opens_with_the_two_commands() -> None:
    first = sh_blocks()[0].split("\n")
    # as written for a root shell: a minimal server or container has no sudo
    assert first[:2] == ["./scripts/install.sh --demo", "./scripts/test.sh"]
    text = README.read_text()
    assert text.index("```sh") < text.index("## How it works")
    ci = (REPO / ".ci/run").read_text()
    assert "./scripts/test.sh" in ci  # CI runs the README's test command


@pytest.fixture(scope="module")
def host(wrapper_build: Path, demo_cache: Path) -> Iterator[Container]:
    def setup(c: Container) -> None:
        fresh_machine(c, demo_cache)
        sudo = c.path("/usr/local/bin/sudo")
        sudo.write_text('#!/bin/sh\nexec "$@"\n')
        sudo.chmod(0o755)
        c.path("/usr/local/bin/fakeserver").rename(c.path("/usr/local/bin/llama-server"))
        model = c.path("/srv/models/qwen3-30b.gguf")
        model.parent.mkdir(parents=True)
        with open(model, "wb") as f:
            f.truncate(1100 << 20)  # sparse: reads as zeros

    with booted("hpa-readme", setup, install=False,
                stop_units=["llama-server@qwen3-30b.service"]) as c:
        yield c


def test_readme_commands_run_as_written(host: Container) -> None:
    # the set-up command as written, in a root shell that has no sudo at all
    sudo = host.path("/usr/local/bin/sudo")
    sudo.rename(sudo.with_name("sudo.off"))
    try:
        setup = sh_blocks()[0].split("\n")[0]
        r = host.run("sh", "-c", f"cd {SRC} && {setup}", check=False, timeout=600)
    finally:
        sudo.with_name("sudo.off").rename(sudo)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "POOL" in r.stdout and "THP" in r.stdout
    assert "systemd is not PID 1" not in r.stderr  # decided without ps
    assert host.prop("hugepage-agent.service", "ActiveState") == "active"
    # the demo: served from huge pages, one completion, how to remove it
    assert re.search(r"^demo\s+llama-server@demo\.service\s+active/running .* yes\s+loaded$",
                     r.stdout, flags=re.M), r.stdout
    assert "completion: '" in r.stdout, r.stdout + r.stderr[-2000:]
    assert "./scripts/install.sh --remove-demo" in r.stderr
    pid = int(host.prop("llama-server@demo.service", "MainPID"))
    argv = host.proc(pid, "cmdline").read_bytes().split(b"\0")
    assert argv[0] == b"/var/lib/hugepage-agent-demo/llama-server"
    assert argv[argv.index(b"--host") + 1] == b"127.0.0.1"  # this host only
    # twice: one demo, its server left running
    again = host.run("sh", "-c", f"cd {SRC} && {setup}", check=False, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert int(host.prop("llama-server@demo.service", "MainPID")) == pid
    assert len(list(host.path("/etc/hugepage-agent/config.d").glob("*demo*"))) == 1
    outputs = []
    for block in sh_blocks()[1:]:
        r = host.run("bash", "-euo", "pipefail", "-c", f"cd {SRC}\n{block}", check=False)
        assert r.returncode == 0, f"README block failed:\n{block}\n{r.stdout}\n{r.stderr}"
        outputs.append(r.stdout)
    # the serving block began by removing the demo: nothing of it is left
    for gone in ("/var/lib/hugepage-agent-demo", "/etc/hugepage-agent/config.d/90-demo.toml",
                 "/etc/systemd/system/llama-server@demo.service.d",
                 "/var/lib/hugepage-agent/models/demo.json", "/run/hugepage-agent/start/demo.json"):
        assert not host.path(gone).exists(), gone
    assert host.prop("llama-server@demo.service", "ActiveState") == "inactive"
    served = next(o for o in outputs if "llama-server@qwen3-30b" in o)
    assert re.search(r"qwen3-30b\s+llama-server@qwen3-30b\.service\s+active/running", served)
    line = r"1\.07 GiB\s+1\.07 GiB\s+\S+ \S+\s+100\.0%\s+2M\s+yes\s+loaded"
    assert re.search(line, served), served
    assert "OK: as configured" in served

