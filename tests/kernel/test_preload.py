"""The preload check (preload.py) against real ELF files: the wrapper library
as built, a server binary, and a C library that defines only the symbol
versions of an older glibc (built here with a version script, as glibc's own
are). The CLI refuses such a server before anything changes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hugepage_agent import elflibs, preload
from tests.conftest import LIBRARY, REPO

AGENT_DIR = REPO / "agent"


def cc(*args: str) -> None:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is missing: scripts/deps.sh installs build-essential")
    subprocess.run(["gcc", *args], check=True, capture_output=True)


def old_libc(path: Path, newest: str = "2.31") -> Path:
    """A libc.so.6 defining GLIBC_2.2.5 .. GLIBC_{newest}, as an old glibc does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    src = path.parent / "fake.c"
    src.write_text("int fake_a(void) { return 1; }\nint fake_b(void) { return 2; }\n")
    script = path.parent / "fake.map"
    script.write_text(f"GLIBC_2.2.5 {{ global: fake_a; local: *; }};\n"
                      f"GLIBC_{newest} {{ global: fake_b; }} GLIBC_2.2.5;\n")
    cc("-shared", "-fPIC", "-nostdlib", "-Wl,-soname,libc.so.6",
       f"-Wl,--version-script={script}", "-o", str(path), str(src))
    return path


def server_with_old_libc(tmp_path: Path) -> Path:
    """A program whose DT_RUNPATH ($ORIGIN/lib) holds an old libc.so.6: the
    loader, and the check, find that one first."""
    d = tmp_path / "srv"
    (d / "lib").mkdir(parents=True)
    (d / "main.c").write_text("int main(void) { return 0; }\n")
    cc("-o", str(d / "llama-server"), str(d / "main.c"), "-Wl,-rpath,$ORIGIN/lib",
       "-Wl,--enable-new-dtags")
    old_libc(d / "lib" / "libc.so.6")
    return d / "llama-server"


def test_the_versions_are_read_from_the_files(tmp_path: Path, wrapper_build: Path) -> None:
    needed, _ = elflibs.symbol_versions(LIBRARY.read_bytes())
    assert any(v.startswith("GLIBC_2.") for v in needed)
    _, defined = elflibs.symbol_versions(old_libc(tmp_path / "libc.so.6").read_bytes())
    assert {"GLIBC_2.2.5", "GLIBC_2.31"} <= defined


def test_a_server_with_this_hosts_glibc_passes(wrapper_build: Path) -> None:
    assert preload.problem(str(LIBRARY), "/bin/true") is None


def test_an_older_glibc_is_refused_naming_both_versions(tmp_path: Path,
                                                       wrapper_build: Path) -> None:
    server = server_with_old_libc(tmp_path)
    why = preload.problem(str(LIBRARY), str(server))
    assert why is not None
    assert f"the wrapper library {LIBRARY} needs glibc 2." in why
    assert f"{server} runs with glibc 2.31 ({server.parent / 'lib' / 'libc.so.6'})" in why


def test_an_older_glibc_in_the_servers_root_is_refused(tmp_path: Path,
                                                      wrapper_build: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    shutil.copy("/bin/true", root / "usr/bin/true")
    old_libc(root / "lib/x86_64-linux-gnu/libc.so.6")
    lib = root / "usr/lib/hugepage-agent/libhugepage-wrapper.so"
    lib.parent.mkdir(parents=True)
    shutil.copy(LIBRARY, lib)
    why = preload.problem("/usr/lib/hugepage-agent/libhugepage-wrapper.so", "/usr/bin/true",
                          str(root))
    assert why is not None and "runs with glibc 2.31" in why, why
    assert preload.problem("/usr/lib/missing.so", "/usr/bin/true", str(root)) == (
        f"the wrapper library /usr/lib/missing.so does not exist in the server's root {root} "
        "(or cannot be read)")


def test_a_musl_server_is_refused(tmp_path: Path, wrapper_build: Path) -> None:
    d = tmp_path / "m"
    (d / "lib").mkdir(parents=True)
    musl = d / "lib" / "libc.musl-x86_64.so.1"
    (d / "x.c").write_text("int x(void) { return 0; }\n")
    cc("-shared", "-fPIC", "-nostdlib", "-Wl,-soname,libc.musl-x86_64.so.1", "-o", str(musl),
       str(d / "x.c"))
    (d / "main.c").write_text("int x(void);\nint main(void) { return x(); }\n")
    cc("-o", str(d / "srv"), str(d / "main.c"), "-nostdlib", "-Wl,-e,main",
       "-Wl,-rpath,$ORIGIN/lib", "-Wl,--enable-new-dtags", f"-L{d / 'lib'}",
       "-l:libc.musl-x86_64.so.1")
    why = preload.problem(str(LIBRARY), str(d / "srv"))
    assert why is not None and "runs with musl libc" in why, why


def test_apply_dry_run_refuses_a_server_the_library_cannot_load_into(
        tmp_path: Path, wrapper_build: Path) -> None:
    server = server_with_old_libc(tmp_path)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(4096))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[wrapper]\nlibrary = "{LIBRARY}"\n[server]\nbinary = "{server}"\n'
                   f'[[model]]\nname = "m"\npath = "{model}"\n')
    r = subprocess.run([sys.executable, "-m", "hugepage_agent", "apply", "--dry-run",
                        "--config", str(cfg)], capture_output=True, text=True, check=False,
                       env={**os.environ, "PYTHONPATH": str(AGENT_DIR)})
    assert r.returncode == 2, r.stdout + r.stderr
    assert "model m: the wrapper library" in r.stderr and "runs with glibc 2.31" in r.stderr
    assert r.stdout == ""  # refused before anything is shown as planned
