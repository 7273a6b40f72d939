"""systemd's D-Bus API: the only module that imports pydbus (besides the
daemon's own D-Bus adapter). Imported lazily: apply, status and exec work
without it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hugepage_agent.errors import AgentError

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"


class SystemdError(AgentError):
    pass


@dataclass(frozen=True)
class UnitState:
    name: str
    load_state: str
    active_state: str
    sub_state: str
    main_pid: int
    control_group: str = ""  # the unit's cgroup below the hierarchy's root
    invocation_id: str = ""  # this start's id, as $INVOCATION_ID gives it (hex)
    n_restarts: int = 0  # automatic restarts (Restart=) since the last manual start


SYSTEM_BUS_SOCKET = "/run/dbus/system_bus_socket"


def bus_available() -> bool:
    """Whether a system bus can be there at all (avoids loading GLib for nothing)."""
    return "DBUS_SYSTEM_BUS_ADDRESS" in os.environ or os.path.exists(SYSTEM_BUS_SOCKET)


def system_bus(address: str | None = None) -> Any:
    try:
        import pydbus
    except ImportError as e:
        raise SystemdError("pydbus is not installed (Debian: python3-pydbus)") from e
    try:
        return pydbus.connect(address) if address else pydbus.SystemBus()
    except Exception as e:  # GLib.Error: no bus
        raise SystemdError(f"cannot connect to the system bus: {e}") from e


class Systemd:
    def __init__(self, bus: Any) -> None:
        self.bus = bus
        try:
            self.manager = bus.get(SYSTEMD, MANAGER_PATH)
        except Exception as e:
            raise SystemdError(f"systemd is not reachable on the system bus: {e}") from e

    def reload(self) -> None:
        try:
            self.manager.Reload()
        except Exception as e:
            raise SystemdError(f"systemd daemon-reload failed: {e}") from e

    def start(self, unit: str) -> None:
        try:
            self.manager.StartUnit(unit, "replace")
        except Exception as e:
            raise SystemdError(f"cannot start {unit}: {e}") from e

    def on_job_removed(self, callback: Callable[[str], object]) -> None:
        """Call callback(unit) whenever a job of a unit finishes (start, stop,
        restart), from the GLib main loop."""
        try:
            self.manager.Subscribe()
            self.manager.JobRemoved.connect(lambda _id, _job, unit, _result: callback(unit))
        except Exception as e:
            raise SystemdError(f"cannot subscribe to systemd's job signals: {e}") from e

    def exec_info(self, unit: str) -> tuple[str | None, str]:
        """(the program ExecStart= runs, RootDirectory=) of a unit; (None, "/")
        when systemd does not say."""
        try:
            obj = self.bus.get(SYSTEMD, self.manager.LoadUnit(unit))
            start = list(obj.ExecStart)
            root = str(obj.RootDirectory or "/")
        except Exception:
            return None, "/"
        return (str(start[0][0]) if start else None), root

    def restart(self, unit: str) -> None:
        """Restart a model's unit from within the agent's own reload:
        "ignore-dependencies", or its start, ordered After= the agent, would
        wait for the reload job that waits for it."""
        try:
            self.manager.RestartUnit(unit, "ignore-dependencies")
        except Exception as e:
            raise SystemdError(f"cannot restart {unit}: {e}") from e

    def stop(self, unit: str, wait: float = 0.0) -> None:
        """Stop a unit; with wait, until it is inactive (its memory given back)."""
        try:
            self.manager.StopUnit(unit, "replace")
        except Exception as e:
            raise SystemdError(f"cannot stop {unit}: {e}") from e
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.state(unit).active_state in ("inactive", "failed"):
                return
            time.sleep(0.1)

    def state(self, unit: str) -> UnitState:
        try:
            obj = self.bus.get(SYSTEMD, self.manager.LoadUnit(unit))
            service = unit.endswith(".service")
            main_pid = int(obj.MainPID) if service else 0
            group = str(obj.ControlGroup) if service else ""
            invocation = bytes(obj.InvocationID or b"").hex()
            restarts = int(obj.NRestarts) if service else 0
            return UnitState(unit, str(obj.LoadState), str(obj.ActiveState), str(obj.SubState),
                             main_pid, group, invocation, restarts)
        except Exception as e:
            raise SystemdError(f"cannot read the state of {unit}: {e}") from e
