"""What plugs the agent into an operator's tools: the Prometheus rules
(promtool check and unit tests, and every metric name they use is one the
agent writes), the manual pages (generated from the parser and the README's
configuration reference, and in step with both), and bash completion."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hugepage_agent import config, manpages, metrics
from hugepage_agent.cli import _parser
from tests.conftest import REPO

PROM = REPO / "packaging" / "prometheus"
RULES = PROM / "hugepage-agent.rules.yml"
NAME_RE = re.compile(r"(?<![:\w])hugepage_agent_[a-z_]+")


def promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is missing: scripts/deps.sh installs Debian's prometheus package")
    return tool


def test_rules_pass_promtool_check_and_unit_tests() -> None:
    r = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([promtool(), "test", "rules", "hugepage-agent.test.yml"], cwd=PROM,
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def full_status() -> dict[str, object]:
    """A status with every branch the metrics writer has (pools with targets,
    a reservation, THP, a running model, the metrics interval)."""
    pool = {"page_size_kb": 2048, "node": None, "total": 100, "free": 40, "reserved": 0,
            "surplus": 0, "target": 100, "models_need": 98, "shortfall": 0, "above_target": 0,
            "above_target_held": 0}
    model = {"name": "q4", "unit": "llama-server@q4.service", "model_bytes": 1 << 30,
             "hugetlb_bytes": 1 << 30, "hugetlb_file_bytes": 0, "hugetlb_alloc_bytes": 1 << 30,
             "fallback_bytes": 0, "dead_bytes": 0, "used_bytes": 1 << 30, "coverage": 1.0,
             "active": True, "wrapper_loaded": True, "pid": 4242,
             "processes": [{"pid": 4242}], "restart_pending": ["args changed"],
             "numa": {"node_bytes": {"0": 1 << 29, "1": 1 << 29}, "off_node_ratio": 0.0}}
    return {"pools": [pool], "last_apply": {"rounds": 1, "seconds": 0.5, "time": 1.0},
            "thp": {"enabled": "never", "defrag": "never", "cmdline": None,
                    "as_configured": True},
            "models": [model], "degraded": False, "metrics_interval": 60.0}


def written_names() -> set[str]:
    return {line.split()[2] for line in metrics.render(full_status()).splitlines()
            if line.startswith("# TYPE ")}


def test_every_metric_name_in_the_rules_is_one_the_agent_writes() -> None:
    used = set(NAME_RE.findall(RULES.read_text()))
    used |= set(NAME_RE.findall((PROM / "hugepage-agent.test.yml").read_text()))
    assert used, "no agent metric found in the rules"
    missing = used - written_names()
    assert not missing, f"the rules use metrics the agent no longer writes: {sorted(missing)}"


def test_man_pages_are_generated_from_the_parser_and_the_reference(tmp_path: Path) -> None:
    pages = manpages.write(REPO / "README.md", tmp_path)
    eight = (tmp_path / "man8" / "hugepage-agent.8").read_text()
    five = (tmp_path / "man5" / "hugepage-agent.toml.5").read_text()
    assert len(pages) == 2
    parser = _parser()
    for name, sub in manpages._subcommands(parser).items():
        assert f"hugepage\\-agent {manpages.roff(name)}" in eight, name
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue  # every command has -h/--help; the page says so once
            for opt in action.option_strings:
                assert manpages.roff(opt) in eight, (name, opt)
    for key in [f"{s}.{k}" for s, keys in config._SCHEMA.items() for k in keys]:
        section, name = key.split(".")
        assert f"[{section}]" in five and f"\\fB{manpages.roff(name)}\\fR" in five, key
    for page in pages:
        r = subprocess.run(["groff", "-man", "-ww", "-z", str(page)], capture_output=True,
                           text=True, check=False)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        r = subprocess.run(["man", "-l", str(page)], capture_output=True, text=True,
                           check=False, env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin"})
        assert r.returncode == 0 and "hugepage-agent" in r.stdout


def test_the_reference_documents_exactly_the_keys_the_parser_knows() -> None:
    _, rows = manpages.reference((REPO / "README.md").read_text())
    documented = {key for key, _, _ in rows}
    known = {f"{s}.{k}" for s, keys in config._SCHEMA.items() for k in keys}
    known |= {f"model.{k}" for k in config._MODEL_KEYS}
    assert documented == known, (sorted(documented - known), sorted(known - documented))


def complete(line: str, models: Path) -> list[str]:
    """What bash completion offers for the last word of `line`."""
    words = line.split(" ")
    script = (f"source {REPO}/packaging/bash-completion/hugepage-agent\n"
              f"COMP_WORDS=({' '.join(repr(w) for w in words)})\n"
              f"COMP_CWORD={len(words) - 1}\n"
              "_hugepage_agent\n"
              "printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True,
                       env={"HUGEPAGE_AGENT_MODEL_DIR": str(models), "PATH": "/usr/bin:/bin"})
    return sorted(x for x in r.stdout.splitlines() if x)


def test_bash_completion_offers_commands_options_and_model_names(tmp_path: Path) -> None:
    for name in ("qwen3-30b", "q4", "tiny"):
        (tmp_path / f"{name}.json").write_text("{}")
    assert complete("hugepage-agent ", tmp_path) == sorted(
        ["apply", "status", "exec", "daemon", "reload", "release", "purge-files", "run-model",
         "prepare-model", "run-container", "remove-container", "compose", "--version", "--help"])
    assert complete("hugepage-agent st", tmp_path) == ["status"]
    assert complete("hugepage-agent status --", tmp_path) == sorted(
        ["--json", "--wait", "--prometheus", "--config", "--root", "--verbose", "--help"])
    assert complete("hugepage-agent apply --d", tmp_path) == ["--dry-run"]
    assert complete("hugepage-agent run-model q", tmp_path) == ["q4", "qwen3-30b"]
    assert complete("hugepage-agent run-model ", tmp_path) == ["q4", "qwen3-30b", "tiny"]
    assert complete("hugepage-agent compose q", tmp_path) == ["q4", "qwen3-30b"]
    assert complete("hugepage-agent run-container --v", tmp_path) == ["--verbose"]


def test_metrics_of_several_models_come_one_group_per_metric() -> None:
    """The text format wants every sample of a metric in one group: with two
    models, their samples of each metric sit together, and promtool agrees."""
    data = full_status()
    second = dict(data["models"][0])  # type: ignore[index]
    second["name"], second["unit"] = "f16", "llama-server@f16.service"
    data["models"] = [data["models"][0], second]  # type: ignore[index]
    text = metrics.render(data)  # type: ignore[arg-type]
    names = [line.split("{")[0].split()[0] for line in text.splitlines()
             if line and not line.startswith("#")]
    seen: list[str] = []
    for n in names:
        if not seen or seen[-1] != n:
            assert n not in seen, f"{n} samples are not together"
            seen.append(n)
    assert 'model="f16"' in text and 'model="q4"' in text
    r = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
