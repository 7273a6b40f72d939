"""The daemon under a real systemd, booted in a container (tests/container.py):
boot-time reservation, model units with the wrapper preloaded, D-Bus status,
reload, stop, drop-in removal, strict mode and kernel memory events.

The container shares the host's kernel: the pool and THP it changes are the
host's, saved and restored around the module."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IS_ROOT, MAPTOOL, REPO, memfd_hugetlb_bytes, read_int
from tests.container import Container, booted

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root: boots systemd-nspawn")

MIB = 1 << 20
MODEL_SIZE = 300 * MIB + 4321
# The copy keeps the whole huge pages; the last, partial one is in 4 KiB pages
# as the program would see it (docs/wrapper-semantics.md).
IN_HUGE_PAGES = MODEL_SIZE // (2 * MIB) * 2 * MIB
NR = Path("/proc/sys/vm/nr_hugepages")
CONFIG = "/etc/hugepage-agent/config.toml"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
HOSTILE_ARGS = ["--port", "8082", "a b", 'quote"d', "it's", "50%", "%i", "$HOME", "${X}",
                "back\\slash", "new\nline", ""]


def config_text(models: list[tuple[str, list[str]]], extra: str = "") -> str:
    text = ('[pool]\nheadroom = 4\n[wrapper]\nmin_size = "64M"\n'
            '[server]\nbinary = "/usr/local/bin/fakeserver"\n[metrics]\ninterval = "1s"\n'
            + extra)
    for name, args in models:
        text += (f'\n[[model]]\nname = "{name}"\npath = "/srv/models/{name}.gguf"\n'
                 f"args = {json.dumps(args)}\n")
    return text


def pages(size: int) -> int:
    return -(-size // (2 * MIB))


@pytest.fixture(scope="module")
def ct(wrapper_build: Path) -> Iterator[Container]:
    try:
        subprocess.run(["systemd-nspawn", "--version"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.fail("systemd-nspawn is missing: scripts/deps.sh installs systemd-container")

    def setup(c: Container) -> None:
        models = c.path("/srv/models")
        models.mkdir(parents=True)
        for name in ("tiny", "odd", "big"):
            subprocess.run([str(MAPTOOL), "mkfile", str(models / f"{name}.gguf"),
                            str(MODEL_SIZE)], check=True)
        c.path(CONFIG).write_text(config_text([("tiny", ["--port", "8080"])]))
        c.path(TEXTFILE_DIR).mkdir(parents=True)

    with booted("hpa-test", setup, stop_units=["llama-server@*.service"]) as c:
        yield c


def wait_for(pred: Callable[[], object], timeout: float = 30.0,
             what: str | Callable[[], str] = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")


def started(ct: Container, unit: str) -> str:
    return f"{unit} to start:\n{ct.journal(unit)}\n{ct.journal('hugepage-agent.service')}"


def main_pid(ct: Container, unit: str) -> int:
    return int(ct.prop(unit, "MainPID") or 0)


def test_units_pass_systemd_analyze_verify(ct: Container) -> None:
    # --man=no: the container has no man(1); the pages' presence is checked here
    r = ct.run("systemd-analyze", "verify", "--man=no",
               "/usr/lib/systemd/system/hugepage-agent.service",
               "/usr/lib/systemd/system/llama-server@.service", check=False)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    for unit in ("hugepage-agent.service", "llama-server@.service"):
        doc = ct.path(f"/usr/lib/systemd/system/{unit}").read_text()
        assert "Documentation=man:hugepage-agent(8) man:hugepage-agent.toml(5)" in doc
    assert ct.path("/usr/share/man/man8/hugepage-agent.8").is_file()
    assert ct.path("/usr/share/man/man5/hugepage-agent.toml.5").is_file()


def test_start_is_active_only_after_the_pool_is_reserved(ct: Container) -> None:
    target = pages(MODEL_SIZE) + 4
    ct.systemctl("start", "hugepage-agent.service")  # Type=notify: returns once READY=1
    assert ct.prop("hugepage-agent.service", "ActiveState") == "active"
    assert read_int(NR) == target
    log = ct.journal("hugepage-agent.service")
    reserved = log.find(f"pool {target} of {target}")
    started = log.find("Started")
    assert 0 <= reserved < started, log
    assert "met" in ct.prop("hugepage-agent.service", "StatusText")
    sysctl = ct.path("/etc/sysctl.d/80-hugepage-agent.conf").read_text()
    assert f"vm.nr_hugepages = {target}" in sysctl
    assert "[never]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()


def test_model_unit_runs_with_the_wrapper_in_huge_pages(ct: Container) -> None:
    unit = "llama-server@tiny.service"
    # MainPID is known from the fork, before systemd has set the sandbox up and exec'd
    wait_for(lambda: main_pid(ct, unit) > 0 and b"fakeserver" in ct.proc(
        main_pid(ct, unit), "cmdline").read_bytes(), what=lambda: started(ct, unit))
    pid = main_pid(ct, unit)
    env = ct.proc(pid, "environ").read_bytes().split(b"\0")
    assert b"LD_PRELOAD=/usr/lib/hugepage-agent/libhugepage-wrapper.so" in env
    # this start's choice (ExecStartPre) was made without the wrapper, which would
    # have copied the model file when the check mapped it: only the server loads it
    wait_for(lambda: "fakeserver: serving" in ct.journal(unit), what="the server")
    loads = [line for line in ct.journal(unit).splitlines()
             if "hugepage-wrapper[" in line and ": loaded " in line]
    assert loads and all(f"hugepage-wrapper[{pid}]" in line for line in loads), loads
    assert b"HUGEPAGE_WRAPPER_MIN_SIZE=67108864" in env
    wait_for(lambda: memfd_hugetlb_bytes(ct.proc(pid, "smaps"), "/srv/models/tiny.gguf")
             >= IN_HUGE_PAGES,
             what="the model in huge pages")
    dropin = ct.path("/etc/systemd/system/llama-server@tiny.service.d/50-hugepage-agent.conf")
    assert dropin.read_text().startswith("# Generated by hugepage-agent")
    assert "After=hugepage-agent.service" in dropin.read_text()


def test_status_over_dbus_shows_the_unit(ct: Container) -> None:
    bus = ct.bus()
    data = json.loads(bus.get("net.hugepageagent.Agent1", "/net/hugepageagent/Agent1").Status())
    m = next(m for m in data["models"] if m["name"] == "tiny")
    assert m["unit"] == "llama-server@tiny.service" and m["active"] is True
    assert m["pid"] == main_pid(ct, "llama-server@tiny.service")
    assert m["hugetlb_bytes"] >= IN_HUGE_PAGES and m["verdict"] == "loaded", m
    # the CLI uses the daemon, and anyone may read it
    r = ct.run("hugepage-agent", "status", "--json", user="65534", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    cli = json.loads(r.stdout)
    assert [x["unit"] for x in cli["models"]] == ["llama-server@tiny.service"]
    # but only root may change things
    r = ct.run("busctl", "call", "net.hugepageagent.Agent1", "/net/hugepageagent/Agent1",
               "net.hugepageagent.Agent1", "Reload", user="65534", check=False)
    assert r.returncode != 0 and ("Access" in r.stderr or "denied" in r.stderr.lower())


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_daemon_writes_metrics_for_node_exporter(ct: Container) -> None:
    prom = ct.path(f"{TEXTFILE_DIR}/hugepage_agent.prom")
    model = (("model", "tiny"), ("unit", "llama-server@tiny.service"))

    def covered() -> bool:
        if not prom.exists():
            return False
        s = metric_samples(prom.read_text())
        return s.get(("hugepage_agent_model_hugetlb_bytes", model), 0) >= IN_HUGE_PAGES

    wait_for(covered, what=lambda: f"metrics with the model in huge pages: "
             f"{prom.read_text() if prom.exists() else 'no file'}")
    s = metric_samples(prom.read_text())
    pool = (("node", "all"), ("page_size_kb", "2048"))
    assert s[("hugepage_agent_pool_pages", (*pool, ("state", "total")))] == read_int(NR)
    assert s[("hugepage_agent_pool_target_pages", pool)] == pages(MODEL_SIZE) + 4
    assert s[("hugepage_agent_pool_shortfall_pages", pool)] == 0
    assert s[("hugepage_agent_model_bytes", model)] == MODEL_SIZE
    assert s[("hugepage_agent_model_unit_active", model)] == 1
    assert s[("hugepage_agent_thp_mode", (("knob", "enabled"), ("mode", "never")))] == 1
    assert s[("hugepage_agent_reserve_rounds", ())] >= 1
    assert not list(prom.parent.glob(".*")), "temporary files left behind"
    # every agent metric the shipped Prometheus rules use is in the real file
    rules = (REPO / "packaging/prometheus/hugepage-agent.rules.yml").read_text()
    used = set(re.findall(r"(?<![:\w])hugepage_agent_[a-z_]+", rules))
    assert used and used <= {name for name, _ in s}, sorted(used - {name for name, _ in s})


def test_model_server_runs_unprivileged_and_sandboxed(ct: Container) -> None:
    unit = "llama-server@tiny.service"
    pid = main_pid(ct, unit)
    st = {k: v.split() for k, v in (line.split(":", 1) for line in
                                    ct.proc(pid, "status").read_text().splitlines())}
    uid = int(st["Uid"][0])
    assert uid != 0 and ct.run("id", "-un", str(uid)).stdout.strip() == "hugepage-llama"
    assert int(st["CapEff"][0], 16) == 0 and int(st["CapBnd"][0], 16) == 0
    assert st["NoNewPrivs"] == ["1"] and st["Seccomp"] == ["2"]
    # and the wrapper still serves the model from huge pages as that user
    assert memfd_hugetlb_bytes(ct.proc(pid, "smaps"), "/srv/models/tiny.gguf") >= IN_HUGE_PAGES
    # its arguments (an --api-key, perhaps) are readable by root and its group only
    info = ct.run("stat", "-c", "%a %U %G", "/var/lib/hugepage-agent/models/tiny.json").stdout
    assert info.split() == ["640", "root", "hugepage-llama"]


def exposure(ct: Container, unit: str) -> float:
    out = ct.run("systemd-analyze", "security", "--no-pager", unit).stdout
    return float(out.rsplit("Overall exposure level for", 1)[1].split(":")[1].split()[0])


def test_systemd_analyze_security_scores(ct: Container) -> None:
    model, agent = exposure(ct, "llama-server@tiny.service"), exposure(ct, "hugepage-agent.service")
    print(f"\nsystemd-analyze security: llama-server@tiny {model}, hugepage-agent {agent}")
    assert model <= 2.5 and agent <= 4.5


def test_a_model_its_server_cannot_read_is_reported_not_started(ct: Container) -> None:
    secret = ct.path("/srv/models/secret.gguf")
    subprocess.run([str(MAPTOOL), "mkfile", str(secret), str(4 * MIB)], check=True)
    secret.chmod(0o600)
    good = ct.path(CONFIG).read_text()
    try:
        ct.path(CONFIG).write_text(config_text([("tiny", ["--port", "8080"]),
                                                ("secret", ["--port", "8081"])]))
        ct.systemctl("reload", "hugepage-agent.service")
        log = ct.journal("hugepage-agent.service")
        assert "model secret: not starting llama-server@secret.service" in log, log
        assert "/srv/models/secret.gguf is not readable by hugepage-llama" in log
        assert ct.prop("llama-server@secret.service", "ActiveState") == "inactive"
        dry = ct.run("hugepage-agent", "apply", "--dry-run", check=False).stdout
        assert "warning: model secret" in dry and "not readable by hugepage-llama" in dry
    finally:
        ct.path(CONFIG).write_text(good)
        ct.systemctl("reload", "hugepage-agent.service")
        secret.unlink()


def test_metrics_directory_that_another_user_controls_is_refused(ct: Container) -> None:
    unsafe = ct.path("/srv/prom/textfile")
    unsafe.mkdir(parents=True)
    os.chown(unsafe.parent, 65534, 65534)  # /srv/prom: another user's directory
    good = ct.path(CONFIG).read_text()
    try:
        ct.path(CONFIG).write_text(config_text([("tiny", ["--port", "8080"])]).replace(
            "[metrics]\n", '[metrics]\ntextfile_dir = "/srv/prom/textfile"\n'))
        ct.systemctl("reload", "hugepage-agent.service")
        dropin = ct.path("/etc/systemd/system/hugepage-agent.service.d/50-hugepage-agent.conf")
        assert 'ReadWritePaths="-/srv/prom/textfile"' in dropin.read_text()
        wait_for(lambda: "not writing into /srv/prom/textfile" in
                 ct.journal("hugepage-agent.service"), what="the refusal in the journal")
        assert "/srv/prom is owned by uid 65534, not root" in ct.journal("hugepage-agent.service")
        assert not (unsafe / "hugepage_agent.prom").exists()
    finally:
        ct.path(CONFIG).write_text(good)
        ct.systemctl("reload", "hugepage-agent.service")
    assert not ct.path("/etc/systemd/system/hugepage-agent.service.d").exists()


def test_configured_metrics_directory_is_writable_in_the_sandbox(ct: Container) -> None:
    ct.path("/srv/metrics").mkdir(mode=0o755)
    good = ct.path(CONFIG).read_text()
    prom = ct.path("/srv/metrics/hugepage_agent.prom")
    try:
        ct.path(CONFIG).write_text(good.replace(
            "[metrics]\n", '[metrics]\ntextfile_dir = "/srv/metrics"\n'))
        ct.systemctl("reload", "hugepage-agent.service")
        ct.systemctl("restart", "hugepage-agent.service")  # the new ReadWritePaths
        wait_for(prom.exists, what=lambda: ct.journal("hugepage-agent.service"))
        assert "hugepage_agent_pool_pages" in prom.read_text()
    finally:
        ct.path(CONFIG).write_text(good)
        ct.systemctl("restart", "hugepage-agent.service")


def test_status_answers_while_a_long_reload_runs(ct: Container) -> None:
    """A reload that takes long (here: a removed model that takes 6 s to stop)
    runs off the main loop: Status() answers meanwhile, systemd sees the
    reload (RELOADING=1, then READY=1), and D-Bus Reload() and SIGHUP take
    the same path."""
    good = ct.path(CONFIG).read_text()
    slow = ct.path("/srv/models/slow.gguf")
    subprocess.run([str(MAPTOOL), "mkfile", str(slow), str(4 * MIB)], check=True)
    ct.path(CONFIG).write_text(config_text([("tiny", ["--port", "8080"]),
                                            ("slow", ["--stop-delay", "6"])]))
    ct.systemctl("reload", "hugepage-agent.service")
    wait_for(lambda: main_pid(ct, "llama-server@slow.service") > 0, what="the slow model")
    ct.path(CONFIG).write_text(good)
    agent_pid = main_pid(ct, "hugepage-agent.service")
    reload_rc: list[int] = []
    t = threading.Thread(target=lambda: reload_rc.append(
        ct.systemctl("reload", "hugepage-agent.service", check=False).returncode))
    t.start()
    try:
        wait_for(lambda: ct.prop("hugepage-agent.service", "ActiveState") == "reloading",
                 timeout=5, what="the agent to be reloading")
        bus = ct.bus()
        proxy = bus.get("net.hugepageagent.Agent1", "/net/hugepageagent/Agent1")
        times = []
        for _ in range(3):
            t0 = time.monotonic()
            data = json.loads(proxy.Status())
            times.append(time.monotonic() - t0)
            assert "models" in data
            # answered while the reload still runs (it waits 6 s for slow to stop),
            # not after it: a state, not a time, so a busy machine cannot flake it
            assert ct.prop("hugepage-agent.service", "ActiveState") == "reloading"
        print(f"\nStatus() during a reload: {', '.join(f'{x:.3f}' for x in times)} s")
    finally:
        t.join(timeout=60)
    assert reload_rc == [0]
    assert ct.prop("hugepage-agent.service", "ActiveState") == "active"
    assert main_pid(ct, "hugepage-agent.service") == agent_pid
    assert ct.prop("llama-server@slow.service", "ActiveState") == "inactive"
    slow.unlink()
    # SIGHUP: the same path, and the handler is still there for the next one
    for _ in range(2):
        ct.systemctl("kill", "-s", "HUP", "hugepage-agent.service")
        wait_for(lambda: "pool" in ct.prop("hugepage-agent.service", "StatusText") and
                 ct.prop("hugepage-agent.service", "ActiveState") == "active", timeout=20,
                 what="the SIGHUP reload")
    time.sleep(1)
    assert main_pid(ct, "hugepage-agent.service") == agent_pid
    assert ct.journal("hugepage-agent.service").count("reloaded:") >= 3


def test_hostile_arguments_reach_the_server_exactly(ct: Container) -> None:
    ct.path(CONFIG).write_text(config_text([("tiny", ["--port", "8080"]), ("odd", HOSTILE_ARGS)]))
    pid_before = main_pid(ct, "hugepage-agent.service")
    ct.systemctl("reload", "hugepage-agent.service")
    unit = "llama-server@odd.service"
    wait_for(lambda: main_pid(ct, unit) > 0, what=lambda: started(ct, unit))
    pid = main_pid(ct, unit)
    argv_file = ct.proc(pid, f"root/tmp/fakeserver.{pid}.argv")  # its private /tmp
    wait_for(argv_file.exists, what="the server's argv")
    argv = argv_file.read_bytes().split(b"\0")[:-1]
    assert argv == [b"/usr/local/bin/fakeserver", b"--model", b"/srv/models/odd.gguf",
                    *(a.encode() for a in HOSTILE_ARGS)]
    assert main_pid(ct, "hugepage-agent.service") == pid_before


def test_reload_with_a_broken_config_keeps_the_daemon_running(ct: Container) -> None:
    good = ct.path(CONFIG).read_text()
    pid = main_pid(ct, "hugepage-agent.service")
    ct.path(CONFIG).write_text(good + "\n[pool]\nsize = \"lots\"\n")
    try:
        r = ct.systemctl("reload", "hugepage-agent.service", check=False)
        assert r.returncode != 0  # the operator is told at once
        assert "keeping the previous configuration" in ct.journal("hugepage-agent.service")
        assert ct.prop("hugepage-agent.service", "ActiveState") == "active"
        assert main_pid(ct, "hugepage-agent.service") == pid
        log = ct.journal("hugepage-agent.service")
        assert f"{CONFIG}: pool" in log or "invalid TOML" in log
    finally:
        ct.path(CONFIG).write_text(good)


def test_removing_a_model_removes_its_dropin_and_stops_it(ct: Container) -> None:
    dropin = ct.path("/etc/systemd/system/llama-server@odd.service.d/50-hugepage-agent.conf")
    assert dropin.exists()
    ct.path(CONFIG).write_text(config_text([("tiny", ["--port", "8080"])]))
    ct.systemctl("reload", "hugepage-agent.service")
    wait_for(lambda: not dropin.exists(), what="the drop-in to go")
    assert not ct.path("/var/lib/hugepage-agent/models/odd.json").exists()
    assert ct.path("/var/lib/hugepage-agent/models/tiny.json").exists()
    wait_for(lambda: ct.prop("llama-server@odd.service", "ActiveState") == "inactive",
             what="the removed model to stop")


def test_sighup_reloads_too(ct: Container) -> None:
    pid = main_pid(ct, "hugepage-agent.service")
    before = ct.journal("hugepage-agent.service").count("reloaded:")
    ct.run("kill", "-HUP", str(pid))
    wait_for(lambda: ct.journal("hugepage-agent.service").count("reloaded:") > before,
             what="the SIGHUP reload")
    assert main_pid(ct, "hugepage-agent.service") == pid


def test_stop_leaves_the_pool_and_thp(ct: Container) -> None:
    before = read_int(NR)
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    ct.systemctl("stop", "hugepage-agent.service")
    assert read_int(NR) == before > 0
    assert Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text() == thp
    assert "left as they are" in ct.journal("hugepage-agent.service")
    ct.systemctl("start", "hugepage-agent.service")


def test_short_pool_strict_fails_the_unit_and_fallback_is_reported(ct: Container) -> None:
    # a pool sized for tiny only, and a second model started by hand
    sized = f"[pool]\nsize = {pages(MODEL_SIZE) + 4}\n"
    both = config_text([("tiny", ["--port", "8080"]), ("big", [])]).replace(
        "[pool]\nheadroom = 4\n", sized).replace(
        'name = "big"\n', 'name = "big"\nautostart = false\n')
    ct.path(CONFIG).write_text(both.replace("[wrapper]\n", "[wrapper]\nstrict = true\n"))
    ct.systemctl("reload", "hugepage-agent.service")
    unit = "llama-server@big.service"
    ct.systemctl("start", unit, check=False)
    wait_for(lambda: ct.prop(unit, "Result") != "success",
             what=lambda: f"the strict unit to fail: {ct.journal(unit)}")
    log = ct.journal(unit)
    assert "strict mode" in log and "/srv/models/big.gguf" in log, log
    ct.systemctl("stop", unit, check=False)
    ct.systemctl("reset-failed", unit, check=False)

    # without strict mode the server starts on the file mapping, and status says why
    ct.path(CONFIG).write_text(both)
    ct.systemctl("reload", "hugepage-agent.service")
    ct.systemctl("start", unit)
    wait_for(lambda: main_pid(ct, unit) > 0, what="the fallback server")

    def big_status() -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
        r = ct.run("hugepage-agent", "status", "--json", check=False)
        return r, next(m for m in json.loads(r.stdout)["models"] if m["name"] == "big")

    wait_for(lambda: big_status()[1]["verdict"] != "model not mapped yet",
             what="the server to map its model")
    r, big = big_status()
    assert r.returncode == 1
    assert big["hugetlb_bytes"] == 0 and big["wrapper_loaded"] is True
    assert big["verdict"].startswith("fell back to the file mapping (huge page pool short: "
                                     f"need {pages(MODEL_SIZE)} x 2 MiB pages"), big
    ct.systemctl("stop", unit)
    ct.path(CONFIG).write_text(config_text([("tiny", ["--port", "8080"])]))
    ct.systemctl("reload", "hugepage-agent.service")


@contextlib.contextmanager
def big_in_own_unit(ct: Container, unit: str, exec_start: str) -> Iterator[None]:
    """Model "big" (its file /srv/models/big.gguf) served by an operator's own
    unit running `exec_start`, beside tiny; all of it undone afterwards."""
    unit_file = ct.path(f"/etc/systemd/system/{unit}")
    unit_file.write_text(f"[Service]\nExecStart={exec_start}\n")
    text = config_text([("tiny", ["--port", "8080"]), ("big", [])]).replace(
        'name = "big"\n', f'name = "big"\nunit = "{unit}"\n')
    ct.path(CONFIG).write_text(text)
    try:
        ct.systemctl("daemon-reload")
        r = ct.systemctl("reload", "hugepage-agent.service", check=False)
        assert r.returncode == 0, ct.journal("hugepage-agent.service")[-2000:]
        yield
    finally:
        ct.path(CONFIG).write_text(config_text([("tiny", ["--port", "8080"])]))
        ct.systemctl("reload", "hugepage-agent.service", check=False)
        ct.systemctl("stop", unit, check=False)
        unit_file.unlink()
        ct.systemctl("daemon-reload", check=False)


def test_a_supervisor_units_server_is_found_in_its_cgroup(ct: Container) -> None:
    """An operator's own unit whose main process is a small supervisor (a shell)
    that starts the server as a child and waits, as ollama or a wrapper script
    does: status measures the child, found in the unit's cgroup, and says so."""
    unit = "supervised.service"
    with big_in_own_unit(ct, unit, "/bin/sh -c '/usr/local/bin/fakeserver "
                         "--model /srv/models/big.gguf --port 8081 & wait'"):

        def sup() -> dict[str, Any]:
            r = ct.run("hugepage-agent", "status", "--json", check=False)
            return next(m for m in json.loads(r.stdout)["models"] if m["name"] == "big")

        wait_for(lambda: sup()["verdict"] == "loaded", what=lambda: f"{sup()}")
        m = sup()
        shell = main_pid(ct, unit)
        assert ct.proc(shell, "comm").read_text().strip() == "sh"
        assert m["main_pid"] == shell and m["pid"] != shell, m
        assert ct.proc(m["pid"], "comm").read_text().strip() == "fakeserver"
        stat = ct.proc(m["pid"], "stat").read_text()
        assert int(stat.rsplit(")", 1)[1].split()[1]) == shell  # the shell's child
        assert [p["pid"] for p in m["processes"]] == [m["pid"]]
        assert m["processes"][0]["hugetlb_bytes"] >= IN_HUGE_PAGES
        assert m["hugetlb_bytes"] >= IN_HUGE_PAGES and m["coverage"] >= 0.99, m
        text_out = ct.run("hugepage-agent", "status", check=False).stdout
        assert f"process {m['pid']} (fakeserver, main process {shell})" in text_out, text_out
        prom = ct.path(f"{TEXTFILE_DIR}/hugepage_agent.prom")

        def metric(name: str) -> float:
            return next((float(x.split()[-1]) for x in prom.read_text().splitlines()
                         if x.startswith(f'hugepage_agent_{name}{{model="big"')), -1.0)

        # the daemon rewrites the file every second (metrics.interval = 1s)
        wait_for(lambda: metric("model_hugetlb_bytes") >= IN_HUGE_PAGES,
                 what="the supervised model's huge pages in the metrics")
        assert metric("model_coverage_ratio") >= 0.99


