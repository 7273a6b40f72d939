"""The agent's own D-Bus service on the system bus: an adapter that exports
the daemon object. Anyone may call Status(); Reload() is for root only (the
policy file says so too; this check holds even with a lax policy)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Protocol, cast

from hugepage_agent.statusdoc import SCHEMA_VERSION, StatusDoc

try:
    from pydbus.generic import signal as _signal
except ImportError:  # status falls back to reading the host directly
    _signal = None

BUS_NAME = "net.hugepageagent.Agent1"
OBJECT_PATH = "/net/hugepageagent/Agent1"
INTERFACE = BUS_NAME
# Seconds the CLI waits for Reload(): reserve.timeout is at most 3600 s, and
# stopping removed models takes a little more; the daemon extends systemd's
# timeout (TimeoutStartSec, which covers ExecReload too) meanwhile.
RELOAD_TIMEOUT = 3600 + 300

log = logging.getLogger(__name__)


class AgentLike(Protocol):
    def status(self) -> StatusDoc: ...
    def reload(self) -> tuple[bool, str]: ...


class AccessDenied(Exception):
    pass


# pydbus turns an exception whose class name has a dot into that D-Bus error name.
AccessDenied.__name__ = f"{INTERFACE}.Error.AccessDenied"


class Agent1:
    dbus = f"""
    <node>
      <interface name='{INTERFACE}'>
        <method name='Status'>
          <arg type='s' name='status_json' direction='out'/>
        </method>
        <method name='Reload'>
          <arg type='b' name='ok' direction='out'/>
          <arg type='s' name='message' direction='out'/>
        </method>
        <signal name='Changed'>
          <arg type='s' name='what'/>
        </signal>
      </interface>
    </node>
    """

    Changed = _signal() if _signal is not None else None

    def __init__(self, agent: AgentLike, bus: Any,
                 run: Callable[[Callable[[], Any]], Any] = lambda fn: fn()) -> None:
        self._agent = agent
        self._bus = bus
        self._run = run  # where long work goes (the daemon's worker thread)

    def Status(self) -> str:
        return json.dumps(self._agent.status())

    def Reload(self, dbus_context: Any = None) -> tuple[bool, str]:
        if dbus_context is None:  # no caller to check: refuse rather than trust
            log.warning("refused Reload() without a caller identity")
            raise AccessDenied("the caller could not be identified")
        uid = self._bus.dbus.GetConnectionUnixUser(dbus_context.sender)
        if uid != 0:
            log.warning("refused Reload() from uid %d: only root may change the agent", uid)
            raise AccessDenied("only root may reload hugepage-agent")
        result: tuple[bool, str] = self._run(self._agent.reload)
        return result


def publish(bus: Any, agent: AgentLike,
            run: Callable[[Callable[[], Any]], Any] = lambda fn: fn()) -> Agent1:
    logging.getLogger("pydbus.registration").setLevel(logging.CRITICAL)
    obj = Agent1(agent, bus, run)
    bus.publish(BUS_NAME, (OBJECT_PATH, obj))
    return obj


def call_status(address: str | None = None) -> StatusDoc | None:
    """The running daemon's status, or None when it does not answer."""
    try:
        import pydbus

        bus = pydbus.connect(address) if address else pydbus.SystemBus()
        proxy = bus.get(BUS_NAME, OBJECT_PATH)
        data = json.loads(proxy.Status())
    except Exception:
        return None
    # the daemon's document: the same schema, from the same package
    ok = isinstance(data, dict) and data.get("version") == SCHEMA_VERSION
    return cast(StatusDoc, data) if ok else None


def call_reload(address: str | None = None) -> tuple[bool, str]:
    """Ask the running daemon to reload; raises AgentError when it cannot be asked."""
    from hugepage_agent.errors import AgentError

    try:
        import pydbus

        bus = pydbus.connect(address) if address else pydbus.SystemBus()
        ok, message = bus.get(BUS_NAME, OBJECT_PATH).Reload(timeout=RELOAD_TIMEOUT)
    except ImportError as e:
        raise AgentError("pydbus is not installed (Debian: python3-pydbus)") from e
    except Exception as e:
        raise AgentError(f"the daemon did not answer Reload(): {e}") from e
    return bool(ok), str(message)
