"""Helpers for the llama.cpp tests and benchmark: the llama-server built by
scripts/llama.sh, started on a free loopback port, stopped by pid."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def llama_bin() -> Path:
    r = subprocess.run(["bash", str(REPO / "scripts" / "llama.sh")], capture_output=True,
                       text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"scripts/llama.sh failed: {r.stderr[-3000:]}")
    return Path(r.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def agent_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "hugepage_agent", *args]


def agent_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HUGEPAGE_WRAPPER") and k != "LD_PRELOAD"}
    env["PYTHONPATH"] = str(REPO / "agent")
    env.update(extra or {})
    return env


class Server:
    """llama-server on 127.0.0.1; `wrap` is a command prefix (hugepage-agent exec ...)."""

    def __init__(self, binary: Path, model: Path, log: Path, *, wrap: list[str] | None = None,
                 env: dict[str, str] | None = None, args: list[str] | None = None) -> None:
        self.port = free_port()
        self.log = log
        cmd = [*(wrap or []), str(binary), "--model", str(model), "--host", "127.0.0.1",
               "--port", str(self.port), "--threads", "2", "--ctx-size", "256",
               *(args or [])]
        self.started = time.monotonic()
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                         env=agent_env(env), cwd=REPO)

    @classmethod
    def running(cls, proc: subprocess.Popen[bytes], port: int, log: Path) -> Server:
        """A server started another way (a container runtime's client)."""
        self = cls.__new__(cls)
        self.proc, self.port, self.log, self.started = proc, port, log, time.monotonic()
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 300) -> float:
        """Seconds from start to /health answering ok; raises if the server exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited {self.proc.returncode}: "
                                   f"{self.log.read_text(errors='replace')[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health",
                                            timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - self.started
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        raise TimeoutError("llama-server did not become ready")

    def complete(self, prompt: str, n: int = 24) -> dict[str, Any]:
        body = json.dumps({"prompt": prompt, "n_predict": n, "temperature": 0, "seed": 42,
                           "return_tokens": True, "cache_prompt": False}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/completion", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as r:
            data: dict[str, Any] = json.load(r)
        return data

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()
