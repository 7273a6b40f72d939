"""End to end with llama.cpp's llama-server (built by scripts/llama.sh) serving
real GGUF models (tests/ggufmodel.py) in F16, Q8_0 and Q4_0 (the quantized
ones repacked at load into heap buffers, as the models people serve are),
with a context whose KV cache is hundreds of MiB: identical tokens with and
without the wrapper; everything large that the server reads in huge pages;
no dead copy; a pool sized by `auto` that fits the first start; a pool too
small for the KV cache; strict mode; the operator's own load mode; and the
model unit under a real systemd."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import ggufmodel
from tests.conftest import (
    IS_ROOT,
    cached_bytes,
    free_pages,
    memfd_hugetlb_bytes,
    read_int,
    set_pool,
)
from tests.container import Container, booted
from tests.llama import Server, agent_cmd, agent_env, free_port, llama_bin

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root: sizes the huge page pool")
PROMPT = "the huge page model of memory"
MIB = 1 << 20
CTX = 8192  # KV cache: 8 layers x 1024 x 2 (K, V) x 2 bytes x 8192 = 256 MiB
ARGS = ["--ctx-size", str(CTX)]


def shape(qtype: str) -> ggufmodel.Shape:
    return ggufmodel.Shape(layers=8, embd=1024, ff=2816, heads=8, kv_heads=8, ctx=CTX,
                           qtype=qtype)


BIG = ggufmodel.Shape.for_size(int(2.2 * (1 << 30)), qtype="Q4_0")


@pytest.fixture(scope="module")
def llama() -> Path:
    return llama_bin() / "llama-server"


@pytest.fixture(scope="module", params=["F16", "Q8_0", "Q4_0"])
def model(request: pytest.FixtureRequest) -> Path:
    return ggufmodel.cached(shape(request.param))


@pytest.fixture(scope="module")
def q4_model() -> Path:
    return ggufmodel.cached(shape("Q4_0"))


@pytest.fixture
def pool(kernel_state: None) -> None:
    set_pool(2048, 0)


def config(tmp_path: Path, llama: Path, model: Path | None = None, *, extra: str = "",
           args: list[str] | None = None, size: str = "auto", server: str = "") -> Path:
    """A configuration with the test server binary, THP left alone, and the model."""
    f = tmp_path / "config.toml"
    text = (f'[pool]\nsize = "{size}"\n[server]\nbinary = "{llama}"\n{server}'
            '[thp]\nenabled = "keep"\ndefrag = "keep"\n' + extra)
    if model is not None:
        text += (f'[[model]]\nname = "m"\npath = "{model}"\n'
                 f"args = {json.dumps(args if args is not None else ARGS)}\n")
    f.write_text(text)
    return f


def exec_prefix(cfg: Path) -> list[str]:
    return agent_cmd("exec", "--config", str(cfg), "--")


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(agent_cmd(*args), env=agent_env(), capture_output=True, text=True,
                          timeout=300, check=False)


def status(cfg: Path) -> tuple[int, dict[str, Any]]:
    r = agent("status", "--json", "--config", str(cfg))
    return r.returncode, json.loads(r.stdout)


def memory(pid: int | Path, model: Path, large: int = 8 * MIB) -> dict[str, int]:
    """The server's (pid, or its smaps file) large memory by kind, read here, independently of
    the agent: huge pages (any hugetlb mapping; the model file's copy apart),
    and what is not in huge pages (anonymous mappings of at least `large`, the
    model file mapped directly)."""
    out = {"huge": 0, "file_copy": 0, "small_pages": 0}
    kind = None
    smaps = pid if isinstance(pid, Path) else Path(f"/proc/{pid}/smaps")
    for line in smaps.read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and ":" not in head[0] and len(head) >= 5:
            name = line.split(None, 5)[5] if len(head) > 5 else ""
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            kind = ("copy" if name.startswith(f"/memfd:hugepage-wrapper:{model}") else
                    "file" if name == str(model) else
                    "anon" if name == "" and "rw" in head[1] and hi - lo >= large else "other")
        elif line.startswith(("Private_Hugetlb:", "Shared_Hugetlb:")):
            out["huge"] += int(head[1]) * 1024
            if kind == "copy":
                out["file_copy"] += int(head[1]) * 1024
        elif line.startswith("Rss:") and kind in ("file", "anon"):
            out["small_pages"] += int(head[1]) * 1024
    return out


def in_use_pages() -> int:
    d = Path("/sys/kernel/mm/hugepages/hugepages-2048kB")
    return (read_int(d / "nr_hugepages") - read_int(d / "free_hugepages")
            + read_int(d / "resv_hugepages"))


def wrapper_problems(log: str) -> list[str]:
    return [line for line in log.splitlines()
            if "munmap failed" in line or "madvise failed" in line
            or "pool short" in line or "fell back" in line
            or ("warn" in line.lower() and ("mmap" in line or "hugepage" in line))]


def plain_tokens(llama: Path, model: Path, tmp_path: Path) -> list[int]:
    with Server(llama, model, tmp_path / "plain.log", args=ARGS) as plain:
        plain.wait_ready()
        tokens: list[int] = plain.complete(PROMPT)["tokens"]
    assert tokens
    return tokens


def test_auto_pool_fits_the_first_start_and_holds_all_large_memory(
        pool: None, llama: Path, model: Path, tmp_path: Path) -> None:
    expected = plain_tokens(llama, model, tmp_path)
    cfg = config(tmp_path, llama, model)
    r = agent("apply", "--config", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    target = read_int(Path("/proc/sys/vm/nr_hugepages"))
    drop_cache(model)  # a cold start: read with direct I/O
    with Server(llama, model, tmp_path / "wrapped.log", wrap=exec_prefix(cfg),
                args=ARGS) as srv:
        srv.wait_ready()
        assert srv.complete(PROMPT)["tokens"] == expected
        mem = memory(srv.pid, model)
        used = in_use_pages()
        rc, data = status(cfg)
        cmdline = Path(f"/proc/{srv.pid}/cmdline").read_bytes().split(b"\0")
    log = (tmp_path / "wrapped.log").read_text(errors="replace")
    assert wrapper_problems(log) == [], log[-3000:]  # no fallback at the first start
    assert cmdline[cmdline.index(b"--load-mode") + 1] == b"dio", cmdline
    # everything large the server reads is in huge pages, with no dead file copy
    assert mem["huge"] >= 256 * MIB
    assert mem["huge"] / (mem["huge"] + mem["small_pages"]) >= 0.99, mem
    assert mem["file_copy"] == 0
    print(f"{model.name}: auto target {target} pages, the server holds {used}, "
          f"huge {mem['huge'] >> 20} MiB, 4 KiB {mem['small_pages'] >> 20} MiB")
    # the auto target is within 5 % (plus the 2 % headroom) of what the server holds
    assert used <= target <= 1.05 * 1.02 * used + 1, (target, used)
    m = data["models"][0]
    assert rc == 0 and m["verdict"] == "loaded" and m["coverage"] >= 0.99, data["problems"]
    assert m["dead_bytes"] == 0 and m["hugetlb_file_bytes"] == 0
    assert m["hugetlb_alloc_bytes"] >= 256 * MIB
    assert m["load_mode"]["mode"] == "auto" and m["load_mode"]["chosen_by"] == "agent"
    assert m["load_mode"]["at_start"]["mode"] == "dio", m["load_mode"]
    assert m["page_cache_bytes"] <= 0.05 * model.stat().st_size
    assert free_pages(2048) == target  # every page back after exit


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_a_warm_model_with_nothing_to_repack_is_mapped_and_copied(
        pool: None, llama: Path, tmp_path: Path) -> None:
    """F16: llama.cpp repacks nothing, so a cached file is mapped (--load-mode
    mmap) and the wrapper copies it into huge pages with its threads, dropping
    what it read: no dead copy, nothing left in the page cache."""
    f16 = ggufmodel.cached(shape("F16"))
    expected = plain_tokens(llama, f16, tmp_path)
    cfg = config(tmp_path, llama, f16, extra='[wrapper]\nmin_size = "64M"\n')
    assert agent("apply", "--config", str(cfg)).returncode == 0
    f16.read_bytes()
    with Server(llama, f16, tmp_path / "f16.log", wrap=exec_prefix(cfg), args=ARGS) as srv:
        srv.wait_ready()
        assert srv.complete(PROMPT)["tokens"] == expected
        mem = memory(srv.pid, f16)
        cmdline = Path(f"/proc/{srv.pid}/cmdline").read_bytes().split(b"\0")
        after = cached_bytes(f16)
        rc, data = status(cfg)
    assert cmdline[cmdline.index(b"--load-mode") + 1] == b"mmap", cmdline
    assert mem["file_copy"] >= 0.95 * f16.stat().st_size, mem
    assert mem["huge"] / (mem["huge"] + mem["small_pages"]) >= 0.99, mem
    assert after <= 0.05 * f16.stat().st_size, after
    m = data["models"][0]
    assert rc == 0 and m["verdict"] == "loaded" and m["dead_bytes"] == 0, data["problems"]
    assert m["load_mode"]["at_start"]["mode"] == "mmap"


@pytest.mark.parametrize("page_cache", ["drop", "keep"])
def test_a_warm_start_reads_from_memory_and_keeps_no_second_copy(
        pool: None, llama: Path, q4_model: Path, tmp_path: Path, page_cache: str) -> None:
    """The file in the page cache: the agent has llama.cpp read it buffered
    (--load-mode none), the fastest path, and the wrapper then drops it from the
    page cache (at most 5 % left), unless `server.page_cache = "keep"` says to
    keep it. A cold start with "keep" reads buffered too, and leaves it cached."""
    expected = plain_tokens(llama, q4_model, tmp_path)
    cfg = config(tmp_path, llama, q4_model, server=f'page_cache = "{page_cache}"\n')
    dry = agent("apply", "--dry-run", "--config", str(cfg)).stdout
    assert "model m: load mode auto (agent): chosen at each start" in dry, dry
    assert f"evidence: --load-mode found in {llama}" in dry, dry
    assert agent("apply", "--config", str(cfg)).returncode == 0
    size = q4_model.stat().st_size
    if page_cache == "keep":
        drop_cache(q4_model)
    else:
        q4_model.read_bytes()
        assert cached_bytes(q4_model) >= 0.95 * size
    log = tmp_path / f"warm-{page_cache}.log"
    with Server(llama, q4_model, log, wrap=exec_prefix(cfg), args=ARGS) as srv:
        srv.wait_ready()
        assert srv.complete(PROMPT)["tokens"] == expected
        mem = memory(srv.pid, q4_model)
        cmdline = Path(f"/proc/{srv.pid}/cmdline").read_bytes().split(b"\0")
        after = cached_bytes(q4_model)
        rc, data = status(cfg)
    text = log.read_text(errors="replace")
    assert cmdline[cmdline.index(b"--load-mode") + 1] == b"none", cmdline
    assert mem["huge"] / (mem["huge"] + mem["small_pages"]) >= 0.99, mem
    m = data["models"][0]
    assert rc == 0 and m["verdict"] == "loaded", data["problems"]
    assert m["load_mode"]["at_start"]["mode"] == "none"
    if page_cache == "drop":
        assert "100% of the model file in the page cache" in m["load_mode"]["at_start"]["why"]
        assert after <= 0.05 * size, (after, size)
        assert "dropped it from the page cache" in text
        assert m["page_cache_bytes"] <= 0.05 * size
    else:
        assert "page_cache = keep" in m["load_mode"]["at_start"]["why"]
        assert after >= 0.95 * size and m["page_cache_bytes"] >= 0.95 * size
        assert "dropped it" not in text


def test_pool_too_small_for_the_kv_cache_degrades(pool: None, llama: Path, q4_model: Path,
                                                  tmp_path: Path) -> None:
    expected = plain_tokens(llama, q4_model, tmp_path)
    cfg = config(tmp_path, llama, q4_model, size="64M")
    set_pool(2048, 32)  # the weights fit, the 256 MiB KV cache does not
    with Server(llama, q4_model, tmp_path / "short.log", wrap=exec_prefix(cfg),
                args=ARGS) as srv:
        srv.wait_ready()
        assert srv.complete(PROMPT)["tokens"] == expected
        mem = memory(srv.pid, q4_model)
        rc, data = status(cfg)
        text = agent("status", "--config", str(cfg)).stdout
    log = (tmp_path / "short.log").read_text(errors="replace")
    assert "allocation of 256.0 MiB: huge page pool short" in log
    assert "served by libc in 4 KiB pages" in log
    assert mem["small_pages"] >= 250 * MIB
    m = data["models"][0]
    assert rc == 1 and data["degraded"]
    assert m["verdict"].startswith("fell back") and m["fallback_bytes"] >= 250 * MIB, m
    assert m["coverage"] < 0.99
    assert "DEGRADED" in text and "fell back" in text


def test_strict_mode_refuses_to_start(pool: None, llama: Path, q4_model: Path,
                                      tmp_path: Path) -> None:
    cfg = config(tmp_path, llama, q4_model, extra="[wrapper]\nstrict = true\n", size="64M")
    set_pool(2048, 32)
    srv = Server(llama, q4_model, tmp_path / "strict.log", wrap=exec_prefix(cfg), args=ARGS)
    try:
        with pytest.raises(RuntimeError, match="llama-server exited"):
            srv.wait_ready(timeout=120)
        assert srv.proc.returncode != 0
        assert "strict mode" in (tmp_path / "strict.log").read_text(errors="replace")
    finally:
        srv.stop()


def test_operator_load_mode_is_kept_and_its_dead_copy_reported(
        pool: None, llama: Path, q4_model: Path, tmp_path: Path) -> None:
    """--load-mode mmap from the operator: the file is mapped and copied (the
    wrapper's file mode), and status says which huge pages repack made dead."""
    args = [*ARGS, "--load-mode", "mmap"]
    cfg = config(tmp_path, llama, q4_model, extra='[wrapper]\nmin_size = "8M"\n', args=args)
    dry = agent("apply", "--dry-run", "--config", str(cfg))
    assert "load mode mmap" in dry.stdout, dry.stdout
    assert agent("apply", "--config", str(cfg)).returncode == 0
    with Server(llama, q4_model, tmp_path / "mmap.log", wrap=exec_prefix(cfg),
                args=args) as srv:
        srv.wait_ready()
        held = memfd_hugetlb_bytes(Path(f"/proc/{srv.pid}/smaps"), q4_model)
        rc, data = status(cfg)
    # Whole huge pages of the file, less the first and last: llama.cpp unmaps the
    # parts before the first tensor and after the last, and the huge pages those
    # cut in two go to 4 KiB pages (docs/wrapper-semantics.md).
    assert held >= (q4_model.stat().st_size // (2 * MIB) - 2) * 2 * MIB
    m = data["models"][0]
    assert m["load_mode"] == {"mode": "mmap", "chosen_by": "operator",
                              "note": m["load_mode"]["note"], "evidence": "the model's args",
                              "at_start": {"mode": "mmap", "why": "chosen by the model's args"}}
    assert "repack" in m["load_mode"]["note"]
    assert m["dead_bytes"] >= 0.9 * q4_model.stat().st_size, m
    assert rc == 1 and "dead huge pages" in m["verdict"]


@pytest.mark.slow
def test_model_over_2_gib(pool: None, llama: Path, tmp_path: Path) -> None:
    model = ggufmodel.cached(BIG)
    assert model.stat().st_size > 2 << 30
    args = ["--ctx-size", "1024"]
    with Server(llama, model, tmp_path / "plain.log", args=args) as plain:
        plain.wait_ready()
        expected = plain.complete(PROMPT)["tokens"]
    cfg = config(tmp_path, llama, model, args=args)
    r = agent("apply", "--config", str(cfg))
    if r.returncode != 0:
        pytest.skip(f"the kernel could not give the pool for the 2.2 GiB model: {r.stdout}")
    with Server(llama, model, tmp_path / "wrapped.log", wrap=exec_prefix(cfg),
                args=args) as srv:
        srv.wait_ready()
        assert srv.complete(PROMPT)["tokens"] == expected
        mem = memory(srv.pid, model)
    assert mem["huge"] >= model.stat().st_size * 0.95
    assert mem["huge"] / (mem["huge"] + mem["small_pages"]) >= 0.99, mem
    assert wrapper_problems((tmp_path / "wrapped.log").read_text(errors="replace")) == []


@pytest.fixture(scope="module")
def llama_ct(llama: Path, q4_model: Path, wrapper_build: Path) -> Iterator[Container]:
    def setup(c: Container) -> None:
        for tool in ("llama-server", "llama-fit-params"):
            shutil.copy2(llama.parent / tool, c.path(f"/usr/local/bin/{tool}"))
        c.path("/srv/models").mkdir(parents=True)
        shutil.copy2(q4_model, c.path("/srv/models/small.gguf"))

    with booted("hpa-llama", setup, stop_units=["llama-server@small.service"]) as c:
        yield c


def test_model_unit_under_systemd(llama_ct: Container, llama: Path, q4_model: Path,
                                  tmp_path: Path) -> None:
    ct = llama_ct
    expected = plain_tokens(llama, q4_model, tmp_path)
    client = Server.__new__(Server)  # a client of the unit's server
    client.port = free_port()
    ct.path("/etc/hugepage-agent/config.toml").write_text(
        '[[model]]\nname = "small"\npath = "/srv/models/small.gguf"\n'
        f'args = ["--host", "127.0.0.1", "--port", "{client.port}", "--threads", "2", '
        f'"--ctx-size", "{CTX}"]\n')
    os.sync()  # the model was just copied in: dirty pages cannot be dropped
    ct.systemctl("start", "hugepage-agent.service")
    unit = "llama-server@small.service"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            got = client.complete(PROMPT)
            break
        except OSError:
            time.sleep(0.3)
    else:
        raise AssertionError(ct.journal(unit))
    assert got["tokens"] == expected
    pid = int(ct.prop(unit, "MainPID"))
    assert b"LD_PRELOAD=/usr/lib/hugepage-agent/libhugepage-wrapper.so" in \
        ct.proc(pid, "environ").read_bytes()
    # unprivileged, no capabilities, sandboxed: and still everything in huge pages
    st = dict(line.split(":", 1) for line in ct.proc(pid, "status").read_text().splitlines())
    assert st["Uid"].split()[0] != "0" and int(st["CapEff"], 16) == 0
    assert ct.run("id", "-un", st["Uid"].split()[0]).stdout.strip() == "hugepage-llama"
    mem = memory(ct.proc(pid, "smaps"), Path("/srv/models/small.gguf"))
    assert mem["huge"] >= 256 * MIB and mem["file_copy"] == 0
    assert mem["huge"] / (mem["huge"] + mem["small_pages"]) >= 0.99, mem
    r = ct.run("hugepage-agent", "status", "--json", check=False)
    data = json.loads(r.stdout)
    m = data["models"][0]
    assert m["unit"] == unit and m["active"] and m["coverage"] >= 0.99, m
    assert m["verdict"] == "loaded" and r.returncode == 0, data["problems"]
    assert wrapper_problems(ct.journal(unit)) == []
    # the model was just copied in, so it was in the page cache: the unit's
    # privileged ExecStartPre chose a buffered read, and the load dropped the file
    journal = ct.journal(unit)
    record = json.loads(ct.run("cat", "/run/hugepage-agent/start/small.json").stdout)
    assert record["mode"] == "none" and record["drop_after"], record
    assert "load mode none: 100% of the model file in the page cache" in journal, journal
    assert "dropped it from the page cache" in journal
    cmd = ct.proc(pid, "cmdline").read_bytes().split(b"\0")
    assert cmd[cmd.index(b"--load-mode") + 1] == b"none", cmd
    assert m["load_mode"]["at_start"]["mode"] == "none"
    size = q4_model.stat().st_size
    assert cached_bytes(ct.path("/srv/models/small.gguf")) <= 0.05 * size
    assert m["page_cache_bytes"] is not None and m["page_cache_bytes"] <= 0.05 * size


def test_a_changed_argument_restarts_the_real_server_once_it_answers_health(
        llama_ct: Container, llama: Path, q4_model: Path, tmp_path: Path) -> None:
    """Day two with llama-server itself: a reload after a changed --ctx-size
    restarts the unit, and returns only once the new server's /health says 200;
    it then completes exactly as before."""
    ct = llama_ct
    unit = "llama-server@small.service"
    cfg = ct.path("/etc/hugepage-agent/config.toml")
    old_pid = int(ct.prop(unit, "MainPID"))
    port = re.search(r'"--port", "(\d+)"', cfg.read_text())
    assert old_pid and port is not None
    cfg.write_text(cfg.read_text().replace(f'"--ctx-size", "{CTX}"',
                                           f'"--ctx-size", "{2 * CTX}"'))
    r = ct.run("hugepage-agent", "reload", check=False, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr + ct.journal("hugepage-agent.service")[-3000:]
    pid = int(ct.prop(unit, "MainPID"))
    cmd = ct.proc(pid, "cmdline").read_bytes().split(b"\0")
    assert pid != old_pid and cmd[cmd.index(b"--ctx-size") + 1] == str(2 * CTX).encode()
    client = Server.__new__(Server)
    client.port = int(port.group(1))
    # the reload returned after the gate: the server answers at once
    with urllib.request.urlopen(f"http://127.0.0.1:{client.port}/health", timeout=5) as h:
        assert h.status == 200
    assert client.complete(PROMPT)["tokens"] == plain_tokens(llama, q4_model, tmp_path)
    log = ct.journal("hugepage-agent.service")
    assert f"model small: args changed; restarting {unit}" in log
    assert f"model small: {unit} is healthy again" in log


def test_a_supervisors_llama_server_child_is_the_one_measured(llama_ct: Container) -> None:
    """An operator's unit whose main process is a shell that starts llama-server
    as a child and waits (as ollama does): status measures the child."""
    ct = llama_ct
    ct.systemctl("stop", "llama-server@small.service")
    unit = "supervised.service"
    unit_file = ct.path(f"/etc/systemd/system/{unit}")
    unit_file.write_text(
        "[Service]\nUser=hugepage-llama\nExecStart=/bin/sh -c '/usr/local/bin/llama-server "
        f"--model /srv/models/small.gguf --host 127.0.0.1 --port {free_port()} --threads 2 "
        f"--ctx-size {CTX} --load-mode dio & wait'\n")
    cfg = ct.path("/etc/hugepage-agent/config.toml")
    before = cfg.read_text()
    # its args, for the pool's projection: the agent does not write its command line
    cfg.write_text('[[model]]\nname = "small"\npath = "/srv/models/small.gguf"\n'
                   f'unit = "{unit}"\nargs = ["--ctx-size", "{CTX}", "--load-mode", "dio"]\n')
    try:
        ct.systemctl("daemon-reload")
        r = ct.run("hugepage-agent", "reload", check=False, timeout=300)
        assert r.returncode == 0, r.stderr + ct.journal("hugepage-agent.service")[-3000:]

        def small() -> dict[str, Any]:
            out = ct.run("hugepage-agent", "status", "--json", check=False).stdout
            return json.loads(out)["models"][0]

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and small()["verdict"] != "loaded":
            time.sleep(0.5)
        m = small()
        assert m["verdict"] == "loaded", (m, ct.journal(unit)[-3000:])
        shell = int(ct.prop(unit, "MainPID"))
        assert m["main_pid"] == shell and m["pid"] != shell
        assert ct.proc(m["pid"], "comm").read_text().strip() == "llama-server"
        assert [p["pid"] for p in m["processes"]] == [m["pid"]]
        assert m["processes"][0]["wrapper_loaded"] and m["coverage"] >= 0.99, m
        assert m["hugetlb_bytes"] >= 256 * MIB
        prom = ct.run("hugepage-agent", "status", "--prometheus", check=False).stdout
        assert f'hugepage_agent_model_server_pid{{model="small",unit="{unit}"}} {m["pid"]}' \
            in prom, prom
        assert f'hugepage_agent_model_wrapper_loaded{{model="small",unit="{unit}"}} 1' in prom
    finally:
        cfg.write_text(before)
        ct.run("hugepage-agent", "reload", check=False, timeout=300)
        ct.systemctl("stop", unit, check=False)
        unit_file.unlink()
        ct.systemctl("daemon-reload", check=False)


def test_strict_model_unit_fails_when_the_pool_is_short(llama_ct: Container) -> None:
    ct = llama_ct
    unit = "llama-server@small.service"
    ct.systemctl("stop", unit)  # its pages back, so that the pool can shrink
    cfg = ct.path("/etc/hugepage-agent/config.toml")
    model = ('[[model]]\nname = "small"\npath = "/srv/models/small.gguf"\n'
             f'args = ["--host", "127.0.0.1", "--port", "{free_port()}", "--ctx-size", "{CTX}"]\n')
    cfg.write_text('[pool]\nsize = 2\n[wrapper]\nstrict = true\n' + model)
    ct.systemctl("reload-or-restart", "hugepage-agent.service")
    assert Path("/proc/sys/vm/nr_hugepages").read_text().strip() == "2"
    ct.systemctl("start", unit, check=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and ct.prop(unit, "Result") == "success":
        time.sleep(0.3)
    # llama.cpp exits, or aborts, when an allocation fails: the unit fails either way
    assert ct.prop(unit, "Result") in ("exit-code", "signal", "core-dump"), ct.journal(unit)
    assert "strict mode" in ct.journal(unit)
    ct.systemctl("stop", unit, check=False)