def test_memory_block_offline_and_back_is_seen(ct: Container) -> None:
    blocks = sorted(Path("/sys/devices/system/memory").glob("memory[0-9]*"),
                    key=lambda p: int(p.name[6:]), reverse=True)
    moved = None
    for b in blocks[:40]:
        state = b / "state"
        if not (b / "removable").exists() or state.read_text().strip() != "online":
            continue
        try:
            state.write_text("offline")
            moved = b
            break
        except OSError:
            continue
    if moved is None:
        pytest.skip("the kernel let no memory block go offline (EBUSY/EIO on each tried)")
    try:
        time.sleep(0.2)
    finally:
        (moved / "state").write_text("online")
    wait_for(lambda: f"{moved.name}" in ct.journal("hugepage-agent.service")
             and "memory event" in ct.journal("hugepage-agent.service"),
             what="the daemon to see the memory event")
    assert ct.prop("hugepage-agent.service", "ActiveState") == "active"


# -- day two: changes reach the running servers ---------------------------------

TINY = "llama-server@tiny.service"


def model_status(ct: Container, name: str) -> tuple[int, dict[str, Any]]:
    r = ct.run("hugepage-agent", "status", "--json", check=False)
    return r.returncode, next(m for m in json.loads(r.stdout)["models"] if m["name"] == name)


