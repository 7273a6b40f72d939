"""What each model's server was started with, and what has changed since.

At every start of a model's unit, `hugepage-agent prepare-model NAME` (the
unit's ExecStartPre, as root) records in /run/hugepage-agent/start/NAME.json:
the start's systemd invocation id, the model file's identity (device, inode,
size, mtime), the binary's identity, the arguments as run, and the wrapper's
settings the agent's drop-in gave it. `status` and the daemon's reload
compare the record of the unit's current invocation with the configuration:
what differs is a change not yet in effect (`changes`). Pure reads, except
`write`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from hugepage_agent import consts, unitfiles
from hugepage_agent.config import Config, ModelConfig
from hugepage_agent.errors import HostError
from hugepage_agent.host import Host

START_DIR = consts.START_DIR

ARGS = "args changed"
MODEL_FILE = "model file changed"
BINARY = "binary changed"
WRAPPER = "wrapper settings changed"
IMAGE = "image changed"


def start_file(name: str) -> str:
    return f"{START_DIR}/{name}.json"


def identity(path: str) -> list[int] | None:
    """(device, inode, size, mtime in ns) of a file; None when it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def make(host: Host, mf: unitfiles.ModelFile, unit: str,
         env: Mapping[str, str]) -> dict[str, Any]:
    """This start's record (the load choice is added by the caller)."""
    dropin = host.read_optional(unitfiles.dropin_path(unit)) or ""
    return {
        "time": time.time(),
        "invocation": env.get("INVOCATION_ID", ""),
        "unit": unit,
        "model": mf.model, "identity": identity(mf.model),
        "binary": mf.binary or None,
        "binary_identity": identity(mf.binary) if mf.binary else None,
        "config_args": list(mf.args) if mf.unit is None else None,
        "wrapper": unitfiles.dropin_environment(dropin),
    }


def write(host: Host, name: str, record: Mapping[str, Any]) -> None:
    host.write_atomic(start_file(name), json.dumps(record) + "\n", mode=0o644)


def read(host: Host, name: str) -> dict[str, Any] | None:
    try:
        data = json.loads(host.read_optional(start_file(name)) or "null")
    except (ValueError, HostError):
        return None
    return data if isinstance(data, dict) else None


def for_invocation(host: Host, name: str, invocation: str) -> dict[str, Any] | None:
    """The record of the unit's current start; None when it has none (started
    before this version, or its record failed)."""
    data = read(host, name)
    if data is None or not invocation or data.get("invocation") != invocation:
        return None
    return data


def changes(record: Mapping[str, Any], cfg: Config, m: ModelConfig,
            wanted_env: Mapping[str, str] | None) -> list[str]:
    """What the configuration now says differently from what the server was
    started with: ARGS, MODEL_FILE, BINARY, IMAGE, WRAPPER (in that order; the
    last not compared without `wanted_env`, the library not being found)."""
    out = []
    if m.unit is None and record.get("config_args") is not None \
            and list(record["config_args"]) != list(m.args):
        out.append(ARGS)
    if record.get("model") != m.path or record.get("identity") != identity(m.path):
        out.append(MODEL_FILE)
    if m.unit is None and record.get("binary") is not None and (
            record["binary"] != cfg.server.binary
            or record.get("binary_identity") != identity(cfg.server.binary)):
        out.append(BINARY)
    if m.image is not None and "image" in record and (
            record["image"] != m.image or _image_moved(record, m)):
        out.append(IMAGE)
    had = record.get("wrapper")
    if wanted_env is not None and isinstance(had, dict) and dict(had) != dict(wanted_env):
        out.append(WRAPPER)
    return out


def _image_moved(record: Mapping[str, Any], m: ModelConfig) -> bool:
    """The image reference now names another image (pulled or built anew)."""
    from hugepage_agent import runtimes, unitfiles

    had = record.get("image_id")
    now = runtimes.image_id(unitfiles.image_runtime(m), m.image or "") if had else None
    return bool(had and now and now != had)


def describe(found: Sequence[str]) -> str:
    return "restart pending: " + ", ".join(found)
