"""End to end with llama.cpp's llama-server (built by scripts/llama.sh) serving
real GGUF models (tests/ggufmodel.py): identical tokens with and without the
wrapper, the model in huge pages, clean logs, the pool back after exit,
fallback and strict mode, and the model unit under a real systemd."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import ggufmodel
from tests.conftest import IS_ROOT, free_pages, memfd_hugetlb_bytes, set_pool
from tests.container import Container, booted
from tests.llama import Server, agent_cmd, agent_env, llama_bin

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root: sizes the huge page pool")
PROMPT = "the huge page model of memory"
SMALL = ggufmodel.Shape(layers=4, embd=512, ff=1376)
BIG = ggufmodel.Shape.for_size(int(2.2 * (1 << 30)))


@pytest.fixture(scope="module")
def llama() -> Path:
    return llama_bin() / "llama-server"


@pytest.fixture(scope="module")
def small_model() -> Path:
    return ggufmodel.cached(SMALL)


def pages_for(path: Path) -> int:
    return -(-path.stat().st_size // (2 << 20))


def wrapper_config(tmp_path: Path, extra: str = "") -> Path:
    f = tmp_path / "config.toml"
    f.write_text(f'[wrapper]\nmin_size = "8M"\n{extra}')
    return f


def exec_prefix(cfg: Path) -> list[str]:
    return agent_cmd("exec", "--config", str(cfg), "--")


def hugetlb_bytes(pid: int, model: Path) -> int:
    return memfd_hugetlb_bytes(Path(f"/proc/{pid}/smaps"), model)


def wrapper_problems(log: str) -> list[str]:
    return [line for line in log.splitlines()
            if "munmap failed" in line or "madvise failed" in line
            or ("warn" in line.lower() and ("mmap" in line or "hugepage" in line))]


@pytest.fixture
def pool(kernel_state: None) -> None:
    set_pool(2048, 0)


def run_pair(llama: Path, model: Path, tmp_path: Path,
             cfg: Path) -> tuple[dict[str, Any], dict[str, Any], int]:
    """The same request to a plain server and to one under the wrapper."""
    with Server(llama, model, tmp_path / "plain.log") as plain:
        plain.wait_ready()
        expected = plain.complete(PROMPT)
    with Server(llama, model, tmp_path / "wrapped.log", wrap=exec_prefix(cfg)) as wrapped:
        wrapped.wait_ready()
        got = wrapped.complete(PROMPT)
        held = hugetlb_bytes(wrapped.pid, model)
    return expected, got, held


def test_tokens_identical_and_model_in_huge_pages(pool: None, llama: Path, small_model: Path,
                                                  tmp_path: Path) -> None:
    set_pool(2048, pages_for(small_model) + 2)
    start = free_pages(2048)
    cfg = wrapper_config(tmp_path)
    expected, got, held = run_pair(llama, small_model, tmp_path, cfg)
    assert expected["tokens"] and got["tokens"] == expected["tokens"]
    assert got["content"] == expected["content"]
    assert held >= 0.99 * small_model.stat().st_size
    log = (tmp_path / "wrapped.log").read_text(errors="replace")
    assert f"{small_model}: loaded" in log
    assert wrapper_problems(log) == []
    assert free_pages(2048) == start  # every page back after exit


def test_status_reports_coverage_for_an_exec_started_server(pool: None, llama: Path,
                                                           small_model: Path,
                                                           tmp_path: Path) -> None:
    set_pool(2048, pages_for(small_model) + 2)
    cfg = wrapper_config(tmp_path, f'[[model]]\nname = "small"\npath = "{small_model}"\n'
                                   "[thp]\nenabled = \"keep\"\ndefrag = \"keep\"\n")
    with Server(llama, small_model, tmp_path / "s.log", wrap=exec_prefix(cfg)) as srv:
        srv.wait_ready()
        r = subprocess.run(agent_cmd("status", "--json", "--config", str(cfg)),
                           env=agent_env(), capture_output=True, text=True, check=False)
        data = json.loads(r.stdout)
        m = data["models"][0]
        assert m["pid"] == srv.pid
        assert m["coverage"] >= 0.99 and m["verdict"] == "loaded", m
        assert m["hugetlb_bytes"] >= 0.99 * small_model.stat().st_size


def test_short_pool_falls_back_and_still_answers(pool: None, llama: Path, small_model: Path,
                                                 tmp_path: Path) -> None:
    set_pool(2048, 2)
    cfg = wrapper_config(tmp_path)
    with Server(llama, small_model, tmp_path / "plain.log") as plain:
        plain.wait_ready()
        expected = plain.complete(PROMPT)
    with Server(llama, small_model, tmp_path / "fb.log", wrap=exec_prefix(cfg)) as srv:
        srv.wait_ready()
        assert srv.complete(PROMPT)["tokens"] == expected["tokens"]
        assert hugetlb_bytes(srv.pid, small_model) == 0
    log = (tmp_path / "fb.log").read_text(errors="replace")
    assert f"{small_model}: huge page pool short: need {pages_for(small_model)} x 2 MiB " \
           "pages, 2 free; falling back" in log
    assert free_pages(2048) == 2


def test_strict_mode_refuses_to_start(pool: None, llama: Path, small_model: Path,
                                      tmp_path: Path) -> None:
    set_pool(2048, 2)
    cfg = wrapper_config(tmp_path, "strict = true\n")
    srv = Server(llama, small_model, tmp_path / "strict.log", wrap=exec_prefix(cfg))
    try:
        with pytest.raises(RuntimeError, match="llama-server exited"):
            srv.wait_ready(timeout=120)
        assert srv.proc.returncode != 0
        assert "strict mode" in (tmp_path / "strict.log").read_text(errors="replace")
    finally:
        srv.stop()


@pytest.mark.slow
def test_model_over_2_gib(pool: None, llama: Path, tmp_path: Path) -> None:
    model = ggufmodel.cached(BIG)
    assert model.stat().st_size > 2 << 30
    if set_pool(2048, pages_for(model) + 2) < pages_for(model) + 2:
        pytest.skip("the kernel could not give the pool for the 2.2 GiB model")
    start = free_pages(2048)
    expected, got, held = run_pair(llama, model, tmp_path, wrapper_config(tmp_path))
    assert expected["tokens"] and got["tokens"] == expected["tokens"]
    assert held >= 0.99 * model.stat().st_size
    assert wrapper_problems((tmp_path / "wrapped.log").read_text(errors="replace")) == []
    assert free_pages(2048) == start


@pytest.fixture(scope="module")
def llama_ct(llama: Path, small_model: Path, wrapper_build: Path) -> Iterator[Container]:
    def setup(c: Container) -> None:
        shutil.copy2(llama, c.path("/usr/local/bin/llama-server"))
        c.path("/srv/models").mkdir(parents=True)
        shutil.copy2(small_model, c.path("/srv/models/small.gguf"))

    with booted("hpa-llama", setup, stop_units=["llama-server@small.service"]) as c:
        yield c


def test_model_unit_under_systemd(llama_ct: Container, llama: Path, small_model: Path,
                                  tmp_path: Path) -> None:
    ct = llama_ct
    with Server(llama, small_model, tmp_path / "plain.log") as plain:
        plain.wait_ready()
        expected = plain.complete(PROMPT)
    port = plain.port
    ct.path("/etc/hugepage-agent/config.toml").write_text(
        '[pool]\nheadroom = 2\n[wrapper]\nmin_size = "8M"\n'
        '[[model]]\nname = "small"\npath = "/srv/models/small.gguf"\n'
        f'args = ["--host", "127.0.0.1", "--port", "{port}", "--threads", "2", '
        '"--ctx-size", "256"]\n')
    ct.systemctl("start", "hugepage-agent.service")
    unit = "llama-server@small.service"
    deadline = time.monotonic() + 120
    srv = Server.__new__(Server)
    srv.port = port
    while time.monotonic() < deadline:
        try:
            got = srv.complete(PROMPT)
            break
        except OSError:
            time.sleep(0.3)
    else:
        raise AssertionError(ct.journal(unit))
    assert got["tokens"] == expected["tokens"]
    pid = int(ct.prop(unit, "MainPID"))
    assert b"LD_PRELOAD=/usr/lib/hugepage-agent/libhugepage-wrapper.so" in \
        ct.proc(pid, "environ").read_bytes()
    status = json.loads(ct.run("hugepage-agent", "status", "--json", check=False).stdout)
    m = status["models"][0]
    assert m["unit"] == unit and m["active"] and m["coverage"] >= 0.99, m
    log = ct.journal(unit)
    assert "/srv/models/small.gguf: loaded" in log and wrapper_problems(log) == []


def test_strict_model_unit_fails_when_the_pool_is_short(llama_ct: Container) -> None:
    ct = llama_ct
    unit = "llama-server@small.service"
    ct.systemctl("stop", unit)  # its pages back, so that the pool can shrink
    cfg = ct.path("/etc/hugepage-agent/config.toml")
    cfg.write_text(cfg.read_text().replace("[pool]\nheadroom = 2\n", "[pool]\nsize = 2\n")
                   .replace('[wrapper]\n', '[wrapper]\nstrict = true\n'))
    ct.systemctl("reload", "hugepage-agent.service")
    assert Path("/proc/sys/vm/nr_hugepages").read_text().strip() == "2"
    ct.systemctl("start", unit, check=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and ct.prop(unit, "Result") == "success":
        time.sleep(0.3)
    assert ct.prop(unit, "Result") == "exit-code", ct.journal(unit)
    log = ct.journal(unit)
    assert "strict mode" in log and "/srv/models/small.gguf" in log
    ct.systemctl("stop", unit, check=False)