def cmdline(ct: Container, pid: int) -> list[str]:
    return ct.proc(pid, "cmdline").read_bytes().decode().split("\0")[:-1]


def reload(ct: Container) -> subprocess.CompletedProcess[str]:
    return ct.run("hugepage-agent", "reload", check=False)


def serving(ct: Container, unit: str) -> bool:
    pid = main_pid(ct, unit)
    return pid > 0 and ct.prop(unit, "ActiveState") == "active" and \
        b"fakeserver" in ct.proc(pid, "cmdline").read_bytes()


def test_a_changed_argument_restarts_the_server_once_healthy(ct: Container) -> None:
    ct.path(CONFIG).write_text(config_text([("tiny", ["--port", "8080"])]))
    assert reload(ct).returncode == 0
    wait_for(lambda: serving(ct, TINY), what=lambda: started(ct, TINY))
    wait_for(lambda: model_status(ct, "tiny")[1]["verdict"] == "loaded",
             what=lambda: f"{model_status(ct, 'tiny')}")
    old = main_pid(ct, TINY)
    ct.path(CONFIG).write_text(config_text([("tiny", ["--port", "8080", "-c", "8192"])]))
    try:
        r = reload(ct)
        assert r.returncode == 0, r.stdout + r.stderr + ct.journal("hugepage-agent.service")
        new = main_pid(ct, TINY)
        assert new != old and cmdline(ct, new)[-2:] == ["-c", "8192"], cmdline(ct, new)
        log = ct.journal("hugepage-agent.service")
        assert "model tiny: args changed; restarting llama-server@tiny.service" in log, log
        assert "model tiny: llama-server@tiny.service is healthy again" in log
        wait_for(lambda: model_status(ct, "tiny")[1]["verdict"] == "loaded",
                 what=lambda: f"{model_status(ct, 'tiny')}")
        assert model_status(ct, "tiny")[1]["restart_pending"] is None
        # the same configuration again: nothing restarts
        assert reload(ct).returncode == 0
        assert main_pid(ct, TINY) == new
    finally:
        ct.path(CONFIG).write_text(config_text([("tiny", ["--port", "8080"])]))
        reload(ct)


