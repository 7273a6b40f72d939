"""`hugepage-agent daemon`: what `systemctl start hugepage-agent` runs.

One GLib main loop: the agent's D-Bus service, the kernel's memory events
(pyudev), SIGHUP (reload) and SIGTERM (exit), and a debounce timer. The
logic is the plain Agent object; D-Bus and udev are adapters around it.
Stopping never releases the pool or changes THP: releasing is an explicit
`hugepage-agent release`."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import Any

from hugepage_agent import apply, config, metrics, models, status, unitfiles
from hugepage_agent.config import Config
from hugepage_agent.errors import AgentError
from hugepage_agent.execwrap import find_library
from hugepage_agent.host import Host
from hugepage_agent.notify import notify
from hugepage_agent.systemd import Systemd, SystemdError

log = logging.getLogger(__name__)

RECHECK_DELAY_MS = 500
STOP_WAIT = 30.0  # seconds a removed model may take to exit


class Agent:
    def __init__(self, host: Host, config_path: str | None, systemd: Systemd | None,
                 on_change: Callable[[str], None] = lambda what: None) -> None:
        self.host = host
        self.config_path = config_path
        self.systemd = systemd
        self.on_change = on_change
        self.cfg: Config | None = None
        self.last: apply.ApplyReport | None = None
        self._metrics_warned: set[str] = set()

    # -- the work -----------------------------------------------------------
    def start(self) -> apply.ApplyReport:
        """Load, apply, write model files, reload systemd, start autostart models."""
        self.cfg = config.load(self.host, self.config_path)
        report = self._apply_and_sync(self.cfg, previous=None)
        for m in self.cfg.models:
            if m.autostart:
                self._start(unitfiles.unit_for(m))
        return report

    def reload(self) -> tuple[bool, str]:
        """Re-read the configuration; an invalid one is logged and the old one kept."""
        try:
            new = config.load(self.host, self.config_path)
            old = self.cfg
            report = self._apply_and_sync(new, previous=old)
        except AgentError as e:
            log.error("reload: %s; keeping the previous configuration", e)
            return False, str(e)
        self.cfg = new
        old_units = {unitfiles.unit_for(m) for m in old.models} if old else set()
        for m in new.models:
            unit = unitfiles.unit_for(m)
            if m.autostart and unit not in old_units:
                self._start(unit)
        msg = self.summary(report)
        log.info("reloaded: %s", msg)
        self.on_change("config")
        return True, msg

    def recheck(self, reason: str) -> None:
        """Re-check the pool after a memory event; reserve again if short."""
        if self.cfg is None:
            return
        try:
            plan = apply.plan_for(self.host, self.cfg)
            have = sum(c.total() for c in apply.controls(self.host, plan))
            if have >= plan.target:
                log.info("%s: pool still at %d of %d pages", reason, have, plan.target)
            else:
                log.warning("%s: pool at %d of %d pages; reserving again", reason, have,
                            plan.target)
                self.last = apply.apply(self.host, self.cfg)
                log.info("%s", self.summary(self.last))
        except AgentError as e:
            log.error("%s: re-check failed: %s", reason, e)
        self.on_change("pool")

    def _apply_and_sync(self, cfg: Config, previous: Config | None) -> apply.ApplyReport:
        # Everything that can be refused is refused before anything changes.
        files = models.render_all(cfg, find_library(cfg))
        apply.plan_for(self.host, cfg)
        if previous is not None:
            # Models no longer configured give their huge pages back first, so
            # that the new pool size is not held up by pages they still use.
            keep = {m.name for m in cfg.models}
            for m in previous.models:
                if m.name not in keep and m.unit is None:
                    log.info("model %s is no longer configured: stopping %s", m.name,
                             unitfiles.unit_for(m))
                    self._stop(unitfiles.unit_for(m))
        report = apply.apply(self.host, cfg)
        self.last = report
        log.info("%s", self.summary(report))
        if report.boot_hint:
            log.warning("1 GiB pages are best reserved at boot: add `%s` to the kernel "
                        "command line", report.boot_hint)
        changed = models.sync(self.host, files)
        if self.systemd is not None and changed.changed:
            self.systemd.reload()
        return report

    def _start(self, unit: str) -> None:
        if self.systemd is None:
            return
        try:
            self.systemd.start(unit)
            log.info("started %s", unit)
        except SystemdError as e:
            log.error("%s", e)

    def _stop(self, unit: str) -> None:
        if self.systemd is not None:
            try:
                self.systemd.stop(unit, wait=STOP_WAIT)
            except SystemdError as e:
                log.error("%s", e)

    # -- reporting ----------------------------------------------------------
    @staticmethod
    def summary(report: apply.ApplyReport) -> str:
        r = report.result
        if r is None:
            return "nothing reserved"
        state = "met" if r.met else f"SHORT by {r.target - r.achieved}: {r.explain()}"
        return (f"pool {r.achieved} of {r.target} x {report.plan.page_size_kb} kB pages "
                f"({state}; {r.rounds} rounds, {r.seconds:.2f} s; "
                f"measures: {r.measures_text()})")

    def status(self) -> dict[str, Any]:
        return status.collect(self.host, self.cfg, systemd=self.systemd)

    def write_metrics(self) -> None:
        """Refresh the node_exporter textfile, if one is configured and its directory exists."""
        directory = self.cfg.metrics.textfile_dir if self.cfg else ""
        if not directory:
            return
        if not self.host.path(directory).is_dir():
            if directory not in self._metrics_warned:
                self._metrics_warned.add(directory)
                log.info("metrics: %s does not exist; not writing metrics (install "
                         "prometheus-node-exporter, or set [metrics] textfile_dir)", directory)
            return
        try:
            metrics.write(self.host, directory, self.status())
        except AgentError as e:
            log.error("metrics: %s", e)


def run(host: Host, config_path: str | None) -> int:
    from gi.repository import GLib

    from hugepage_agent import dbus_service
    from hugepage_agent.systemd import system_bus

    bus = system_bus()
    published: list[Any] = []

    def changed(what: str) -> None:
        agent.write_metrics()
        if published:
            published[0].Changed(what)

    agent = Agent(host, config_path, Systemd(bus), changed)
    report = agent.start()
    published.append(dbus_service.publish(bus, agent))

    loop = GLib.MainLoop()
    pending: list[int] = []

    def on_memory_event(action: str, path: str) -> None:
        if pending:
            return

        def fire() -> bool:
            pending.clear()
            agent.recheck(f"memory event ({action} {path})")
            return False

        pending.append(GLib.timeout_add(RECHECK_DELAY_MS, fire))

    try:
        from hugepage_agent.udev import MemoryWatcher

        MemoryWatcher(on_memory_event).attach(GLib)
    except Exception as e:  # pyudev missing or netlink refused: run on without it
        log.warning("not watching kernel memory events: %s", e)

    def on_hup() -> bool:
        notify("RELOADING=1")
        ok, msg = agent.reload()
        notify(f"READY=1\nSTATUS={msg if ok else 'reload failed, old config kept: ' + msg}")
        return True

    def on_term() -> bool:
        log.info("stopping; the pool and THP are left as they are")
        notify("STOPPING=1")
        loop.quit()
        return False

    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGHUP, on_hup)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, on_term)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, on_term)
    def on_timer() -> bool:
        agent.write_metrics()
        return True

    agent.write_metrics()
    interval = agent.cfg.metrics.interval if agent.cfg else 60.0
    GLib.timeout_add(int(interval * 1000), on_timer)
    notify(f"READY=1\nSTATUS={Agent.summary(report)}")
    loop.run()
    return 0
