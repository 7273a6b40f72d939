"""Writing the per-model files and drop-ins, and removing the ones the agent
owns for models no longer configured. Writes are atomic, through the Host."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

from hugepage_agent import footprint, loadmode, numanodes, serveruser, startrecord, unitfiles
from hugepage_agent.config import DEFAULT_TEXTFILE_DIR, Config
from hugepage_agent.errors import ConfigError
from hugepage_agent.execwrap import model_env, wrapper_env
from hugepage_agent.host import Host

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelFiles:
    written: tuple[str, ...]
    removed: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.written or self.removed)


AGENT_DROPIN = f"{unitfiles.UNIT_DIR}/{unitfiles.AGENT_UNIT}.d/{unitfiles.DROPIN_NAME}"


def render_agent_dropin(cfg: Config) -> str | None:
    """The agent's own drop-in: its sandbox lets it write a configured metrics
    directory (the unit itself names only the default one)."""
    directory = cfg.metrics.textfile_dir
    if not directory or directory.rstrip("/") == DEFAULT_TEXTFILE_DIR:
        return None
    return (unitfiles.header("for metrics.textfile_dir") + "[Service]\n"
            f"ReadWritePaths={unitfiles.quote('-' + directory)}\n")


def agent_dropin_metrics_dir(text: str) -> str | None:
    """The metrics directory the agent's own drop-in (render_agent_dropin) opens."""
    for value in unitfiles.quoted_settings(text, "ReadWritePaths"):
        if value.startswith("-/"):
            return value[1:].rstrip("/")
    return None


def render_all(cfg: Config, library: str,
               topo: numanodes.Topology | None = None) -> dict[str, str]:
    """Every file the agent owns for the configured models, and its own
    drop-in: path -> text. `topo`: the host's NUMA nodes, for the cpuset of a
    pinned model (None: one node)."""
    env = wrapper_env(cfg, library)
    out: dict[str, str] = {}
    for i, m in enumerate(cfg.models):
        if m.kind == "container":
            continue  # the operator runs it: `hugepage-agent compose NAME` prints its override
        pinned = numanodes.cpuset(m, topo) if topo else None
        try:
            out[unitfiles.dropin_path(unitfiles.unit_for(m))] = unitfiles.render_dropin(
                m, model_env(env, m), pinned)
        except unitfiles.UnsafeValue as e:
            raise ConfigError(cfg.origin("wrapper.library"), f"model[{i}]",
                              f"cannot be written into a unit file: {e}") from e
        if m.unit is None:
            lm = footprint.load_mode(cfg.server.load_mode,
                                     loadmode.server_binary(cfg.server.binary, m.image), m.path,
                                     m.args, cfg.wrapper.min_size)
            out[unitfiles.model_file(m.name)] = unitfiles.render_model_file(
                m, cfg.server.binary if m.image is None else "", lm, cfg.server.page_cache,
                cpuset=pinned)
        else:
            out[unitfiles.model_file(m.name)] = unitfiles.render_own_unit_file(m)
    try:
        agent = render_agent_dropin(cfg)
    except unitfiles.UnsafeValue as e:
        raise ConfigError(cfg.origin("metrics.textfile_dir"), "metrics.textfile_dir",
                          f"cannot be written into a unit file: {e}") from e
    if agent is not None:
        out[AGENT_DROPIN] = agent
    return out


def file_mode(path: str, user: serveruser.User | None) -> tuple[int, int | None]:
    """Model files hold the server's arguments (an --api-key among them,
    perhaps): readable by root and the servers' group only."""
    if path.startswith(unitfiles.MODEL_DIR + "/"):
        return (0o640, user.gid) if user is not None else (0o600, None)
    return 0o644, None


def unreadable_models(host: Host, cfg: Config) -> dict[str, str]:
    """Models whose file the servers' user cannot read: name -> why."""
    user = serveruser.lookup(host)
    if user is None:
        return {}
    out = {}
    for m in cfg.models:
        if m.kind in ("template", "image"):
            why = serveruser.cannot_read(m.path, user)
            if why is not None:
                out[m.name] = why
    return out


def owned_files(host: Host) -> list[str]:
    """Files the agent wrote before (it marks them with its header)."""
    found = host.glob(f"{unitfiles.UNIT_DIR}/*.d/{unitfiles.DROPIN_NAME}")
    found += host.glob(f"{unitfiles.MODEL_DIR}/*.json")
    owned = []
    for p in found:
        text = host.read_optional(p) or ""
        if text.startswith(unitfiles.GENERATED) or '"generated_by": "hugepage-agent' in text:
            owned.append(p)
    return owned


def sync(host: Host, wanted: dict[str, str]) -> ModelFiles:
    """Make the files on disk match `wanted` (from render_all)."""
    written = []
    user = serveruser.lookup(host)
    for path, text in wanted.items():
        mode, group = file_mode(path, user)
        have = host.file_mode(path)
        if host.read_optional(path) != text or have is None or have[0] != mode or \
                (group is not None and have[1] != group):
            host.write_atomic(path, text, mode=mode, group=group)
            written.append(path)
            log.info("wrote %s", path)
    removed = []
    for path in owned_files(host):
        if path not in wanted:
            host.remove(path)
            removed.append(path)
            log.info("removed %s (model no longer configured)", path)
            if path.startswith(unitfiles.MODEL_DIR + "/"):  # and the record of its last start
                name = os.path.basename(path)[:-len(".json")]
                host.remove(startrecord.start_file(name))
            parent = os.path.dirname(path)
            if parent.endswith(".d"):
                with contextlib.suppress(OSError):  # the operator has other drop-ins there
                    host.path(parent).rmdir()
    return ModelFiles(tuple(written), tuple(removed))


SECRET_FLAGS = ("--api-key", "--ssl-key-file", "--hf-token", "-hft")


def exposed_secrets(host: Host, cfg: Config) -> list[str]:
    """Configuration files that others can read while a model's arguments hold a
    secret: one warning each, with the fix."""
    secret = [m.name for m in cfg.models if any(a.split("=", 1)[0] in SECRET_FLAGS
                                                 for a in m.args)]
    if not secret:
        return []
    out = []
    for f in cfg.files:
        have = host.file_mode(f)
        if have is not None and have[0] & 0o004:
            out.append(f"{f} is readable by every user and holds a secret in the arguments of "
                       f"model {', '.join(secret)}: chmod 600 {f}, or pass the key with "
                       "--api-key-file (a file readable only by root and "
                       f"{serveruser.SERVER_USER})")
    return out