def test_manual_restart_leaves_the_server_and_says_what_is_pending(ct: Container) -> None:
    manual = config_text([("tiny", ["--port", "8080"])]).replace(
        'name = "tiny"\n', 'name = "tiny"\nrestart = "manual"\n')
    ct.path(CONFIG).write_text(manual)
    model = ct.path("/srv/models/tiny.gguf")
    try:
        assert reload(ct).returncode == 0
        wait_for(lambda: serving(ct, TINY), what=lambda: started(ct, TINY))
        wait_for(lambda: model_status(ct, "tiny")[1]["verdict"] == "loaded",
                 what=lambda: f"{model_status(ct, 'tiny')}")
        pid = main_pid(ct, TINY)
        ct.path(CONFIG).write_text(manual.replace('["--port", "8080"]',
                                                  '["--port", "8080", "-c", "8192"]'))
        assert reload(ct).returncode == 0
        assert main_pid(ct, TINY) == pid  # left running
        rc, m = model_status(ct, "tiny")
        assert rc == 1 and m["verdict"] == "restart pending: args changed", m
        assert m["restart_pending"] == ["args changed"]
        text = ct.run("hugepage-agent", "status", check=False).stdout
        assert "DEGRADED" in text and "restart pending: args changed" in text, text
        # the model file replaced at the same path (a new quantization)
        os.utime(model, (time.time(), time.time() + 5))
        both = "restart pending: args changed, model file changed"
        wait_for(lambda: model_status(ct, "tiny")[1]["verdict"] == both,  # 0.5 s cache
                 timeout=5, what=lambda: f"{model_status(ct, 'tiny')}")
        ct.systemctl("restart", TINY)
        wait_for(lambda: model_status(ct, "tiny")[1]["verdict"] == "loaded",
                 what=lambda: f"{model_status(ct, 'tiny')}")
        assert cmdline(ct, main_pid(ct, TINY))[-2:] == ["-c", "8192"]
    finally:
        ct.path(CONFIG).write_text(config_text([("tiny", ["--port", "8080"])]))
        reload(ct)


