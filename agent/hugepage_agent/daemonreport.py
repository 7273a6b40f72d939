"""The daemon's reporting: its status, collected at most once per
STATUS_MAX_AGE while the model units stay as they were (anyone may ask, and
it reads every server's maps), and the metrics file it writes from it."""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable

from hugepage_agent import metrics, status, unitfiles
from hugepage_agent.config import Config
from hugepage_agent.errors import AgentError, HostError
from hugepage_agent.host import Host
from hugepage_agent.statusdoc import StatusDoc
from hugepage_agent.systemd import Systemd, SystemdError

log = logging.getLogger(__name__)

STATUS_MAX_AGE = 0.5  # seconds a Status() answer is reused: callers cannot load the loop


class Reporter:
    def __init__(self, host: Host, systemd: Systemd | None,
                 config: Callable[[], Config | None]) -> None:
        self.host = host
        self.systemd = systemd
        self.config = config  # the daemon's current configuration
        self._metrics_warned: set[tuple[str, str]] = set()
        self._status: tuple[float, tuple[tuple[str, str, int], ...], StatusDoc] | None = None
        self._status_lock = threading.Lock()

    def status(self) -> StatusDoc:
        """The status, collected afresh at most once per STATUS_MAX_AGE seconds
        while the model units stay as they were (it reads every process's
        maps, and anyone may ask for it); at once when a unit changed."""
        key = self._units_key()
        with self._status_lock:
            now = time.monotonic()
            if (self._status is None or now - self._status[0] > STATUS_MAX_AGE
                    or self._status[1] != key):
                self._status = (now, key, status.collect(self.host, self.config(),
                                                         systemd=self.systemd))
            return self._status[2]

    def _units_key(self) -> tuple[tuple[str, str, int], ...]:
        """What the model units are doing: a few cheap D-Bus property reads."""
        cfg = self.config()
        if self.systemd is None or cfg is None:
            return ()
        out = []
        for m in cfg.models:
            unit = unitfiles.unit_for(m)
            if not unit:
                continue  # the operator's container: no unit
            try:
                st = self.systemd.state(unit)
                out.append((unit, st.active_state, st.main_pid))
            except SystemdError:
                out.append((unit, "?", 0))
        return tuple(out)

    def forget_status(self) -> None:
        with self._status_lock:
            self._status = None

    def write_metrics(self) -> None:
        """Refresh the node_exporter textfile, if one is configured, its directory
        exists and is safe to write as root."""
        cfg = self.config()
        directory = cfg.metrics.textfile_dir if cfg else ""
        if not directory:
            return
        if not self.host.path(directory).is_dir():
            self._warn_once(("missing", directory), logging.INFO, "metrics: %s does not exist; "
                            "not writing "
                            "metrics (install prometheus-node-exporter, or set [metrics] "
                            "textfile_dir)", directory)
            return
        why = self.host.untrusted(directory)
        if why is not None:
            self._warn_once(("untrusted", directory), logging.ERROR, "metrics: not writing into "
                            "%s: %s. Root "
                            "writes there only where no other user can swap a path; use a "
                            "directory owned by root and writable only by root, and point "
                            "node_exporter's --collector.textfile.directory at it", directory,
                            why)
            return
        try:
            metrics.write(self.host, directory, self.status())
        except AgentError as e:
            read_only = isinstance(e, HostError) and e.errno == errno.EROFS
            hint = (" (the service's sandbox lets it write there from its next start: "
                    "systemctl restart hugepage-agent)" if read_only else "")
            self._warn_once(("write", directory), logging.ERROR, "metrics: %s%s", e, hint)

    def _warn_once(self, key: tuple[str, str], level: int, msg: str, *args: object) -> None:
        """Log once per (reason, directory): a directory that was missing and is
        then unsafe is still reported."""
        if key not in self._metrics_warned:
            self._metrics_warned.add(key)
            log.log(level, msg, *args)


