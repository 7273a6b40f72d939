"""Is a model's server healthy: llama-server's /health, where its arguments
name a TCP port; the daemon's restart gate asks it."""

from __future__ import annotations

import http.client
from collections.abc import Sequence
from dataclasses import dataclass

from hugepage_agent import serverargs

DEFAULT_HOST = "127.0.0.1"  # llama-server's default --host
TLS_FLAGS = ("--ssl-key-file", "--ssl-cert-file")


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/health"


def endpoint(args: Sequence[str]) -> Endpoint | None:
    """Where the server answers /health: from --port (and --host); None when
    the arguments name no port, a unix socket, or TLS (not checked here)."""
    port = serverargs.value(args, "--port")
    if port is None or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    if serverargs.has(args, *TLS_FLAGS):
        return None
    host = serverargs.value(args, "--host") or DEFAULT_HOST
    if host.endswith(".sock") or "/" in host:
        return None
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}.get(host, host.strip("[]"))
    return Endpoint(host, int(port))


def healthy(ep: Endpoint, timeout: float = 2.0) -> bool:
    """200 from /health: the model is loaded and the server answers (503 while
    it loads)."""
    conn = http.client.HTTPConnection(ep.host, ep.port, timeout=timeout)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()