def test_a_server_that_does_not_come_back_fails_the_reload_naming_it(ct: Container) -> None:
    two = [("tiny", ["--port", "8080"]), ("odd", ["--port", "8082"])]
    ct.path(CONFIG).write_text(config_text(two))
    odd = "llama-server@odd.service"
    try:
        assert reload(ct).returncode == 0
        wait_for(lambda: serving(ct, odd) and serving(ct, TINY), what=lambda: started(ct, odd))
        wait_for(lambda: model_status(ct, "odd")[1]["verdict"] == "loaded",
                 what=lambda: f"{model_status(ct, 'odd')}")
        tiny_pid = main_pid(ct, TINY)
        # odd's new arguments make its server exit at start
        broken = config_text([("tiny", ["--port", "8080"]),
                              ("odd", ["--port", "8082", "--fail-start"])])
        ct.path(CONFIG).write_text(broken)
        r = reload(ct)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "model odd: llama-server@odd.service" in r.stderr, r.stderr
        assert "tiny" not in r.stderr
        assert main_pid(ct, TINY) == tiny_pid and serving(ct, TINY)  # the others keep running
        log = ct.journal("hugepage-agent.service")
        assert "journal's last lines" in log and "invalid argument: --fail-start" in log, log
        # put back: the reload restarts odd with its old arguments
        ct.path(CONFIG).write_text(config_text(two))
        r = reload(ct)
        assert r.returncode == 0, r.stdout + r.stderr + ct.journal("hugepage-agent.service")
        assert serving(ct, odd) and "--fail-start" not in cmdline(ct, main_pid(ct, odd))
    finally:
        ct.path(CONFIG).write_text(config_text([("tiny", ["--port", "8080"])]))
        reload(ct)


