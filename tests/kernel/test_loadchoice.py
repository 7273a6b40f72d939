"""How each start loads its weights: the choice from the page cache
(loadmode.at_start), the server's options found in its shared libraries
(elflibs, with a real binary and library built here), the page cache
measured (pagecache), the per-start record (modelstart), and the wrapper
dropping the model file from the page cache after a buffered load."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hugepage_agent import elflibs, loadmode, modelstart, pagecache, startrecord, unitfiles
from hugepage_agent.config import ModelConfig
from hugepage_agent.host import Host
from hugepage_agent.pagecache import Residency
from tests.conftest import IS_ROOT, REPO, cached_bytes

LIB = REPO / "wrapper_c" / "build" / "libhugepage-wrapper.so"
FREADALL = REPO / "wrapper_c" / "build" / "tests" / "freadall"
AUTO = loadmode.LoadMode("auto", "agent", ("--load-mode", "dio"),
                         cached=("--load-mode", "none"), evidence="test")
MIB = 1 << 20


@pytest.mark.parametrize("cached, page_cache, mode, before, after", [
    (100, "drop", "none", False, True),   # warm: buffered from memory, dropped after
    (60, "drop", "none", False, True),
    (40, "drop", "dio", True, False),     # mostly cold: direct I/O, the rest dropped first
    (0, "drop", "dio", False, False),
    (0, "keep", "none", False, False),    # kept on purpose: buffered, never dropped
    (100, "keep", "none", False, False),
])
def test_the_choice_follows_the_page_cache(cached: int, page_cache: str, mode: str,
                                           before: bool, after: bool) -> None:
    c = loadmode.at_start(AUTO, Residency(100 * MIB, cached * MIB), page_cache)
    assert (c.mode, c.drop_before, c.drop_after) == (mode, before, after)
    assert c.args == ("--load-mode", mode)
    assert f"{cached}%" in c.why


def test_a_model_with_nothing_to_repack_is_mapped_when_cached() -> None:
    """F16 (nothing repacked), large enough for the wrapper to copy: a cached
    file is mapped and copied by the wrapper's threads, which drop what they
    read (no fclose drop needed); cold, direct I/O as for any model."""
    mapped = loadmode.LoadMode("auto", "agent", ("--load-mode", "dio"),
                               cached=("--load-mode", "mmap"))
    assert mapped.cached_mode == "mmap" and mapped.heap
    c = loadmode.at_start(mapped, Residency(100 * MIB, 100 * MIB), "drop")
    assert c.args == ("--load-mode", "mmap") and not c.drop_after and not c.drop_before
    assert "copied into huge pages" in c.why
    assert loadmode.at_start(mapped, Residency(100 * MIB, 0), "drop").mode == "dio"
    assert loadmode.at_start(mapped, None, "keep").args == ("--load-mode", "mmap")


def test_an_unmeasured_cache_reads_direct_and_fixed_modes_stay() -> None:
    c = loadmode.at_start(AUTO, None, "drop")
    assert c.mode == "dio" and "could not be measured" in c.why and not c.drop_after
    dio = loadmode.LoadMode("dio", "agent", ("--load-mode", "dio"))
    assert loadmode.at_start(dio, Residency(10, 10), "drop").drop_before
    none = loadmode.LoadMode("none", "agent", ("--load-mode", "none"))
    assert loadmode.at_start(none, Residency(10, 0), "drop").drop_after
    own = loadmode.LoadMode("mmap", "operator", ())
    c = loadmode.at_start(own, Residency(10, 10), "drop")
    assert c.args == () and not c.drop_before and not c.drop_after


def _cc(*args: str) -> None:
    subprocess.run(["cc", *args], check=True, capture_output=True)


def test_the_options_of_a_server_built_with_shared_libraries_are_found(tmp_path: Path) -> None:
    """A binary whose options live in a library it loads (RUNPATH $ORIGIN/../lib),
    as a default cmake build of llama.cpp lays it out: the search follows it,
    and finds the library the dynamic loader itself loads."""
    lib = tmp_path / "lib"
    bindir = tmp_path / "bin"
    lib.mkdir()
    bindir.mkdir()
    (tmp_path / "common.c").write_text(
        'const char *options(void) { return "--load-mode MODE, --no-mmap"; }\n')
    (tmp_path / "main.c").write_text(
        '#include <stdio.h>\nconst char *options(void);\n'
        'int main(void) { puts(options()); return 0; }\n')
    _cc("-shared", "-fPIC", "-o", str(lib / "libllama-common.so"), str(tmp_path / "common.c"))
    server = bindir / "llama-server"
    _cc("-o", str(server), str(tmp_path / "main.c"), f"-L{lib}", "-lllama-common",
        "-Wl,-rpath,$ORIGIN/../lib", "-Wl,--enable-new-dtags")
    needed, rpath, runpath = elflibs.dynamic_entries(server.read_bytes())
    assert "libllama-common.so" in needed and runpath == ["$ORIGIN/../lib"] and rpath == []
    found = list(elflibs.libraries(str(server)))
    assert str(lib / "libllama-common.so") in found
    # the loader agrees: the program runs and prints the library's string
    assert "--load-mode" in subprocess.run([str(server)], capture_output=True, text=True,
                                           check=True).stdout
    assert b"--load-mode" not in server.read_bytes()
    lm = loadmode.resolve("auto", str(server), [])
    assert lm.cached == ("--load-mode", "none") and lm.added == ("--load-mode", "dio")
    assert lm.evidence == (f"--load-mode found in {lib / 'libllama-common.so'}, a library of "
                           f"{server}")
    # without the library, the evidence says where it looked
    (lib / "libllama-common.so").unlink()
    (lib / "libllama-common.so").write_bytes(b"")
    loadmode._find.cache_clear()
    os.utime(server)
    gone = loadmode.resolve("auto", str(server), [])
    assert gone.chosen_by == "llama.cpp" and "not found in" in gone.evidence


def test_dynamic_entries_refuse_what_is_not_elf() -> None:
    for data in (b"", b"#!/bin/sh\n", b"\x7fELF" + b"\0" * 10):
        with pytest.raises(elflibs.NotElf):
            elflibs.dynamic_entries(data)
    assert elflibs.dynamic_entries(Path("/usr/bin/python3").resolve().read_bytes())[0]


def test_ld_so_conf_follows_includes(tmp_path: Path) -> None:
    d = tmp_path / "ld.so.conf.d"
    d.mkdir()
    (d / "a.conf").write_text("# comment\n/opt/a/lib\n")
    (d / "b.conf").write_text("/opt/b/lib  # trailing\n")
    conf = tmp_path / "ld.so.conf"
    conf.write_text(f"include {d}/*.conf\n/opt/c\n")
    assert elflibs.ld_so_conf(str(conf)) == ["/opt/a/lib", "/opt/b/lib", "/opt/c"]


def _cached_kb(path: Path) -> int:
    return cached_bytes(path) // 1024


@pytest.mark.skipif(shutil.which("fincore") is None, reason="needs util-linux's fincore")
def test_residency_is_exact_for_the_owner(tmp_path: Path) -> None:
    f = tmp_path / "model.bin"
    f.write_bytes(os.urandom(64 * MIB))
    os.sync()
    assert pagecache.drop(str(f))
    res = pagecache.residency(str(f))
    assert res is not None and res.size == 64 * MIB
    assert abs(res.cached // 1024 - _cached_kb(f)) <= 64
    with f.open("rb") as fh:
        fh.read(32 * MIB)
    res = pagecache.residency(str(f))
    assert res is not None and 0.45 <= res.share <= 0.75, res
    assert abs(res.cached // 1024 - _cached_kb(f)) <= 256
    # the mincore fallback (kernels before 6.5, or cachestat filtered) agrees
    fd = os.open(f, os.O_RDONLY)
    try:
        assert abs(pagecache._mincore(fd, 64 * MIB) // 1024 - _cached_kb(f)) <= 256
    finally:
        os.close(fd)


@pytest.mark.skipif(not IS_ROOT or shutil.which("setpriv") is None,
                    reason="needs root to run as another user")
def test_residency_is_not_guessed_for_a_reader_the_kernel_does_not_tell(tmp_path: Path) -> None:
    f = tmp_path / "model.bin"
    f.write_bytes(os.urandom(4 * MIB))
    f.chmod(0o644)
    tmp_path.chmod(0o755)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from hugepage_agent import pagecache; print(pagecache.residency(sys.argv[2]))")
    r = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                        "/usr/bin/python3", "-c", code, str(REPO / "agent"), str(f)],
                       capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "None", r.stdout + r.stderr


def _host_with_model(tmp_path: Path, page_cache: str = "drop") -> tuple[Host, Path]:
    model = tmp_path / "m.gguf"
    model.write_bytes(os.urandom(16 * MIB))
    os.sync()  # dirty pages cannot be dropped
    root = tmp_path / "root"
    host = Host(root)
    m = ModelConfig(name="m", path=str(model), size=16 * MIB, args=("-c", "512"))
    path = host.path(unitfiles.model_file("m"))
    path.parent.mkdir(parents=True)
    path.write_text(unitfiles.render_model_file(m, "/usr/bin/llama-server", AUTO, page_cache))
    return host, model


def test_prepare_records_the_choice_and_run_model_uses_it(tmp_path: Path) -> None:
    host, model = _host_with_model(tmp_path)
    model.read_bytes()  # in the page cache, as the owner sees it
    choice = modelstart.prepare(host, "m")
    assert choice is not None and choice.mode == "none" and choice.drop_after
    record = json.loads(host.path(startrecord.start_file("m")).read_text())
    assert record["mode"] == "none" and record["identity"] == startrecord.identity(str(model))
    argv, env = modelstart.run_command(host, "m")
    assert argv == ["/usr/bin/llama-server", "--model", str(model), "--load-mode", "none",
                    "-c", "512"]
    assert env[modelstart.DROP_ENV] == str(model)
    assert env[loadmode.ENV_CHOICE].startswith("none: 100% of the model file")
    # a stale record (another file at the path) is not this start's: measured afresh
    pagecache.drop(str(model))
    model.write_bytes(os.urandom(16 * MIB))
    os.sync()
    pagecache.drop(str(model))
    argv, env = modelstart.run_command(host, "m")
    assert argv[3:5] == ["--load-mode", "dio"] and modelstart.DROP_ENV not in env


def test_a_record_that_is_old_or_names_other_arguments_is_ignored(tmp_path: Path) -> None:
    host, model = _host_with_model(tmp_path)
    pagecache.drop(str(model))
    f = host.path(startrecord.start_file("m"))
    f.parent.mkdir(parents=True, exist_ok=True)
    for record in ({"time": time.time() - 3600, "args": ["--load-mode", "none"]},
                   {"time": time.time(), "args": ["--evil"]}):
        f.write_text(json.dumps({"identity": startrecord.identity(str(model)), "mode": "none",
                                 "why": "x", "drop_after": True, **record}))
        argv, _ = modelstart.run_command(host, "m")
        assert argv[3:5] == ["--load-mode", "dio"], argv
    f.write_text("not json")
    assert modelstart.run_command(host, "m")[0][3:5] == ["--load-mode", "dio"]


def test_an_older_model_file_runs_as_written(tmp_path: Path) -> None:
    host = Host(tmp_path)
    p = host.path(unitfiles.model_file("old"))
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps({"binary": "/b", "model": "/m", "args": ["--load-mode", "dio"]}))
    assert modelstart.run_command(host, "old") == (
        ["/b", "--model", "/m", "--load-mode", "dio"], {})
    p.write_text(json.dumps({"binary": "/b", "model": "/m", "args": [],
                             "load": {"mode": "auto", "uncached": "--x"}}))
    with pytest.raises(Exception, match="malformed"):
        modelstart.run_command(host, "old")


@pytest.mark.skipif(not FREADALL.exists(), reason="build the wrapper first (make -C wrapper_c)")
@pytest.mark.skipif(shutil.which("fincore") is None, reason="needs util-linux's fincore")
def test_the_wrapper_drops_the_model_file_after_a_buffered_load(tmp_path: Path) -> None:
    """fopen, fread, fclose as llama.cpp's buffered loader does: with the
    library and HUGEPAGE_WRAPPER_DROP_CACHE naming the file, the file leaves
    the page cache at fclose; what the program sees (its data, fclose's result
    and errno) is the same as without the library. A partial read (the
    metadata pass) drops only what it read; another file is not touched."""
    f = tmp_path / "model.bin"
    other = tmp_path / "other.bin"
    f.write_bytes(os.urandom(48 * MIB))
    other.write_bytes(os.urandom(8 * MIB))
    os.sync()

    def run(env: dict[str, str], *args: str) -> str:
        r = subprocess.run([str(FREADALL), *args], env={"PATH": "/usr/bin:/bin", **env},
                           capture_output=True, text=True, check=True)
        return r.stdout

    plain = run({}, str(f))
    assert _cached_kb(f) >= 47 * 1024
    env = {"LD_PRELOAD": str(LIB), "HUGEPAGE_WRAPPER_DROP_CACHE": str(f)}
    r = subprocess.run([str(FREADALL), str(f)], env={"PATH": "/usr/bin:/bin", **env},
                       capture_output=True, text=True, check=True)
    assert r.stdout == plain
    assert _cached_kb(f) <= 48 * 1024 // 20, _cached_kb(f)
    assert "dropped it from the page cache" in r.stderr
    # the metadata pass: only the first pages go
    f.read_bytes()
    assert run(env, str(f), str(MIB)).startswith(f"read {MIB} ")
    assert _cached_kb(f) >= 46 * 1024
    # another file, and no variable: nothing dropped, nothing printed
    other.read_bytes()
    r = subprocess.run([str(FREADALL), str(other)], env={"PATH": "/usr/bin:/bin", **env},
                       capture_output=True, text=True, check=True)
    assert _cached_kb(other) >= 7 * 1024 and r.stderr == ""
    r = subprocess.run([str(FREADALL), str(f)], env={"PATH": "/usr/bin:/bin",
                                                     "LD_PRELOAD": str(LIB)},
                       capture_output=True, text=True, check=True)
    assert r.stdout == plain and r.stderr == "" and _cached_kb(f) >= 47 * 1024


def test_a_refused_measurement_is_unknown_not_a_crash(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the agent's SystemCallFilter, cachestat and mincore fail with EPERM
    (the daemon crashed on it once): the figure is unknown, nothing raises."""
    f = tmp_path / "model.bin"
    f.write_bytes(b"x" * 8192)

    def refused(*_: object) -> int:
        raise PermissionError(1, "mincore failed")

    monkeypatch.setattr(pagecache, "_cachestat", lambda fd, size: None)
    monkeypatch.setattr(pagecache, "_mincore", refused)
    assert pagecache.residency(str(f)) is None
    assert pagecache.residency(str(tmp_path / "missing")) is None


def test_a_virtual_machine_is_recognised(tmp_path: Path) -> None:
    from hugepage_agent import pretouch

    def host(cpuinfo: str, vendor: str = "") -> Host:
        root = tmp_path / f"h{len(list(tmp_path.iterdir()))}"
        (root / "proc").mkdir(parents=True)
        (root / "proc/cpuinfo").write_text(cpuinfo)
        if vendor:
            (root / "sys/class/dmi/id").mkdir(parents=True)
            (root / "sys/class/dmi/id/sys_vendor").write_text(vendor + "\n")
        return Host(root)

    assert pretouch.virtual_machine(host("flags\t\t: fpu sse2 hypervisor avx2\n")) == \
        "the CPU flag hypervisor"
    assert pretouch.virtual_machine(host("flags\t\t: fpu sse2\n", "QEMU")) == \
        "the DMI vendor is QEMU"
    assert pretouch.virtual_machine(host("flags\t\t: fpu sse2 hypervisorx\n",
                                         "Dell Inc.")) is None
    skipped = pretouch.after_reserve(host("flags\t\t: fpu\n"), "auto", 2048, [(None, 10)])
    assert skipped.pages == 0 and skipped.skipped is not None
    assert "not the running kernel" in skipped.skipped
