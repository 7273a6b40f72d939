"""On reload: restart the units of models whose configuration changed since
their server started (model.restart = "on-change"), one at a time, each gated
on its server being healthy again before the next."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from hugepage_agent import health, journal, startrecord, unitfiles
from hugepage_agent.config import Config, ModelConfig
from hugepage_agent.execwrap import configured_env, model_env
from hugepage_agent.host import Host
from hugepage_agent.systemd import Systemd, SystemdError, UnitState

log = logging.getLogger(__name__)

HEALTH_TIMEOUT = 900.0  # seconds a restarted server may take to be healthy again
STABLE_SECONDS = 5.0  # without a port to ask: active this long, not restarted
POLL = 0.5
JOURNAL_LINES = 12
RUNNING = ("active", "activating", "reloading", "deactivating")


@dataclass(frozen=True)
class Changed:
    model: ModelConfig
    unit: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Failed:
    model: str
    unit: str
    why: str
    journal: tuple[str, ...]

    def message(self) -> str:
        return f"model {self.model}: {self.unit} {self.why}"


def changed_models(host: Host, cfg: Config, systemd: Systemd) -> list[Changed]:
    """The models with restart = "on-change" whose running (or restarting)
    server was started with something other than the configuration."""
    wanted = configured_env(cfg)
    out = []
    for m in cfg.models:
        if m.restart != "on-change" or m.kind == "container":
            continue
        unit = unitfiles.unit_for(m)
        try:
            st = systemd.state(unit)
        except SystemdError as e:
            log.warning("model %s: %s", m.name, e)
            continue
        if st.active_state not in RUNNING and not (st.active_state == "failed" and m.autostart):
            continue
        record = startrecord.for_invocation(host, m.name, st.invocation_id)
        if record is None:
            continue
        reasons = startrecord.changes(record, cfg, m,
                                      model_env(wanted, m) if wanted is not None else None)
        if reasons:
            out.append(Changed(m, unit, tuple(reasons)))
    return out


def _gone_wrong(st: UnitState, restarts_before: int) -> str | None:
    if st.active_state == "failed":
        return f"failed ({st.sub_state})"
    if st.sub_state == "auto-restart" or st.n_restarts > restarts_before:
        return "exited and is being restarted by systemd"
    if st.active_state == "inactive":
        return "stopped"
    return None


def gate(systemd: Systemd, unit: str, endpoint: health.Endpoint | None, old_invocation: str, *,
         timeout: float = HEALTH_TIMEOUT, clock: Callable[[], float] = time.monotonic,
         sleep: Callable[[float], None] = time.sleep) -> str | None:
    """Wait for the new start of `unit` to be healthy; None when it is, else
    what went wrong."""
    deadline = clock() + timeout
    restarts = -1
    stable_since: float | None = None
    while clock() < deadline:
        st = systemd.state(unit)
        if st.invocation_id and st.invocation_id != old_invocation:
            if restarts < 0:
                restarts = st.n_restarts
            wrong = _gone_wrong(st, restarts)
            if wrong is not None:
                return wrong
            if st.active_state == "active":
                if endpoint is not None:
                    if health.healthy(endpoint):
                        return None
                else:
                    stable_since = stable_since if stable_since is not None else clock()
                    if clock() - stable_since >= STABLE_SECONDS:
                        return None
        sleep(POLL)
    where = f" ({endpoint} did not answer 200)" if endpoint is not None else ""
    return f"was not healthy within {timeout:.0f} s{where}"


def restart_changed(host: Host, cfg: Config, systemd: Systemd) -> list[Failed]:
    """Restart each changed model's unit in turn, gated on its health; the
    ones that did not come back, with their journal's last lines."""
    failed = []
    for c in changed_models(host, cfg, systemd):
        log.info("model %s: %s; restarting %s", c.model.name, ", ".join(c.reasons), c.unit)
        try:
            old = systemd.state(c.unit).invocation_id
            systemd.restart(c.unit)
            ep = health.endpoint(c.model.args) if c.model.unit is None else None
            why = gate(systemd, c.unit, ep, old)
            new = systemd.state(c.unit).invocation_id
        except SystemdError as e:
            why, new = str(e), ""
        if why is None:
            log.info("model %s: %s is healthy again", c.model.name, c.unit)
            continue
        tail = journal.unit_tail(c.unit, new, JOURNAL_LINES)
        f = Failed(c.model.name, c.unit, why, tail)
        log.error("%s after the restart for %s; the other models keep running. Its "
                  "journal's last lines:\n%s", f.message(), ", ".join(c.reasons),
                  "\n".join(f"  {line}" for line in tail) or "  (none)")
        failed.append(f)
    return failed