def test_the_pool_shrinks_as_a_stopped_server_frees_its_pages(ct: Container) -> None:
    ct.path(CONFIG).write_text(config_text([("tiny", ["--port", "8080"])]))
    assert reload(ct).returncode == 0
    wait_for(lambda: model_status(ct, "tiny")[1]["verdict"] == "loaded",
             what=lambda: f"{model_status(ct, 'tiny')}")
    held = IN_HUGE_PAGES // (2 * MIB)  # the partial last page is in 4 KiB pages
    small = config_text([("tiny", ["--port", "8080"])]).replace("[pool]\nheadroom = 4\n",
                                                               "[pool]\nsize = 4\n")
    ct.path(CONFIG).write_text(small)
    try:
        assert reload(ct).returncode == 0
        assert read_int(NR) >= held  # the server's pages are not taken from it
        r = ct.run("hugepage-agent", "status", check=False)
        assert r.returncode == 1 and "pool is shrinking: " in r.stdout, r.stdout
        assert "pages above target held by running servers" in r.stdout
        data = json.loads(ct.run("hugepage-agent", "status", "--json", check=False).stdout)
        pool = next(p for p in data["pools"] if p["page_size_kb"] == 2048 and p["node"] is None)
        assert pool["target"] == 4 and pool["above_target_held"] > 0, pool
        ct.systemctl("stop", TINY)
        # the daemon re-applies when the unit has stopped: nothing to reload
        wait_for(lambda: read_int(NR) == 4, timeout=30,
                 what=lambda: f"the pool to shrink to 4 (at {read_int(NR)})")
        r = ct.run("hugepage-agent", "status", check=False)
        assert "shrinking" not in r.stdout and "above its target" not in r.stdout, r.stdout
    finally:
        ct.path(CONFIG).write_text(config_text([("tiny", ["--port", "8080"])]))
        reload(ct)
        ct.systemctl("start", TINY, check=False)


