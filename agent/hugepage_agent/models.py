"""Writing the per-model files and drop-ins, and removing the ones the agent
owns for models no longer configured. Writes are atomic, through the Host."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

from hugepage_agent import loadmode, unitfiles
from hugepage_agent.config import Config
from hugepage_agent.errors import ConfigError
from hugepage_agent.execwrap import wrapper_env
from hugepage_agent.host import Host

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelFiles:
    written: tuple[str, ...]
    removed: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.written or self.removed)


def render_all(cfg: Config, library: str) -> dict[str, str]:
    """Every file the agent owns for the configured models: path -> text."""
    env = wrapper_env(cfg, library)
    out: dict[str, str] = {}
    for i, m in enumerate(cfg.models):
        try:
            out[unitfiles.dropin_path(unitfiles.unit_for(m))] = unitfiles.render_dropin(m, env)
        except unitfiles.UnsafeValue as e:
            raise ConfigError(cfg.origin("wrapper.library"), f"model[{i}]",
                              f"cannot be written into a unit file: {e}") from e
        if m.unit is None:
            lm = loadmode.resolve(cfg.server.load_mode, cfg.server.binary, m.args)
            out[unitfiles.model_file(m.name)] = unitfiles.render_model_file(
                m, cfg.server.binary, lm.added)
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
    for path, text in wanted.items():
        if host.read_optional(path) != text:
            host.write_atomic(path, text)
            written.append(path)
            log.info("wrote %s", path)
    removed = []
    for path in owned_files(host):
        if path not in wanted:
            host.remove(path)
            removed.append(path)
            log.info("removed %s (model no longer configured)", path)
            parent = os.path.dirname(path)
            if parent.endswith(".d"):
                with contextlib.suppress(OSError):  # the operator has other drop-ins there
                    host.path(parent).rmdir()
    return ModelFiles(tuple(written), tuple(removed))
