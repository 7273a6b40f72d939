"""One source for every default: the dataclasses in config.py. The shipped
TOML files, the README's configuration reference and the C library's own
defaults (wrapper_c/src/config.c, for a program run without the agent's
environment) are held to them here. Pure: reads files."""

from __future__ import annotations

import re
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from hugepage_agent import config
from hugepage_agent.config import Config, ModelConfig
from hugepage_agent.host import Host
from tests.conftest import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SECTIONS = ("pool", "thp", "reserve", "wrapper", "server", "metrics")
MODEL_DEFAULTS = ("args", "unit", "autostart", "restart", "numa")


def load_text(tmp_path: Path, text: str) -> Config:
    f = tmp_path / "c.toml"
    f.write_text(text)
    return config.load(Host("/"), str(f))


def settings(cfg: Config) -> dict[str, Any]:
    return {s: getattr(cfg, s) for s in SECTIONS}


def without_models(text: str) -> str:
    return text.split("[[model]]", maxsplit=1)[0]


@pytest.mark.parametrize("name", ["default.toml", "example.toml"])
def test_shipped_files_set_the_defaults(tmp_path: Path, name: str) -> None:
    text = (REPO / "config" / name).read_text()
    assert settings(load_text(tmp_path, without_models(text))) == settings(Config())


def test_example_names_every_key_with_its_default(tmp_path: Path) -> None:
    data = tomllib.loads((REPO / "config" / "example.toml").read_text())
    for section, keys in config._SCHEMA.items():
        assert set(data[section]) == set(keys), section
    model = data["model"][0]
    # the ways of running it other than the template's, shown commented out
    assert set(config._MODEL_KEYS) - set(model) == {"unit", "image", "container", "runtime",
                                                    "runtime_args"}
    base = ModelConfig(name="x", path="/x", size=0)
    for key in ("autostart", "restart", "numa"):
        assert model[key] == getattr(base, key), key


def readme_rows() -> list[tuple[str, str]]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \| ([^|]+) \|", text, flags=re.M)


def test_readme_reference_lists_every_key() -> None:
    listed = {key for key, _ in readme_rows()}
    want = {f"{s}.{k}" for s, ks in config._SCHEMA.items() for k in ks}
    want |= {f"model.{k}" for k in config._MODEL_KEYS}
    assert listed == want


@pytest.mark.parametrize(("key", "shown"), readme_rows(), ids=[k for k, _ in readme_rows()])
def test_readme_defaults_are_the_defaults(tmp_path: Path, key: str, shown: str) -> None:
    shown = shown.strip()
    section, name = key.split(".")
    if shown in ("required", "none"):
        assert section == "model"
        if shown == "none":
            assert getattr(ModelConfig(name="x", path="/x", size=0), name) is None
        return
    value = shown.strip("`")
    if section == "model":
        model = tmp_path / "m.gguf"
        model.write_bytes(b"")
        cfg = load_text(tmp_path, f'[[model]]\nname = "x"\npath = "{model}"\n{name} = {value}\n')
        base = load_text(tmp_path, f'[[model]]\nname = "x"\npath = "{model}"\n')
        assert cfg.models[0] == base.models[0], key
        return
    cfg = load_text(tmp_path, f"[{section}]\n{name} = {value}\n")
    assert getattr(cfg, section) == getattr(Config(), section), key


def test_the_libraries_defaults_are_the_agents() -> None:
    """What the C library assumes when a variable is unset is what the agent
    writes by default: a program run by hand behaves as a unit does."""
    text = (REPO / "wrapper_c" / "src" / "config.c").read_text()
    init = dict(re.findall(r"^\s+\.(\w+) = ([^,]+),", text.split("hpw_cfg = {")[1]
                           .split("};")[0], flags=re.M))
    w = config.WrapperConfig()
    header = (REPO / "wrapper_c" / "src" / "wrapper.h").read_text()
    alloc_default = re.search(r"#define HPW_ALLOC_MIN_DEFAULT \((\d+)UL << (\d+)\)", header)
    assert alloc_default is not None
    assert int(alloc_default.group(1)) << int(alloc_default.group(2)) == w.alloc_min_size
    assert init == {"min_size": "HPW_1G", "alloc_min": "HPW_ALLOC_MIN_DEFAULT",
                    "page": "HPW_PAGE_AUTO", "strict": "0", "log": "HPW_LOG_INFO",
                    "threads": "0"}
    assert (w.min_size, w.page_size, w.strict, w.log, w.threads) == \
        (1 << 30, "auto", False, "info", 0)
    assert [f.name for f in fields(w)] == ["library", "min_size", "alloc_min_size", "page_size",
                                           "strict", "log", "threads"]
