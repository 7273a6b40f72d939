"""`./scripts/install.sh --demo` where systemd is not PID 1 (a plain
container: the script is its PID 1), with the checkout and caches a fresh
machine's second run has (tests/container.fresh_machine). Apart from
test_readme: its booted container holds huge pages of the shared kernel's pool
until its module ends."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import IS_ROOT
from tests.container import CHECKOUT as SRC
from tests.container import Container, fresh_machine

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root: runs systemd-nspawn")


def test_the_demo_where_systemd_is_not_pid_1(wrapper_build: Path, demo_cache: Path) -> None:
    """In a plain container (the script is its PID 1): the install applies
    once, the demo runs under `hugepage-agent exec` as the servers' user, is
    served from huge pages, answers, and its removal leaves nothing, its pool
    pages included."""
    from tests.conftest import saved_kernel_state, set_pool

    script = f"""
cd {SRC}
./scripts/install.sh --demo
first=$(cat /run/hugepage-agent-demo.pid)
./scripts/install.sh --demo >/dev/null 2>&1
[ "$(cat /run/hugepage-agent-demo.pid)" = "$first" ] && echo "one demo: $first"
hugepage-agent status --json >/root/with.json || true
./scripts/install.sh --remove-demo
hugepage-agent status --json >/root/after.json || true
kill -0 "$first" 2>/dev/null || echo "server gone"
"""
    with saved_kernel_state():
        set_pool(2048, 0)
        c = Container("hpa-nosd")
        try:
            c.prepare(install=False)
            fresh_machine(c, demo_cache)
            r = c.run_unbooted(script)
            out = r.stdout + r.stderr
            assert r.returncode == 0, out[-5000:]
            assert "systemd is not PID 1 here" in out
            served = r"^demo\s+llama-server@demo\.service\s+running \(not a unit\)\s+\d+ .* loaded$"
            assert re.search(served, r.stdout, flags=re.M), r.stdout
            assert "completion: '" in r.stdout and "one demo: " in r.stdout
            assert "server gone" in r.stdout, out[-3000:]
            with_demo = json.loads(c.path("/root/with.json").read_text())
            m = next(m for m in with_demo["models"] if m["name"] == "demo")
            assert m["verdict"] == "loaded" and m["wrapper_loaded"], m
            after = json.loads(c.path("/root/after.json").read_text())
            assert after["models"] == []
            pool = next(p for p in after["pools"] if p["page_size_kb"] == 2048
                        and p["node"] is None)
            assert pool["total"] == 0, pool  # the demo's pages given back
            for gone in ("/var/lib/hugepage-agent-demo", "/run/hugepage-agent-demo.pid",
                         "/etc/hugepage-agent/config.d/90-demo.toml"):
                assert not c.path(gone).exists(), gone
        finally:
            c.stop()
