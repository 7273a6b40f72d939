"""Day two, the pure parts: what counts as a change since a server started
(startrecord), where its /health is (health), and the restart gate's reading
of the unit's states (restarts.gate) against a scripted systemd. The real
restarts, under a real systemd, are in test_systemd.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hugepage_agent import health, restarts, startrecord, unitfiles
from hugepage_agent.config import Config, ModelConfig, ServerConfig
from hugepage_agent.host import Host
from hugepage_agent.systemd import UnitState


def cfg_with(binary: str, m: ModelConfig) -> Config:
    return Config(server=ServerConfig(binary=binary), models=(m,))


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    model, binary = tmp_path / "m.gguf", tmp_path / "llama-server"
    model.write_bytes(b"GGUF" + bytes(100))
    binary.write_bytes(b"\x7fELF")
    return str(model), str(binary)


def record_for(tmp_path: Path, model: str, binary: str, args: tuple[str, ...],
               env: dict[str, str]) -> dict[str, object]:
    m = ModelConfig(name="m", path=model, size=104, args=args)
    host = Host(str(tmp_path / "root"))
    dropin = host.path(unitfiles.dropin_path(unitfiles.unit_for(m)))
    dropin.parent.mkdir(parents=True)
    dropin.write_text(unitfiles.render_dropin(m, env))
    mf = unitfiles.ModelFile(binary, model, args, None)
    return startrecord.make(host, mf, unitfiles.unit_for(m), {"INVOCATION_ID": "ab12"})


def test_nothing_changed_is_no_change(tmp_path: Path, files: tuple[str, str]) -> None:
    model, binary = files
    env = {"LD_PRELOAD": "/l.so", "HUGEPAGE_WRAPPER_STRICT": "0"}
    rec = record_for(tmp_path, model, binary, ("-c", "4096"), env)
    m = ModelConfig(name="m", path=model, size=104, args=("-c", "4096"))
    assert rec["invocation"] == "ab12"
    assert startrecord.changes(rec, cfg_with(binary, m), m, env) == []


def test_each_kind_of_change_is_named(tmp_path: Path, files: tuple[str, str]) -> None:
    model, binary = files
    env = {"LD_PRELOAD": "/l.so", "HUGEPAGE_WRAPPER_STRICT": "0"}
    rec = record_for(tmp_path, model, binary, ("-c", "4096"), env)
    m = ModelConfig(name="m", path=model, size=104, args=("-c", "8192"))
    assert startrecord.changes(rec, cfg_with(binary, m), m, env) == [startrecord.ARGS]
    m = ModelConfig(name="m", path=model, size=104, args=("-c", "4096"))
    assert startrecord.changes(rec, cfg_with(binary, m), m,
                               {**env, "HUGEPAGE_WRAPPER_STRICT": "1"}) == [startrecord.WRAPPER]
    assert startrecord.changes(rec, cfg_with(binary + "2", m), m, env) == [startrecord.BINARY]
    # replaced at the same paths: a new quantization, an upgraded binary
    for path in (model, binary):
        os.replace(path, path + ".old")
        Path(path).write_bytes(Path(path + ".old").read_bytes())
    assert startrecord.changes(rec, cfg_with(binary, m), m, env) == [startrecord.MODEL_FILE,
                                                                      startrecord.BINARY]
    assert startrecord.describe([startrecord.ARGS, startrecord.MODEL_FILE]) == \
        "restart pending: args changed, model file changed"


def test_an_operators_unit_is_compared_on_its_file_and_settings(tmp_path: Path,
                                                                 files: tuple[str, str]) -> None:
    model, _ = files
    own = ModelConfig(name="m", path=model, size=104, unit="mine.service")
    host = Host(str(tmp_path / "root"))
    mf = unitfiles.parse_model_file(unitfiles.render_own_unit_file(own))
    rec = startrecord.make(host, mf, "mine.service", {})
    assert rec["binary"] is None and rec["config_args"] is None
    cfg = cfg_with("/nonexistent", own)
    assert startrecord.changes(rec, cfg, own, None) == []
    # no drop-in when it started: it ran without the wrapper's settings
    assert startrecord.changes(rec, cfg, own, {"LD_PRELOAD": "/l.so"}) == [startrecord.WRAPPER]


def test_a_record_counts_only_for_the_start_that_made_it(tmp_path: Path) -> None:
    host = Host(str(tmp_path))
    startrecord.write(host, "m", {"invocation": "ab12", "model": "/m"})
    assert startrecord.for_invocation(host, "m", "ab12") is not None
    assert startrecord.for_invocation(host, "m", "cd34") is None
    assert startrecord.for_invocation(host, "m", "") is None
    assert startrecord.for_invocation(host, "other", "ab12") is None


@pytest.mark.parametrize(("args", "url"), [
    (["--port", "8080"], "http://127.0.0.1:8080/health"),
    (["--host", "0.0.0.0", "--port=9000"], "http://127.0.0.1:9000/health"),
    (["--host", "::", "--port", "9000"], "http://[::1]:9000/health"),
    (["--host", "10.0.0.5", "--port", "1"], "http://10.0.0.5:1/health"),
    (["-c", "4096"], None),
    (["--port", "x"], None),
    (["--port", "70000"], None),
    (["--port"], None),
    (["--host", "/run/llama.sock", "--port", "8080"], None),
    (["--port", "8443", "--ssl-key-file", "k.pem"], None),
])
def test_the_health_endpoint_comes_from_the_arguments(args: list[str], url: str | None) -> None:
    ep = health.endpoint(args)
    assert (str(ep) if ep is not None else None) == url


def test_health_is_false_where_nothing_listens() -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    assert not health.healthy(health.Endpoint("127.0.0.1", port), timeout=1)


class Scripted:
    """A systemd whose unit goes through the given states, one per poll."""

    def __init__(self, states: list[UnitState]) -> None:
        self.states = states
        self.polls = 0

    def state(self, unit: str) -> UnitState:
        st = self.states[min(self.polls, len(self.states) - 1)]
        self.polls += 1
        return st


def st(active: str, sub: str, inv: str, restarts_: int = 0) -> UnitState:
    return UnitState("u.service", "loaded", active, sub, 1, "", inv, restarts_)


def run_gate(states: list[UnitState], timeout: float = 100.0) -> str | None:
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    return restarts.gate(Scripted(states), "u.service", None, "old",  # type: ignore[arg-type]
                         timeout=timeout, clock=lambda: now[0], sleep=sleep)


def test_the_gate_passes_a_unit_that_stays_active() -> None:
    assert run_gate([st("active", "running", "old"), st("deactivating", "stop-sigterm", "old"),
                     st("active", "running", "new")]) is None


def test_the_gate_fails_a_server_that_exits_and_is_restarted() -> None:
    why = run_gate([st("active", "running", "old"), st("active", "running", "new"),
                    st("activating", "auto-restart", "new")])
    assert why == "exited and is being restarted by systemd"
    why = run_gate([st("active", "running", "new"), st("active", "running", "new2", 1)])
    assert why == "exited and is being restarted by systemd"


def test_the_gate_fails_a_failed_unit_and_one_that_never_starts() -> None:
    assert run_gate([st("failed", "exit-code", "new")]) == "failed (exit-code)"
    assert run_gate([st("active", "running", "old")], timeout=10) == \
        "was not healthy within 10 s"
