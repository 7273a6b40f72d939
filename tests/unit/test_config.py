"""Configuration: every bad input exits 2 with a message naming the file and
the key, and changes nothing on the (fake) host."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hugepage_agent import config
from hugepage_agent.cli import main
from hugepage_agent.errors import ConfigError
from tests.faketree import make_tree, snapshot

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def model(tmp_path: Path) -> Path:
    p = tmp_path / "models" / "m.gguf"
    p.parent.mkdir()
    with open(p, "wb") as f:
        f.truncate(3 * 1024**3)  # sparse: 3 GiB
    return p


def run_apply(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str],
              *extra: str) -> tuple[int, str, Path]:
    root = tmp_path / "root"
    make_tree(root)
    cfg = tmp_path / "config.toml"
    cfg.write_text(text)
    before = snapshot(root)
    rc = main(["apply", "--root", str(root), "--config", str(cfg), *extra])
    err = capsys.readouterr().err
    assert snapshot(root) == before, "an invalid configuration changed the host"
    return rc, err, cfg


BAD = [
    ("[pool\nsize = 1", "invalid TOML"),
    ("[pool]\nsise = 5", "pool.sise: unknown key"),
    ("[pools]\nsize = 5", "pools: unknown section"),
    ("[pool]\npage_size = 2", "pool.page_size: expected a string"),
    ("[pool]\npage_size = \"4M\"", "pool.page_size: '4M' is not a supported page size"),
    ("[pool]\nsize = -5", "pool.size: a page count cannot be negative"),
    ("[pool]\nsize = \"-5G\"", "pool.size: a size cannot be negative"),
    ("[pool]\nsize = \"100T\"", "pool.size: the configured size needs"),
    ("[pool]\nsize = \"lots\"", "pool.size: 'lots' is not a size"),
    ("[pool]\nlimit = \"0%\"", "pool.limit: must be more than zero"),
    ("[pool]\nnodes = { 0 = \"60%\" }", "pool.nodes: the shares add up to 60%"),
    ("[pool]\nnodes = { 3 = \"100%\" }", "pool.nodes.3: NUMA node 3 is not online"),
    ("[thp]\nenabled = \"sometimes\"", "thp.enabled: 'sometimes' is not one of"),
    ("[thp]\ndefrag = true", "thp.defrag: expected a string"),
    ("[reserve]\ntimeout = \"soon\"", "reserve.timeout: 'soon' is not a duration"),
    ("[reserve]\ndrop_caches = \"yes\"", "reserve.drop_caches: expected true or false"),
    ("[wrapper]\nlog = \"loud\"", "wrapper.log: 'loud' is not one of"),
    ("[[model]]\nname = \"x\"\npath = \"/nonexistent/m.gguf\"",
     "model[0].path: model file '/nonexistent/m.gguf' cannot be used"),
    ("[[model]]\nname = \"x\"\npath = \"relative.gguf\"", "model[0].path: 'relative.gguf' is not"),
    ("[[model]]\nname = \"x\"", "model[0].path: missing"),
    ("[[model]]\nname = \"x\"\npath = \"/etc\"", "model[0].path: '/etc' is not a regular file"),
    ("[[model]]\nname = \"x\"\npath = \"/etc/hostname\"\nport = 3", "model[0].port: unknown key"),
    ("[[model]]\nname = \"x\"\npath = \"/etc/hostname\"\nargs = \"--port 8\"",
     "model[0].args: expected a list"),
    ("[[model]]\nname = \"x\"\npath = \"/etc/hostname\"\nargs = [\"--port\", 8]",
     "model[0].args[1]: expected a string"),
    ("[[model]]\nname = \"x\"\npath = \"/etc/hostname\"\nunit = \"foo bar\"",
     "model[0].unit: 'foo bar' is not a valid .service unit name"),
    # inputs that used to end in a traceback, a hang or a silently wrong value
    ("[pool]\nsize = \"" + "9" * 400 + "G\"", "pool.size: '99999"),
    ("[pool]\nsize = " + "9" * 300, "pool.size: the page count is too large"),
    ("[reserve]\ntimeout = " + "9" * 400, "reserve.timeout: the duration is too large"),
    ("[reserve]\ntimeout = nan", "reserve.timeout: a duration must be a finite number"),
    ("[reserve]\ntimeout = inf", "reserve.timeout: a duration must be a finite number"),
    ("[metrics]\ninterval = nan", "metrics.interval: a duration must be a finite number"),
    ("[metrics]\ninterval = 1e12", "metrics.interval: from 1s to 24h"),
    ("[pool]\nnodes = { \"\u00b2\" = \"100%\" }", "pool.nodes.\u00b2: a NUMA node number"),
    ("[pool]\nnodes = { \"\u0660\" = \"100%\" }", "pool.nodes.\u0660: a NUMA node number"),
    ("a = " + "[" * 5000 + "]" * 5000, "invalid TOML: nested too deeply"),
    ("[[model]]\nname = \"x\"\npath = \"/etc/host\\u0000name\"",
     "model[0].path: contains a NUL character"),
    *[(f"[[model]]\nname = \"x\"\npath = \"/etc/hostname\"\nunit = \"{u}\"",
       f"model[0].unit: '{u}' must not be managed")
      for u in ("hugepage-agent.service", "dbus.service", "user@1000.service",
                "systemd-journald.service")],
    ("[[model]]\nname = \"x\"\npath = \"/etc/hostname\"\nunit = \"a.service\\n\"",
     "is not a valid .service unit name"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_input_exits_2_naming_file_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               text: str, message: str) -> None:
    rc, err, cfg = run_apply(tmp_path, text, capsys)
    assert rc == 2
    assert str(cfg) in err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize("name", ["a b", "x'y", 'q"r', "50%", "new\nline", "$HOME", "back\\slash",
                                  "-dash", "a/b", "", "x" * 65])
def test_hostile_model_names_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         model: Path, name: str) -> None:
    text = f"[[model]]\nname = {toml_str(name)}\npath = \"{model}\"\n"
    rc, err, _ = run_apply(tmp_path, text, capsys)
    assert rc == 2 and "model[0].name" in err and "not a valid model name" in err


def toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def test_duplicate_model_name(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              model: Path) -> None:
    m = f"[[model]]\nname = \"a\"\npath = \"{model}\"\n"
    rc, err, _ = run_apply(tmp_path, m + m, capsys)
    assert rc == 2 and "model[1].name: duplicate model name 'a'" in err


def test_auto_reservation_above_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      model: Path) -> None:
    text = f"[pool]\nlimit = \"2G\"\n[[model]]\nname = \"a\"\npath = \"{model}\"\n"
    rc, err, _ = run_apply(tmp_path, text, capsys)
    assert rc == 2 and "pool.limit" in err and "above the limit of 2.00 GiB" in err


def test_dropins_apply_in_name_order_and_errors_name_the_dropin(tmp_path: Path,
                                                                model: Path) -> None:
    root = tmp_path / "root"
    host = make_tree(root)
    d = root / "etc/hugepage-agent/config.d"
    d.mkdir(parents=True)
    m = f"[[model]]\nname = \"a\"\npath = \"{model}\"\n"
    (root / "etc/hugepage-agent/config.toml").write_text(
        f"[pool]\nsize = 100\n{m}args = [\"-t\", \"1\"]\n")
    (d / "20-b.toml").write_text("[pool]\nsize = 300\n")
    (d / "10-a.toml").write_text(f"[pool]\nsize = 200\n{m}args = [\"-t\", \"2\"]\n")
    cfg = config.load(host)
    assert cfg.pool.size is not None and cfg.pool.size.pages == 300
    assert [m.args for m in cfg.models] == [("-t", "2")]
    assert cfg.origin("pool.size") == "/etc/hugepage-agent/config.d/20-b.toml"
    (d / "30-bad.toml").write_text("[thp]\nenabled = 3\n")
    with pytest.raises(ConfigError) as e:
        config.load(host)
    assert e.value.file == "/etc/hugepage-agent/config.d/30-bad.toml"
    assert e.value.key == "thp.enabled"


def test_no_config_gives_defaults(tmp_path: Path) -> None:
    cfg = config.load(make_tree(tmp_path / "root"))
    assert cfg.models == () and cfg.pool.size is None and cfg.thp.enabled == "never"


def test_shipped_configs_are_valid(tmp_path: Path, model: Path) -> None:
    host = make_tree(tmp_path / "root")
    config.load(host, str(REPO / "config" / "default.toml"))
    example = (REPO / "config" / "example.toml").read_text()
    example = example.replace("/srv/models/qwen3-30b.gguf", str(model))
    f = tmp_path / "example.toml"
    f.write_text(example)
    cfg = config.load(host, str(f))
    assert cfg.models[0].name == "qwen3-30b" and cfg.models[0].size == 3 * 1024**3
    assert cfg.models[0].args == ("--port", "8080", "--threads", "16")


def test_config_that_is_not_utf8_or_not_a_file(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    make_tree(root)
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"# caf\xe9\n[pool]\nsize = 2\n")
    rc = main(["apply", "--dry-run", "--root", str(root), "--config", str(bad)])
    assert rc == 2 and "is not UTF-8 text" in capsys.readouterr().err
    confd = root / "etc/hugepage-agent/config.d"
    confd.mkdir(parents=True)
    (confd / "50-x.toml").write_bytes(b"[pool]\nsize = \"\xff\"\n")
    rc = main(["apply", "--dry-run", "--root", str(root)])
    assert rc == 2 and "50-x.toml is not UTF-8 text" in capsys.readouterr().err
    (confd / "50-x.toml").unlink()
    os.mkfifo(confd / "60-fifo.toml")  # a reader that opened it would hang
    rc = main(["apply", "--dry-run", "--root", str(root)])
    assert rc == 2 and "60-fifo.toml is not a regular file" in capsys.readouterr().err


def test_malformed_model_file_is_an_error_not_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    make_tree(root)
    models = root / "var/lib/hugepage-agent/models"
    models.mkdir(parents=True)
    for text in ("[]", '"x"', "1", "{}", "not json"):
        (models / "m.json").write_text(text)
        rc = main(["run-model", "m", "--root", str(root)])
        err = capsys.readouterr().err
        assert rc == 2 and "m.json" in err and "Traceback" not in err, (text, err)
    rc = main(["run-model", "m\n", "--root", str(root)])
    assert rc == 2 and "not a valid model name" in capsys.readouterr().err


def test_missing_explicit_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    make_tree(root)
    rc = main(["status", "--root", str(root), "--config", str(tmp_path / "nope.toml")])
    out = capsys.readouterr()
    assert rc == 2 and "nope.toml: cannot read" in out.out + out.err
    rc = main(["apply", "--root", str(root), "--config", str(tmp_path / "nope.toml")])
    assert rc == 2 and "nope.toml: cannot read" in capsys.readouterr().err
