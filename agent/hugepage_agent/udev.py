"""Kernel memory events through pyudev: the only module that imports it.

Memory blocks going online or offline and NUMA nodes appearing change what
the pool can hold; the daemon re-checks the pool when they happen. Events
come from the kernel's netlink socket directly, so no udevd is needed."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

SUBSYSTEMS = ("memory", "node")


class MemoryWatcher:
    def __init__(self, on_event: Callable[[str, str], None]) -> None:
        import pyudev

        self._on_event = on_event
        self.monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="kernel")
        for s in SUBSYSTEMS:
            self.monitor.filter_by(s)
        self.monitor.start()
        self._watch: int | None = None

    def attach(self, glib: Any) -> None:
        """Watch the monitor's socket from the GLib main loop."""
        self._watch = glib.io_add_watch(self.monitor.fileno(), glib.IO_IN, self._ready)

    def _ready(self, *_args: object) -> bool:
        while True:
            device = self.monitor.poll(timeout=0)
            if device is None:
                return True
            log.info("kernel event: %s %s", device.action, device.sys_path)
            self._on_event(str(device.action), str(device.sys_path))
