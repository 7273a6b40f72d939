"""One owner per contract: the names the C library and the agent share are
defined in wrapper_c/src/wrapper.h and agent/hugepage_agent/consts.py, and
held equal here; the library is built and installed under that name; no
other module writes the shared literals itself (pure: reads files)."""

from __future__ import annotations

import re

from hugepage_agent import consts
from tests.conftest import REPO

HEADER = REPO / "wrapper_c" / "src" / "wrapper.h"
PAIRS = {
    "HPW_LIBRARY_NAME": consts.LIBRARY_NAME,
    "HPW_HEAP_MEMFD": consts.HEAP_MEMFD,
    "HPW_FILE_MEMFD_PREFIX": consts.FILE_MEMFD_PREFIX,
    "HPW_LOG_PREFIX": consts.LOG_PREFIX,
    "HPW_ENV_MIN_SIZE": consts.ENV_MIN_SIZE,
    "HPW_ENV_ALLOC_MIN_SIZE": consts.ENV_ALLOC_MIN_SIZE,
    "HPW_ENV_PAGE_SIZE": consts.ENV_PAGE_SIZE,
    "HPW_ENV_STRICT": consts.ENV_STRICT,
    "HPW_ENV_LOG": consts.ENV_LOG,
    "HPW_ENV_THREADS": consts.ENV_THREADS,
    "HPW_ENV_KEEP_CACHE": consts.ENV_KEEP_CACHE,
    "HPW_ENV_DROP_CACHE": consts.ENV_DROP_CACHE,
    "HPW_ENV_NUMA": consts.ENV_NUMA,
    "HPW_ENV_PREFAULT": consts.ENV_PREFAULT,
    "HPW_REASON_POOL": consts.REASON_POOL,
    "HPW_REASON_CGROUP": consts.REASON_CGROUP,
    "HPW_REASON_MEMFD": consts.REASON_MEMFD,
    "HPW_REASON_TABLE": consts.REASON_TABLE,
    "HPW_REASON_COPY": consts.REASON_COPY,
    "HPW_REASON_SIZE": consts.REASON_SIZE,
    "HPW_REASON_NODE": consts.REASON_NODE,
}
assert {v for k, v in PAIRS.items() if k.startswith("HPW_ENV_")} == set(consts.ENV_NAMES)


def defines() -> dict[str, str]:
    return dict(re.findall(r'^#define (HPW_\w+) "([^"]*)"', HEADER.read_text(), flags=re.M))


def test_wrapper_h_and_consts_agree() -> None:
    have = defines()
    for name, value in PAIRS.items():
        assert have.get(name) == value, (name, have.get(name), value)
    # every string contract of wrapper.h is one the agent knows
    assert {n for n in have if n.startswith(("HPW_ENV_", "HPW_LIBRARY", "HPW_LOG_P", "HPW_REASON"))
            or n.endswith("MEMFD") or n.endswith("MEMFD_PREFIX")} <= set(PAIRS)


def test_the_library_is_built_and_installed_under_that_name() -> None:
    makefile = (REPO / "wrapper_c" / "Makefile").read_text()
    assert f"$(BUILD)/{consts.LIBRARY_NAME}" in makefile
    assert f"-soname,{consts.LIBRARY_NAME}" in makefile
    assert consts.DEFAULT_LIBRARY in (REPO / "scripts" / "install-files.sh").read_text()


def test_no_other_module_spells_a_shared_literal() -> None:
    literals = [consts.LIBRARY_NAME, consts.HEAP_MEMFD, consts.FILE_MEMFD_PREFIX,
                "HUGEPAGE_WRAPPER_", consts.GENERATED, "/run/hugepage-agent/"]
    agent = REPO / "agent" / "hugepage_agent"
    for path in sorted(agent.glob("*.py")):
        if path.name == "consts.py":
            continue
        code = "\n".join(line for line in path.read_text().splitlines()
                         if not line.lstrip().startswith("#"))
        code = re.sub(r'"""(.*?)"""', "", code, flags=re.S)  # docstrings describe them
        for lit in literals:
            assert f'"{lit}' not in code and f"'{lit}" not in code, (path.name, lit)
    sources = (REPO / "wrapper_c" / "src").glob("*.c")
    for path in sources:
        code = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S)
        for value in PAIRS.values():
            assert f'"{value}"' not in code, (path.name, value)


def test_the_template_unit_and_the_dropins_run_prepare_model_alike() -> None:
    from hugepage_agent import unitfiles

    for name in ("llama-server@.service", "llama-container@.service"):
        template = (REPO / "systemd" / name).read_text()
        assert f"ExecStartPre=+{unitfiles.PREPARE} %i\n" in template, name
    assert f"{consts.PRELOAD_ENV}=${{LD_PRELOAD}}" in unitfiles.PREPARE


def test_every_file_the_agent_writes_starts_with_the_one_header() -> None:
    from hugepage_agent import persist, unitfiles

    for text in (persist.header("x"), unitfiles.header("for model m")):
        assert text.startswith(consts.GENERATED + " ")
    # the package's removal asks the agent what it wrote (purge-files) instead
    # of recognising its files itself
    postrm = (REPO / "packaging" / "debian" / "postrm").read_text()
    assert "purge-files.list" in postrm and "sed" not in postrm
    assert consts.GENERATED.lstrip("# ") not in postrm
