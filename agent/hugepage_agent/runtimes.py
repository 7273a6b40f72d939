"""The container runtimes (podman, docker): the one module that runs them.

Each call runs the runtime's client with a time limit and no shell; a
runtime that is not installed, not running (docker's daemon) or refuses is
an AgentError naming the command and what it said. Nothing here starts a
container: `create` makes one to read files from, and removes it.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterable, Sequence

from hugepage_agent.errors import AgentError

TIMEOUT = 60.0
SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_LINKS = 8


class RuntimeFailure(AgentError):
    """A container runtime is missing or failed."""


def find(runtime: str) -> str:
    """The runtime's client program. Raises RuntimeFailure."""
    path = shutil.which(runtime) or shutil.which(runtime, path=SEARCH_PATH)
    if path is None:
        raise RuntimeFailure(f"{runtime} is not installed (no {runtime} in {SEARCH_PATH})")
    return path


def _run(runtime: str, args: Sequence[str], timeout: float = TIMEOUT,
         text: bool = True) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    argv = [find(runtime), *args]
    try:
        return subprocess.run(argv, capture_output=True, text=text, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL,
                              env={**os.environ, "LD_PRELOAD": ""})
    except subprocess.TimeoutExpired as e:
        raise RuntimeFailure(f"`{runtime} {' '.join(args[:2])}` did not answer within "
                            f"{timeout:.0f} s") from e
    except OSError as e:
        raise RuntimeFailure(f"cannot run {argv[0]}: {e.strerror or e}") from e


def _said(r: subprocess.CompletedProcess) -> str:  # type: ignore[type-arg]
    err = r.stderr if isinstance(r.stderr, str) else r.stderr.decode(errors="replace")
    return " ".join(err.split())[-300:] or f"exit status {r.returncode}"


def container_pid(runtime: str, name: str) -> int | None:
    """The pid of a running container's first process (in this pid namespace),
    None when it does not exist or is not running. Raises RuntimeFailure when
    the runtime cannot be asked (not installed, daemon down, no permission)."""
    r = _run(runtime, ["inspect", "--type", "container", "--format",
                       "{{.State.Running}} {{.State.Pid}}", name])
    if r.returncode != 0:
        said = _said(r)
        if "no such" in said.lower():
            return None
        raise RuntimeFailure(f"{runtime} inspect {name}: {said}")
    running, _, pid = r.stdout.strip().partition(" ")
    return int(pid) if running == "true" and pid.isdigit() and int(pid) > 0 else None


def image_info(runtime: str, ref: str) -> tuple[str, list[str]]:
    """(the image's id, its entrypoint and command) of a local image. Raises
    RuntimeFailure when there is no such image (nothing is pulled)."""
    r = _run(runtime, ["image", "inspect", "--format",
                       "{{.Id}} {{json .Config.Entrypoint}} {{json .Config.Cmd}}", ref])
    if r.returncode != 0:
        raise RuntimeFailure(f"image {ref} is not in {runtime}'s local store ({_said(r)}); "
                            f"pull or load it first (`{runtime} pull {ref}`)")
    ident, _, rest = r.stdout.strip().partition(" ")
    entry, _, cmd = rest.partition(" ")
    try:
        argv = [str(a) for a in (json.loads(entry) or []) + (json.loads(cmd) or [])]
    except ValueError:
        argv = []
    return ident, argv


def image_id(runtime: str, ref: str) -> str | None:
    """The local image's id; None when the runtime or the image is missing."""
    try:
        return image_info(runtime, ref)[0]
    except AgentError:
        return None


def read_files(runtime: str, ref: str, paths: Iterable[str]) -> dict[str, tuple[str, bytes]]:
    """Regular files from an image, following symbolic links: path -> (the
    file it resolved to, its bytes); a path that does not exist is left out.
    A container is created (never started) to copy them from, then removed."""
    name = f"hugepage-agent-check-{uuid.uuid4().hex[:12]}"
    r = _run(runtime, ["create", "--pull=never", "--name", name,
                       "--entrypoint", "/hugepage-agent-check", ref])
    if r.returncode != 0:
        raise RuntimeFailure(f"{runtime} create {ref}: {_said(r)}")
    try:
        out = {}
        for path in paths:
            found = _read_following(runtime, name, path)
            if found is not None:
                out[path] = found
        return out
    finally:
        _run(runtime, ["rm", "-f", name])


def _read_following(runtime: str, container: str, path: str) -> tuple[str, bytes] | None:
    for _ in range(MAX_LINKS):
        r = _run(runtime, ["cp", f"{container}:{path}", "-"], text=False)
        if r.returncode != 0:
            return None
        try:
            with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tar:
                member = next(iter(tar.getmembers()), None)
                if member is None:
                    return None
                if member.issym():
                    path = posixpath.normpath(posixpath.join(posixpath.dirname(path),
                                                             member.linkname))
                    continue
                f = tar.extractfile(member) if member.isfile() else None
                return (path, f.read()) if f is not None else None
        except tarfile.TarError:
            return None
    return None


def remove(runtime: str, name: str) -> bool:
    """Remove a container, running or not; True when one was removed."""
    r = _run(runtime, ["rm", "-f", name])
    return r.returncode == 0 and name in r.stdout
