"""What every scenario run in the QEMU guest shares (tests/numaguest.py copies
it beside the scenario): the record it writes to /mnt/hpa/results.json, its
steps, commands, the agent's status, and a llama-server's health and greedy
tokens. Python 3.11 of the guest's Debian, standard library only.

A scenario asserts nothing: it records what it saw, and the tests on the
host judge."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

SHARE = Path("/mnt/hpa")
RESULTS = SHARE / "results.json"
out: dict[str, Any] = {"steps": []}


def save() -> None:
    RESULTS.write_text(json.dumps(out, indent=1))


def step(what: str) -> None:
    print(f"== {time.monotonic():8.1f} s: {what}", flush=True)
    out["steps"].append(what)
    save()


def run(*argv: str, check: bool = True, timeout: float = 1200,
        cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                       cwd=cwd)
    print(f"$ {' '.join(argv)} -> {r.returncode}\n{r.stdout[-2000:]}{r.stderr[-2000:]}",
          flush=True)
    if check and r.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {r.returncode}")
    return r


def status() -> dict[str, Any]:
    """`hugepage-agent status --json`, with its exit status and its text."""
    r = run("hugepage-agent", "status", "--json", check=False)
    data: dict[str, Any] = json.loads(r.stdout)
    data["exit"] = r.returncode
    data["text"] = run("hugepage-agent", "status", check=False).stdout
    return data


def wait_health(port: int, timeout: float = 900) -> float | None:
    """Seconds until llama-server on `port` answers /health; None if it did not."""
    start = time.monotonic()
    while time.monotonic() < start + timeout:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                if r.status == 200:
                    return round(time.monotonic() - start, 1)
        except OSError:
            pass
        time.sleep(1)
    return None


def complete(port: int) -> list[int] | str:
    """Four greedy tokens after "the" (or what went wrong)."""
    body = json.dumps({"prompt": "the", "n_predict": 4, "temperature": 0, "seed": 1,
                       "cache_prompt": False, "return_tokens": True}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/completion", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            data = json.loads(r.read())
        return list(data.get("tokens") or []) or str(data.get("content"))
    except OSError as e:
        return f"error: {e}"


def journal(unit: str, since: str = "") -> str:
    argv = ["journalctl", "-u", unit, "-o", "cat", "--no-pager"]
    if since:
        argv += ["--since", since]
    return run(*argv, check=False).stdout


def model_entry(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(m for m in data["models"] if m["name"] == name)
