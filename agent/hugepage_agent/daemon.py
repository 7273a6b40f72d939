"""`hugepage-agent daemon`: what `systemctl start hugepage-agent` runs.

One GLib main loop: the agent's D-Bus service, the kernel's memory events
(pyudev), SIGHUP (reload) and SIGTERM (exit), and a debounce timer. The
logic is the plain Agent object; D-Bus and udev are adapters around it.

Long work (a reload, which may compact and retry for reserve.timeout and stop
units; a re-check after a memory event) runs on one worker thread, one job at
a time, so that the loop keeps answering Status() and signals. While it
reserves, the daemon tells systemd to extend its timeout (EXTEND_TIMEOUT_USEC).
SIGHUP and D-Bus Reload() are one path: RELOADING=1, the reload, READY=1.
Stopping never releases the pool or changes THP: releasing is an explicit
`hugepage-agent release`."""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from hugepage_agent import (
    apply,
    config,
    modelfiles,
    numanodes,
    pools,
    preload,
    restarts,
    serveruser,
    startrecord,
    unitfiles,
)
from hugepage_agent.config import Config
from hugepage_agent.daemonreport import Reporter
from hugepage_agent.errors import AgentError
from hugepage_agent.execwrap import find_library
from hugepage_agent.host import Host
from hugepage_agent.notify import notify
from hugepage_agent.plan import plan_for
from hugepage_agent.statusdoc import StatusDoc
from hugepage_agent.systemd import Systemd, SystemdError

log = logging.getLogger(__name__)

RECHECK_DELAY_MS = 500
STOP_WAIT = 30.0  # seconds a removed model may take to exit
EXTEND_EVERY = 10.0  # seconds between EXTEND_TIMEOUT_USEC messages
EXTEND_BY_USEC = 60_000_000  # each asks for one more minute


