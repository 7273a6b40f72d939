"""Models served from container images (pure): the configuration keys, the
runtime's command line, the Compose override, the model file, and the image
check's judgement on real ELF files (this host's glibc, the built wrapper).
The containers themselves run in tests/e2e/test_containers.py."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from pathlib import Path

import pytest

from hugepage_agent import config, consts, containerargs, imagecheck, unitfiles
from hugepage_agent.cli import main
from hugepage_agent.config import ModelConfig
from hugepage_agent.errors import ConfigError
from hugepage_agent.host import Host
from tests.conftest import LIBRARY

MODEL_PATH = "/etc/hostname"  # any regular file stands in for the model here


def load(tmp_path: Path, body: str) -> config.Config:
    f = tmp_path / "c.toml"
    f.write_text(f'[[model]]\nname = "m"\npath = "{MODEL_PATH}"\n{body}')
    return config.load(Host("/"), str(f))


def test_image_and_runtime_are_read(tmp_path: Path) -> None:
    m = load(tmp_path, 'image = "ghcr.io/ggml-org/llama.cpp:server"\nruntime = "docker"\n'
                       'runtime_args = ["--cpus=8"]\n').models[0]
    assert (m.kind, m.image, m.runtime, m.runtime_args) == (
        "image", "ghcr.io/ggml-org/llama.cpp:server", "docker", ("--cpus=8",))
    assert unitfiles.unit_for(m) == "llama-container@m.service"
    assert unitfiles.image_runtime(load(tmp_path, 'image = "x:1"\n').models[0]) == "podman"
    c = load(tmp_path, 'container = "llama-cpu-0"\n').models[0]
    assert (c.kind, c.container, unitfiles.unit_for(c)) == ("container", "llama-cpu-0", "")


BAD = [
    ('image = "x"\nunit = "a.service"', "model[0].image: cannot be set with unit"),
    ('image = "x"\ncontainer = "c"', "model[0].container: cannot be set with image"),
    ('image = "-v/:/host"', "model[0].image: '-v/:/host' is not a container image reference"),
    ('image = "a b"', "model[0].image: 'a b' is not"),
    ('image = "x\\n"', "model[0].image:"),
    ('container = "--privileged"', "model[0].container: '--privileged' is not a container name"),
    ('runtime = "podman"', "model[0].runtime: only for a model with image or container"),
    ('image = "x"\nruntime = "lxc"', "model[0].runtime: 'lxc' is not one of"),
    ('image = "x"\nruntime_args = ["ghcr.io/evil"]', "model[0].runtime_args[0]: 'ghcr.io/evil'"),
    ('image = "x"\nruntime_args = [3]', "model[0].runtime_args[0]: expected a string"),
    ('runtime_args = ["--cpus=2"]', "model[0].runtime_args: only for a model with image"),
]


@pytest.mark.parametrize(("body", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_container_keys_name_the_file_and_key(tmp_path: Path, body: str,
                                                  message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, body + "\n")
    assert message in str(e.value) and "c.toml" in str(e.value)


SPEC = containerargs.RunSpec(runtime="podman", image="localhost/llama:b1", name="m",
                             model="/srv/models/q4 model.gguf", args=("--port", "8089"),
                             runtime_args=("--cpus=2",), library="/usr/lib/x/lib.so",
                             user=(995, 993), groups=(44,))
ENV = {"LD_PRELOAD": "/usr/lib/x/lib.so", consts.ENV_MIN_SIZE: "1073741824",
       consts.ENV_DROP_CACHE: "/srv/models/q4 model.gguf", "HUGEPAGE_AGENT_LOAD": "dio: cold",
       "PATH": "/usr/bin", "INVOCATION_ID": "abc", "SECRET": "x"}


def test_the_run_command_mounts_preloads_and_drops_privileges() -> None:
    argv = containerargs.run_argv(SPEC, "/usr/bin/podman", ENV, ("-dio",))
    image = argv.index("localhost/llama:b1")
    opts, server = argv[:image], argv[image + 1:]
    assert argv[:3] == ["/usr/bin/podman", "run", "--rm"] and opts[-1] == "--"
    assert server == ["--model", "/models/q4 model.gguf", "-dio", "--port", "8089"]
    assert "type=bind,source=/srv/models/q4 model.gguf,target=/models/q4 model.gguf,readonly" \
        in opts
    assert f"type=bind,source=/usr/lib/x/lib.so,target={containerargs.LIBRARY},readonly" in opts
    envs = {opts[i + 1] for i, o in enumerate(opts) if o == "--env"}
    assert envs == {f"LD_PRELOAD={containerargs.LIBRARY}", f"{consts.ENV_MIN_SIZE}=1073741824",
                    f"{consts.ENV_DROP_CACHE}=/models/q4 model.gguf",
                    "HUGEPAGE_AGENT_LOAD=dio: cold"}  # nothing else of the unit's
    for flag in ("--cgroups=split", "--replace", "--network=host", "--cap-drop=all",
                 "--security-opt=no-new-privileges", "--read-only", "--pull=never", "--cpus=2"):
        assert flag in opts
    assert opts[opts.index("--user") + 1] == "995:993"
    assert opts[opts.index("--group-add") + 1] == "44"
    assert opts[opts.index("--name") + 1] == "hugepage-agent-m"


def test_docker_gets_no_podman_only_flags() -> None:
    spec = containerargs.RunSpec(runtime="docker", image="i", name="m", model="/m.gguf", args=())
    argv = containerargs.run_argv(spec, "/usr/bin/docker", {})
    assert "--cgroups=split" not in argv and "--replace" not in argv
    unsplit = containerargs.run_argv(dataclasses.replace(SPEC, split=False), "podman", {})
    assert "--cgroups=split" not in unsplit and "--replace" in unsplit  # cgroup v1: by name
    assert not any(a.startswith("LD_PRELOAD") for a in argv)  # no library: none preloaded
    assert argv[-3:] == ["i", "--model", "/models/m.gguf"]


@pytest.mark.parametrize("path", ["/m,readonly=false.gguf", '/m".gguf', "/m\n.gguf"])
def test_paths_mount_cannot_take_are_refused(path: str) -> None:
    assert containerargs.check_path(path) is not None
    assert containerargs.check_path("/srv/m o:d@l.gguf") is None


def test_the_compose_override_is_yaml_and_names_the_library() -> None:
    text = containerargs.compose_override("llama-cpu-0", "m", "/usr/lib/x/lib.so", ENV,
                                          added=("-dio",))
    assert text.startswith("# Generated by hugepage-agent")
    assert f'- "/usr/lib/x/lib.so:{containerargs.LIBRARY}:ro"' in text
    assert f'LD_PRELOAD: "{containerargs.LIBRARY}"' in text
    assert "command:" not in text and "-dio" in text  # the service's command is its own
    full = containerargs.compose_override("s", "m", "/l.so", ENV, added=("-dio",),
                                          args=("--model", "/app/m.gguf", "--port", "9"))
    assert 'command: ["-dio", "--model", "/app/m.gguf", "--port", "9"]' in full
    try:
        import yaml  # Debian's python3-yaml, where present
    except ImportError:
        return
    assert "cap_add" not in full
    several = containerargs.compose_override("s", "m", "/l.so", ENV, numa_policy=True)
    assert 'cap_add: ["SYS_NICE"]' in several
    assert yaml.safe_load(several)["services"]["s"]["cap_add"] == ["SYS_NICE"]
    doc = yaml.safe_load(full)
    svc = doc["services"]["s"]
    assert svc["volumes"] == [f"/l.so:{containerargs.LIBRARY}:ro"]
    assert svc["environment"]["LD_PRELOAD"] == containerargs.LIBRARY


def test_an_image_model_file_round_trips() -> None:
    m = ModelConfig(name="m", path="/srv/m.gguf", size=1, args=("-c", "256"),
                    image="localhost/l:1", runtime="docker", runtime_args=("--cpus=1",))
    mf = unitfiles.parse_model_file(unitfiles.render_model_file(m, ""))
    assert (mf.image, mf.runtime, mf.runtime_args, mf.args, mf.model) == (
        "localhost/l:1", "docker", ("--cpus=1",), ("-c", "256"), "/srv/m.gguf")
    bad = json.loads(unitfiles.render_model_file(m, ""))
    bad["runtime"] = "sh"
    with pytest.raises(ValueError, match="image"):
        unitfiles.parse_model_file(json.dumps(bad))


def _host_libc() -> tuple[str, bytes]:
    path = next(p for p in glob.glob("/lib/*/libc.so.6") + glob.glob("/lib64/libc.so.6"))
    return path, Path(path).read_bytes()


@pytest.mark.skipif(not LIBRARY.exists(), reason="the wrapper is not built (make -C wrapper_c)")
def test_the_image_check_compares_glibc_versions() -> None:
    needs = imagecheck.needed_glibc(LIBRARY.read_bytes())
    assert needs is not None and needs >= (2, 17)
    libc = _host_libc()
    ok = imagecheck.judge("img", "/l.so", needs, "/app/llama-server", {libc[0]: libc})
    assert ok is None  # built here: this glibc is new enough
    newer = (needs[0], needs[1] + 50)  # a library built on a glibc from the future
    old = imagecheck.judge("img", "/l.so", newer, "/app/llama-server", {libc[0]: libc})
    assert old is not None and f"needs glibc {newer[0]}.{newer[1]}" in old
    assert "image img runs glibc 2." in old and libc[0] in old


def test_a_musl_image_is_refused() -> None:
    why = imagecheck.judge("alpine-llama", "/l.so", (2, 34), "/app/llama-server",
                           {"/lib/ld-musl-x86_64.so.1": ("/lib/ld-musl-x86_64.so.1", b"")})
    assert why is not None and "musl" in why and "alpine-llama" in why


def test_compose_prints_the_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "c.toml"
    f.write_text(f'[wrapper]\nlibrary = "{LIBRARY if LIBRARY.exists() else MODEL_PATH}"\n'
                 f'[[model]]\nname = "cpu0"\npath = "{MODEL_PATH}"\ncontainer = "llama-cpu-0"\n')
    assert main(["compose", "--config", str(f), "llama-cpu-0"]) == 0
    out = capsys.readouterr().out
    assert '"llama-cpu-0":' in out and "LD_PRELOAD" in out
    f.write_text(f'[[model]]\nname = "cpu0"\npath = "{MODEL_PATH}"\n')
    assert main(["compose", "--config", str(f), "cpu0"]) == 2
    assert "has no container" in capsys.readouterr().err
    assert os.path.exists(MODEL_PATH)


def test_a_containers_server_is_known_by_its_own_pid_in_its_log_lines(tmp_path: Path) -> None:
    from hugepage_agent import procs

    for pid, nspid in ((4242, "NSpid:\t4242\t1"), (77, "NSpid:\t77"), (5, "Name:\tx")):
        d = tmp_path / "proc" / str(pid)
        d.mkdir(parents=True)
        (d / "status").write_text(f"Name:\tllama-server\n{nspid}\n")
    host = Host(str(tmp_path))
    assert procs.own_pid(host, 4242) == 1  # the server is PID 1 of its container
    assert procs.own_pid(host, 77) == 77
    assert procs.own_pid(host, 5) == 5 and procs.own_pid(host, 6) == 6


def test_a_pinned_model_in_docker_gets_its_cpuset_and_may_place_its_pages() -> None:
    spec = dataclasses.replace(SPEC, runtime="docker", cpuset=("2-3", "1"), numa_policy=True)
    argv = containerargs.run_argv(spec, "/usr/bin/docker", {})
    opts = argv[:argv.index(spec.image)]
    assert "--cpuset-cpus=2-3" in opts and "--cpuset-mems=1" in opts
    assert "--cap-add=SYS_NICE" in opts  # docker's seccomp: mbind needs it
    one_node = containerargs.run_argv(dataclasses.replace(spec, numa_policy=False, cpuset=None),
                                      "/usr/bin/docker", {})
    assert not any(a.startswith(("--cap-add", "--cpuset")) for a in one_node)
    podman = containerargs.run_argv(dataclasses.replace(spec, runtime="podman"), "podman", {})
    assert "--cap-add=SYS_NICE" not in podman  # podman's profile allows the policy calls


def test_the_model_file_carries_a_pinned_models_cpuset() -> None:
    m = ModelConfig(name="m", path="/srv/m.gguf", size=1, image="i", numa="nodes",
                    numa_nodes=(1,))
    mf = unitfiles.parse_model_file(unitfiles.render_model_file(m, "", cpuset=("2-3", "1")))
    assert mf.cpuset == ("2-3", "1")
    bad = json.loads(unitfiles.render_model_file(m, "", cpuset=("2-3", "1")))
    bad["cpuset"] = ["2-3; rm", "1"]
    with pytest.raises(ValueError):
        unitfiles.parse_model_file(json.dumps(bad))
