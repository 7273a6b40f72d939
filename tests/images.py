"""Container images for the tests, built here (no registry is reachable): a
Debian root from scripts/images.sh with llama-server added at
/app/llama-server, imported with it as the entrypoint, as llama.cpp's
official server image has it (`podman import` / `docker import --change`)."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

from tests.conftest import REPO

ENTRYPOINT = "/app/llama-server"
CHANGES = [f'ENTRYPOINT ["{ENTRYPOINT}"]', "WORKDIR /app"]


def base(suite: str) -> Path:
    """The cached root tarball of a Debian suite (bookworm, trixie, bullseye)."""
    r = subprocess.run(["bash", str(REPO / "scripts" / "images.sh"), suite],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return Path(r.stdout.strip().splitlines()[-1])


def with_server(root_tar: Path, server: Path, out: Path) -> Path:
    """A copy of the root tarball with `server` at /app/llama-server."""
    shutil.copyfile(root_tar, out)
    with tarfile.open(out, "a") as tar:
        d = tarfile.TarInfo("./app")
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(d)
        data = server.read_bytes()
        f = tarfile.TarInfo("./app/llama-server")
        f.size, f.mode = len(data), 0o755
        tar.addfile(f, io.BytesIO(data))
    return out


def import_image(runtime: str, tarball: Path, ref: str) -> str:
    """Import a root tarball as image `ref`; returns the image id."""
    argv = [runtime, "import"]
    for c in CHANGES:
        argv += ["--change", c]
    r = subprocess.run([*argv, str(tarball), ref], capture_output=True, text=True, check=False,
                       timeout=600)
    assert r.returncode == 0, f"{' '.join(argv)}: {r.stderr[-2000:]}"
    return r.stdout.strip().splitlines()[-1]