def test_the_pool_covers_a_restart_into_a_larger_model(ct: Container) -> None:
    """The new model's pages are reserved before the old server stops, and
    the pages it frees count for the new one: a pool.limit that the old and
    the new together would pass is no obstacle."""
    larger = ct.path("/srv/models/larger.gguf")
    subprocess.run([str(MAPTOOL), "mkfile", str(larger), str(600 * MIB)], check=True)
    limited = config_text([("tiny", ["--port", "8080"])]).replace(
        "[pool]\nheadroom = 4\n", '[pool]\nheadroom = 4\nlimit = "700M"\n')
    ct.path(CONFIG).write_text(limited)
    try:
        assert reload(ct).returncode == 0
        wait_for(lambda: model_status(ct, "tiny")[1]["verdict"] == "loaded",
                 what=lambda: f"{model_status(ct, 'tiny')}")
        old = main_pid(ct, TINY)
        mark = len(ct.journal("hugepage-agent.service"))
        ct.path(CONFIG).write_text(limited.replace("/srv/models/tiny.gguf",
                                                   "/srv/models/larger.gguf"))
        r = reload(ct)
        assert r.returncode == 0, r.stdout + r.stderr
        target = pages(600 * MIB) + 4
        log = ct.journal("hugepage-agent.service")[mark:]
        grown = log.find(f"pool {target} of {target}")
        restarting = log.find("model tiny: model file changed; restarting")
        assert 0 <= grown < restarting, log
        assert main_pid(ct, TINY) != old
        wait_for(lambda: model_status(ct, "tiny")[1]["verdict"] == "loaded",
                 what=lambda: f"{model_status(ct, 'tiny')}")
        m = model_status(ct, "tiny")[1]
        assert m["hugetlb_bytes"] >= 600 * MIB and m["fallback_bytes"] < MIB, m  # no fallback
        assert read_int(NR) == target  # the old server's pages went to the new one
    finally:
        ct.path(CONFIG).write_text(config_text([("tiny", ["--port", "8080"])]))
        reload(ct)
        larger.unlink()


