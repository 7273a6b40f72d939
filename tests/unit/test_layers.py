"""Reads apart from writes (pure: parses the package's imports). `status`,
what anyone may run and what the daemon answers Status() with, must not pull
in a module whose job is to change the host; the commands that run at every
server start (exec, run-model, prepare-model) must not pull in the daemon's
or the status's machinery."""

from __future__ import annotations

import ast

from tests.conftest import REPO

PACKAGE = REPO / "agent" / "hugepage_agent"
# modules whose job is to change the host (thp, persist, pools, pagecache and
# startrecord each also read: status uses their readers)
WRITERS = {"apply", "reserve", "release", "daemon", "modelfiles", "restarts", "pretouch",
           "dbus_service"}


def imports(module: str) -> set[str]:
    """The package modules `module` imports at its top level (not inside
    functions: the CLI imports each command's modules lazily)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "hugepage_agent":
                out |= {a.name for a in node.names if (PACKAGE / f"{a.name}.py").exists()}
            elif node.module.startswith("hugepage_agent."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names
                    if a.name.startswith("hugepage_agent.")}
    return out


def closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(imports(m))
    return seen


def test_status_imports_no_module_that_changes_the_host() -> None:
    reach = closure("status")
    assert "plan" in reach and "state" in reach  # what it took from apply before
    assert not reach & WRITERS, sorted(reach & WRITERS)


def test_the_per_start_commands_stay_small() -> None:
    for module in ("modelstart", "execwrap"):
        reach = closure(module)
        assert not reach & (WRITERS | {"status", "coverage", "systemd"}), (module, sorted(reach))
