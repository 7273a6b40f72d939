"""Property-based fuzzing of the configuration (hypothesis): generated
configuration files and drop-in sets, from the schema's keys with values of
every type and shape (huge numbers, nan, Unicode, nesting, NUL, wrong types,
broken TOML, bytes that are not UTF-8), fed to `hugepage-agent apply` on a
fake host. None may end in a traceback or a hang, every refusal is exit 2
with one line naming a file, and a refused configuration changes nothing on
the host; `--dry-run` never changes anything."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hugepage_agent import config
from hugepage_agent.cli import main
from tests.faketree import make_tree, snapshot

EXAMPLES = int(os.environ.get("HPW_CONFIG_EXAMPLES", "2000"))
MODEL = "/etc/hostname-model.gguf"  # a regular file inside each fake root's parent

scalars = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=20),
    st.sampled_from(["12G", "90%", "0%", "101%", "2M", "1G", "4K", "30s", "nan", "inf", "1e400",
                     "9" * 300 + "G", "-5", "auto", "never", "madvise", "always", "dio", "none",
                     "keep", "quiet", "debug", "off", "1.5T", " 3 G ", "\u00b2", "\u0660",
                     "/var/lib/x", "relative", "a\x00b", "%i", "$HOME", "../..", ""]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12)


def toml_key(k: str) -> str:
    return json.dumps(k)  # a quoted key: any Unicode, escaped


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) \
            else repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    assert isinstance(v, dict)
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


section_keys = {s: sorted(keys) for s, keys in config._SCHEMA.items()}
key_choice = st.one_of(
    st.sampled_from([(s, k) for s, ks in section_keys.items() for k in ks]),
    st.tuples(st.sampled_from([*section_keys, "pools", "Pool"]), st.text(max_size=8)),
)
model_entry = st.dictionaries(
    st.sampled_from(["name", "path", "args", "unit", "autostart", "port", "Name"]),
    st.one_of(values, st.just(MODEL), st.sampled_from(["m", "m\n", "a b", "x" * 200, "-x"]),
              st.lists(st.sampled_from(["--port", "8080", "-c", "4096", "--load-mode", "mmap",
                                        "--api-key", "s3cret", "a b", "\n"]), max_size=6)),
    max_size=5)


@st.composite
def config_text(draw: st.DrawFn) -> str:
    sections: dict[str, list[str]] = {}
    for s, k in draw(st.lists(key_choice, max_size=8)):
        sections.setdefault(s, []).append(f"{toml_key(k)} = {toml_value(draw(values))}")
    text = "".join(f"[{toml_key(s)}]\n" + "\n".join(lines) + "\n"
                   for s, lines in sections.items())
    for m in draw(st.lists(model_entry, max_size=3)):
        text += "[[model]]\n" + "".join(f"{toml_key(k)} = {toml_value(v)}\n"
                                         for k, v in m.items())
    damage = draw(st.sampled_from(["none"] * 6 + ["truncate", "garbage", "deep", "bytes"]))
    if damage == "truncate" and text:
        text = text[:draw(st.integers(0, len(text) - 1))]
    elif damage == "garbage":
        text += draw(st.text(max_size=30))
    elif damage == "deep":
        n = draw(st.integers(100, 3000))
        text += "x = " + "[" * n + "]" * n + "\n"
    elif damage == "bytes":
        text = "\udcff" + text  # written with surrogateescape: not UTF-8
    return text


def write(path: Path, text: str) -> None:
    path.write_bytes(text.encode("utf-8", "surrogateescape"))


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def check(rc: int, err: str) -> None:
    assert rc in (0, 1, 2), rc
    assert "Traceback" not in err
    if rc == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hugepage-agent: error: "), err


@pytest.mark.slow  # about a minute of generated configurations
@settings(max_examples=EXAMPLES, deadline=5000, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(main_text=config_text(), dropins=st.lists(config_text(), max_size=3))
def test_generated_configurations_never_crash_or_change_the_host_when_refused(
        capsys: pytest.CaptureFixture[str], main_text: str, dropins: list[str]) -> None:
    with tempfile.TemporaryDirectory() as d:
        base = Path(d)
        root = base / "root"
        make_tree(root)
        shutil.copy("/etc/hostname", root / MODEL.lstrip("/"))
        (root / "etc/hugepage-agent/config.d").mkdir(parents=True)
        write(root / "etc/hugepage-agent/config.toml", main_text.replace(MODEL, str(root) + MODEL))
        for i, text in enumerate(dropins):
            write(root / f"etc/hugepage-agent/config.d/{i:02d}-gen.toml",
                  text.replace(MODEL, str(root) + MODEL))
        before = snapshot(root)
        rc, _, err = run(["apply", "--dry-run", "--root", str(root)], capsys)
        check(rc, err)
        assert snapshot(root) == before, "--dry-run changed the host"
        rc2, _, err2 = run(["apply", "--root", str(root)], capsys)
        check(rc2, err2)
        if rc2 == 2:
            assert snapshot(root) == before, f"a refused configuration changed the host: {err2}"
        rc3, out3, err3 = run(["status", "--json", "--root", str(root)], capsys)
        assert rc3 in (0, 1, 2) and "Traceback" not in err3
        if rc3 == 2 and not err3:  # the problem is in the report itself
            assert json.loads(out3)["problems"], out3