def test_a_server_the_library_cannot_load_into_is_refused_and_fails_its_start(
        ct: Container, tmp_path: Path) -> None:
    from tests.kernel.test_preload import server_with_old_libc

    bad = server_with_old_libc(tmp_path)  # its libc (DT_RUNPATH $ORIGIN/lib) is glibc 2.31
    old_dir, fake_dir = ct.path("/usr/local/lib/oldsrv"), ct.path("/usr/local/lib/fake2")

    def put(binary: Path, where: Path, libc: bool) -> None:
        (where / "lib").mkdir(parents=True, exist_ok=True)
        shutil.copy2(binary, where / "llama-server.new")  # replaced, as a package does
        (where / "llama-server.new").replace(where / "llama-server")
        if libc:
            shutil.copy2(bad.parent / "lib" / "libc.so.6", where / "lib" / "libc.so.6")
        else:
            (where / "lib" / "libc.so.6").unlink(missing_ok=True)

    put(bad, old_dir, libc=True)
    good = config_text([("tiny", ["--port", "8080"])])
    wait_for(lambda: serving(ct, TINY), what=lambda: started(ct, TINY))
    tiny = main_pid(ct, TINY)
    try:
        # the reload refuses it, before anything changes
        ct.path(CONFIG).write_text(good.replace("/usr/local/bin/fakeserver",
                                                "/usr/local/lib/oldsrv/llama-server"))
        r = reload(ct)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "model tiny: the wrapper library /usr/lib/hugepage-agent/libhugepage-wrapper.so " \
            "needs glibc 2." in r.stderr, r.stderr
        assert "/usr/local/lib/oldsrv/llama-server runs with glibc 2.31" in r.stderr
        assert main_pid(ct, TINY) == tiny
        # a binary replaced under a running configuration: its next start fails, saying why
        put(ct.path("/usr/local/bin/fakeserver"), fake_dir, libc=False)
        ct.path(CONFIG).write_text(good.replace("/usr/local/bin/fakeserver",
                                                "/usr/local/lib/fake2/llama-server"))
        assert reload(ct).returncode == 0  # binary changed: restarted, and healthy
        pid = main_pid(ct, TINY)
        assert pid != tiny and cmdline(ct, pid)[0] == "/usr/local/lib/fake2/llama-server"
        put(bad, fake_dir, libc=True)
        ct.systemctl("restart", TINY, check=False)
        wait_for(lambda: "runs with glibc 2.31" in ct.journal(TINY), what=lambda: ct.journal(TINY))
        assert "Failed to start llama-server@tiny.service" in ct.journal(TINY)
        assert ct.prop(TINY, "ActiveState") != "active"
    finally:
        ct.path(CONFIG).write_text(good)
        reload(ct)
        ct.systemctl("reset-failed", TINY, check=False)
        ct.systemctl("restart", TINY, check=False)
        shutil.rmtree(old_dir, ignore_errors=True)
        shutil.rmtree(fake_dir, ignore_errors=True)
    wait_for(lambda: serving(ct, TINY), what=lambda: started(ct, TINY))


def test_status_says_why_a_server_runs_without_the_wrapper(ct: Container) -> None:
    """An operator's unit whose program clears LD_PRELOAD before it starts the
    server, as some supervisors do."""
    unit = "cleared.service"
    with big_in_own_unit(ct, unit, "/usr/bin/env -u LD_PRELOAD /usr/local/bin/fakeserver "
                         "--model /srv/models/big.gguf"):
        want = "wrapper not loaded: LD_PRELOAD is not in its environment"
        wait_for(lambda: model_status(ct, "big")[1]["verdict"].startswith(want),
                 what=lambda: f"{model_status(ct, 'big')}")
        # its start was recorded by the drop-in's ExecStartPre, as the template's is
        # /run is the container's own tmpfs: read it from inside
        rec = json.loads(ct.run("cat", "/run/hugepage-agent/start/big.json").stdout)
        assert rec["unit"] == unit and rec["model"] == "/srv/models/big.gguf"
        assert rec["invocation"] == ct.prop(unit, "InvocationID")