@contextlib.contextmanager
def extending_timeout(send: Callable[[str], object] = notify) -> Iterator[None]:
    """While the body runs (reserving may take up to reserve.timeout, longer
    than TimeoutStartSec), keep asking systemd for more time."""
    stop = threading.Event()

    def tick() -> None:
        while True:
            send(f"EXTEND_TIMEOUT_USEC={EXTEND_BY_USEC}")
            if stop.wait(EXTEND_EVERY):
                return

    t = threading.Thread(target=tick, name="extend-timeout", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()


class Job:
    """One piece of long work for the worker thread, and its outcome."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except Exception as e:  # never lose the worker: log and report
            log.exception("internal error in %s", getattr(self.fn, "__name__", "a job"))
            self.result = (False, f"internal error: {e}")
        finally:
            self.done.set()


class Worker:
    """One thread that runs the long jobs, in order."""

    def __init__(self) -> None:
        self.jobs: queue.Queue[Job] = queue.Queue()
        threading.Thread(target=self._loop, name="worker", daemon=True).start()

    def submit(self, fn: Callable[[], Any]) -> Job:
        job = Job(fn)
        self.jobs.put(job)
        return job

    def _loop(self) -> None:
        while True:
            self.jobs.get().run()


class Agent:
    def __init__(self, host: Host, config_path: str | None, systemd: Systemd | None,
                 on_change: Callable[[str], None] = lambda what: None) -> None:
        self.host = host
        self.config_path = config_path
        self.systemd = systemd
        self.on_change = on_change
        self.cfg: Config | None = None
        self.last: apply.ApplyReport | None = None
        self.reporter = Reporter(host, systemd, lambda: self.cfg)
        self._refused: dict[str, object] = {}  # model -> the refused start's record time

    # -- the work -----------------------------------------------------------
    def start(self) -> apply.ApplyReport:
        """Load, apply, write model files, reload systemd, start autostart models."""
        self.cfg = config.load(self.host, self.config_path)
        for warning in modelfiles.exposed_secrets(self.host, self.cfg):
            log.warning("%s", warning)
        report = self._apply_and_sync(self.cfg, previous=None)
        self._start_models(self.cfg, set())
        return report

    def _start_models(self, cfg: Config, already: set[str]) -> None:
        """Start the autostart models not in `already`; one whose file the
        servers' user cannot read is reported instead of started."""
        unreadable = modelfiles.unreadable_models(self.host, cfg)
        for m in cfg.models:
            unit = unitfiles.unit_for(m)
            if not m.autostart or not unit or unit in already:
                continue
            if m.name in unreadable:
                log.error("model %s: not starting %s: %s. The server runs as %s: make the "
                          "file readable by it (chmod o+r, or chgrp %s and chmod g+r), then "
                          "systemctl start %s", m.name, unit, unreadable[m.name],
                          serveruser.SERVER_USER, serveruser.SERVER_USER, unit)
                continue
            self._start(unit)

    def reload(self) -> tuple[bool, str]:
        """Re-read the configuration; an invalid one is logged and the old one
        kept. SIGHUP and D-Bus Reload() both come here: systemd sees
        RELOADING=1, then READY=1 with the outcome, either way."""
        notify("RELOADING=1")
        ok, msg = False, "internal error"
        try:
            with extending_timeout():
                ok, msg = self._reload()
        finally:
            notify(f"READY=1\nSTATUS={msg if ok else 'reload failed: ' + msg}")
        return ok, msg

    def _reload(self) -> tuple[bool, str]:
        try:
            new = config.load(self.host, self.config_path)
            old = self.cfg
            report = self._apply_and_sync(new, previous=old)
        except AgentError as e:
            log.error("reload: %s; keeping the previous configuration", e)
            return False, f"the new configuration is refused, the previous one is kept: {e}"
        self.cfg = new
        self._start_models(new, {unitfiles.unit_for(m) for m in old.models} if old else set())
        msg = self.summary(report)
        log.info("reloaded: %s", msg)
        self.on_change("config")
        failed = self._restart_changed(new)
        if failed:
            return False, ("; ".join(f.message() for f in failed)
                           + " (the new configuration is in effect; the other models keep "
                           "running; see journalctl -u hugepage-agent)")
        return True, msg

    def _restart_changed(self, cfg: Config) -> list[restarts.Failed]:
        """Restart the models whose server runs an older configuration, one at
        a time (the pool already covers the new one); then give back what the
        old servers held above the target."""
        if self.systemd is None:
            return []
        failed = restarts.restart_changed(self.host, cfg, self.systemd)
        self.shrink_if_freed("after the restarts")
        self.on_change("models")
        return failed

    def say_refusal(self, unit: str) -> None:
        """A model's image refused at its unit's start (prepare-model checks it
        there, as root: the agent's own sandbox cannot run a container
        runtime): why, in the agent's journal too, once per start."""
        m = next((m for m in (self.cfg.models if self.cfg else ())
                  if m.image is not None and unitfiles.unit_for(m) == unit), None)
        record = startrecord.read(self.host, m.name) if m is not None else None
        if m is None or record is None or not record.get("refused") \
                or record.get("image") != m.image or self._refused.get(m.name) == record["time"]:
            return
        self._refused[m.name] = record["time"]
        log.error("%s did not start: %s", unit, record["refused"])

    def pool_can_shrink(self) -> bool:
        """From the (cached) status: free pages above a pool's target."""
        return any((p["above_target"] or 0) > (p["above_target_held"] or 0)
                   for p in self.status()["pools"])

    def is_model_unit(self, unit: str) -> bool:
        return self.cfg is not None and any(unitfiles.unit_for(m) == unit
                                            for m in self.cfg.models)

    def shrink_if_freed(self, reason: str) -> None:
        """The pool shrinks as the pages above its target are freed (a model
        stopped or restarted smaller): re-apply when some of them are free."""
        if self.cfg is None:
            return
        try:
            plan = plan_for(self.host, self.cfg)
            goals = [n for _, n in plan.per_node] if plan.per_node else [plan.target]
            freed = sum(pools.free_above_target(c.total(), c.in_use(), goal)
                        for c, goal in zip(apply.controls(self.host, plan), goals))
            if freed <= 0:
                return
            log.info("%s: %d free pages above the pool's target; giving them back", reason,
                     freed)
            self.last = apply.apply(self.host, self.cfg)
            log.info("%s", self.summary(self.last))
        except AgentError as e:
            log.error("%s: shrinking the pool failed: %s", reason, e)
        self.on_change("pool")

    def recheck(self, reason: str) -> None:
        """Re-check the pool after a memory event; reserve again if short."""
        if self.cfg is None:
            return
        try:
            plan = plan_for(self.host, self.cfg)
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
        library = find_library(cfg)
        files = modelfiles.render_all(cfg, library, numanodes.read_topology(self.host))
        plan_for(self.host, cfg)
        cannot = preload.model_problems(cfg, library, self.systemd.exec_info
                                        if self.systemd is not None else None)
        if cannot:
            raise preload.PreloadError("; ".join(cannot))
        if previous is not None:
            # Models no longer configured give their huge pages back first, so
            # that the new pool size is not held up by pages they still use.
            keep = {m.name for m in cfg.models}
            for m in previous.models:
                if m.name not in keep and m.kind in ("template", "image"):
                    log.info("model %s is no longer configured: stopping %s", m.name,
                             unitfiles.unit_for(m))
                    self._stop(unitfiles.unit_for(m))
        report = apply.apply(self.host, cfg)
        self.last = report
        log.info("%s", self.summary(report))
        if report.boot_hint:
            log.warning("1 GiB pages are best reserved at boot: add `%s` to the kernel "
                        "command line", report.boot_hint)
        changed = modelfiles.sync(self.host, files)
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

    def status(self) -> StatusDoc:
        return self.reporter.status()

    def write_metrics(self) -> None:
        self.reporter.write_metrics()


class Loop:
    """The daemon's GLib main loop and what feeds it: D-Bus, memory events,
    the model units' jobs, signals, the metrics timer. Long work goes to the
    worker; the loop keeps answering."""

    def __init__(self, host: Host, config_path: str | None) -> None:
        from gi.repository import GLib

        from hugepage_agent.systemd import system_bus

        self.glib = GLib
        self.bus = system_bus()
        self.published: Any = None
        self.units = Systemd(self.bus)
        self.agent = Agent(host, config_path, self.units, self.changed)
        self.worker = Worker()
        self.loop = GLib.MainLoop()

    def changed(self, what: str) -> None:  # from the worker: the loop does the rest
        self.glib.idle_add(self._changed_in_loop, what)

    def _changed_in_loop(self, what: str) -> bool:
        self.agent.reporter.forget_status()
        self.agent.write_metrics()
        if self.published is not None:
            self.published.Changed(what)
        return False

    def run_in_worker(self, fn: Callable[[], Any]) -> Any:
        """Runs fn on the worker; the loop keeps serving D-Bus and signals."""
        job = self.worker.submit(fn)
        context = self.glib.MainContext.default()
        while not job.done.is_set():
            context.iteration(False) or job.done.wait(0.02)
        return job.result

    def debounced(self) -> Callable[[Callable[[], object]], None]:
        """Submits the first job of a burst to the worker RECHECK_DELAY_MS
        later; the others of the burst are dropped."""
        pending: list[int] = []

        def submit(job: Callable[[], object]) -> None:
            if pending:
                return

            def fire() -> bool:
                pending.clear()
                self.worker.submit(job)
                return False

            pending.append(self.glib.timeout_add(RECHECK_DELAY_MS, fire))

        return submit

    def watch(self) -> None:
        """Memory events re-check the pool; a model unit's ended job may free
        pages above the target (one check for a burst of either)."""
        agent = self.agent
        recheck_soon, shrink_soon = self.debounced(), self.debounced()

        def on_memory_event(action: str, path: str) -> None:
            recheck_soon(lambda: agent.recheck(f"memory event ({action} {path})"))

        try:
            from hugepage_agent.udev import MemoryWatcher

            MemoryWatcher(on_memory_event).attach(self.glib)
        except Exception as e:  # pyudev missing or netlink refused: run on without it
            log.warning("not watching kernel memory events: %s", e)

        def on_unit_job_done(unit: str) -> None:
            if agent.is_model_unit(unit):
                agent.say_refusal(unit)
                shrink_soon(lambda: agent.shrink_if_freed(f"{unit} stopped or restarted"))

        try:
            self.units.on_job_removed(on_unit_job_done)
        except SystemdError as e:  # the periodic check still shrinks the pool
            log.warning("not watching the model units' jobs: %s", e)

    def on_hup(self) -> bool:
        try:
            self.worker.submit(self.agent.reload)  # the same path as D-Bus Reload()
        except Exception:  # the handler must survive: a lost SIGHUP must not kill us
            log.exception("SIGHUP: reload could not be started")
        return True

    def on_term(self) -> bool:
        log.info("stopping; the pool and THP are left as they are")
        notify("STOPPING=1")
        self.loop.quit()
        return False

    def on_timer(self) -> bool:
        try:
            self.agent.write_metrics()
            if self.agent.pool_can_shrink():  # a server that exited on its own, say
                self.worker.submit(
                    lambda: self.agent.shrink_if_freed("free pages above the target"))
        except Exception:
            log.exception("metrics: internal error")
        return True

    def run(self) -> int:
        from hugepage_agent import dbus_service

        with extending_timeout():
            report = self.agent.start()
        self.published = dbus_service.publish(self.bus, self.agent, self.run_in_worker)
        self.watch()
        for sig, handler in ((signal.SIGHUP, self.on_hup), (signal.SIGTERM, self.on_term),
                             (signal.SIGINT, self.on_term)):
            self.glib.unix_signal_add(self.glib.PRIORITY_DEFAULT, sig, handler)
        self.agent.write_metrics()
        interval = self.agent.cfg.metrics.interval if self.agent.cfg else 60.0
        self.glib.timeout_add(int(interval * 1000), self.on_timer)
        notify(f"READY=1\nSTATUS={Agent.summary(report)}")
        self.loop.run()
        return 0


def run(host: Host, config_path: str | None) -> int:
    return Loop(host, config_path).run()
