"""The agent's record of its last reservation (/run/hugepage-agent/last-apply.json):
apply writes it, status and the metrics read it. Nothing else here."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from hugepage_agent import consts
from hugepage_agent.errors import HostError
from hugepage_agent.host import Host

log = logging.getLogger(__name__)

LAST_APPLY_FILE = consts.LAST_APPLY_FILE


def write_last_apply(host: Host, state: Mapping[str, object]) -> None:
    try:
        host.write_atomic(LAST_APPLY_FILE, json.dumps(dict(state), indent=1) + "\n")
    except HostError as e:  # /run missing in a bare chroot: not worth failing the apply
        log.warning("could not record the result: %s", e)


def read_last_apply(host: Host) -> dict[str, object] | None:
    text = host.read_optional(LAST_APPLY_FILE)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
