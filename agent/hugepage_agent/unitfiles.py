"""What the agent writes for systemd, rendered as text. Pure functions.

Per model: a drop-in `<unit>.d/50-hugepage-agent.conf` (the wrapper preloaded
and configured, ordered after the agent) and, for the llama-server@.service
template, a JSON file with the binary, model path and arguments, which
`hugepage-agent run-model NAME` turns into an argv without any shell or
systemd parsing in between. Arguments therefore never pass through unit file
syntax; the values that do (environment) are quoted and escaped here, and
what cannot be expressed safely (control characters) is refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from hugepage_agent import __version__, consts
from hugepage_agent.config import ModelConfig
from hugepage_agent.loadmode import LoadMode

AGENT_UNIT = "hugepage-agent.service"
TEMPLATE = "llama-server@.service"
CONTAINER_TEMPLATE = "llama-container@.service"  # a model with image
DROPIN_NAME = "50-hugepage-agent.conf"
UNIT_DIR = "/etc/systemd/system"
MODEL_DIR = consts.MODEL_DIR
GENERATED = consts.GENERATED
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
NODE_LIST_RE = re.compile(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*")  # "0-3,8": CPUs or nodes


class UnsafeValue(ValueError):
    """A value that cannot be written into a unit file safely."""


def unit_for(model: ModelConfig) -> str:
    """The unit that serves a model; "" for a container the operator runs."""
    kind = model.kind
    if kind == "container":
        return ""
    if kind == "image":
        return f"llama-container@{model.name}.service"
    return model.unit or f"llama-server@{model.name}.service"


def image_runtime(model: ModelConfig) -> str:
    """The runtime that runs a model's image: podman unless it says docker."""
    return model.runtime or "podman"


def dropin_path(unit: str) -> str:
    return f"{UNIT_DIR}/{unit}.d/{DROPIN_NAME}"


def model_file(name: str) -> str:
    return f"{MODEL_DIR}/{name}.json"


def quote(value: str) -> str:
    """One word for a unit file setting: double quotes, C escapes, '%' doubled."""
    if _CONTROL_RE.search(value):
        raise UnsafeValue(f"{value!r} contains a control character (newline, tab, ...)")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


def environment_line(key: str, value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise UnsafeValue(f"{key!r} is not a valid environment variable name")
    return f"Environment={quote(f'{key}={value}')}"


def header(what: str) -> str:
    return (consts.generated_line(__version__, what) +
            "# Do not edit: the agent rewrites it, and removes it when the model is no longer\n"
            "# configured. Change /etc/hugepage-agent/config.toml instead.\n")


# systemd expands ${LD_PRELOAD} (the drop-in's value) for the check, which runs
# without the wrapper itself
PREPARE = (f"/usr/bin/env -u LD_PRELOAD {consts.PRELOAD_ENV}=${{LD_PRELOAD}} "
           "/usr/bin/hugepage-agent prepare-model")


def render_dropin(model: ModelConfig, env: dict[str, str],
                  cpuset: tuple[str, str] | None = None) -> str:
    """`cpuset`: (CPUs, memory nodes) a model pinned to NUMA nodes runs on."""
    lines = [header(f"for model {model.name}"), "[Unit]", f"Wants={AGENT_UNIT}",
             f"After={AGENT_UNIT}", "", "[Service]"]
    lines += [environment_line(k, v) for k, v in sorted(env.items())]
    if cpuset is not None:
        cpus, mems = cpuset  # lists of numbers ("0-1,4"): nothing to quote
        lines += [f"# model.numa pins it: its threads and every page on node(s) {mems}"]
        if cpus:
            lines.append(f"AllowedCPUs={cpus}")
        lines.append(f"AllowedMemoryNodes={mems}")
    if model.unit is not None:
        # the operator's own unit: record what this start runs with (the model
        # file's identity, these settings), as the template's ExecStartPre does,
        # and fail the start when the wrapper library would not load into its
        # server (a failed record never does). The name is a model name
        # (letters, digits, '.', '_', '-'): nothing to quote.
        lines += ["# What this start runs with, for `hugepage-agent status`; fails the",
                  "# start when the wrapper library cannot load into this unit's server.",
                  f"ExecStartPre=+{PREPARE} {model.name}"]
    return "\n".join(lines) + "\n"


_QUOTED_LINE_RE = re.compile(r'^(\w+)="((?:[^"\\]|\\.)*)"$')


def quoted_settings(text: str, name: str) -> list[str]:
    """The values of every `NAME="..."` line quote() wrote, unquoted."""
    out = []
    for line in text.splitlines():
        m = _QUOTED_LINE_RE.match(line)
        if m is not None and m.group(1) == name:
            out.append(re.sub(r"\\(.)", r"\1", m.group(2)).replace("%%", "%"))
    return out


def dropin_environment(text: str) -> dict[str, str]:
    """The environment a drop-in written by render_dropin sets (quote, undone)."""
    out = {}
    for value in quoted_settings(text, "Environment"):
        key, _, val = value.partition("=")
        out[key] = val
    return out


def render_own_unit_file(model: ModelConfig) -> str:
    """For a model served by the operator's own unit: what its start records."""
    data = {"generated_by": f"hugepage-agent {__version__}", "name": model.name,
            "unit": model.unit, "model": model.path}
    return json.dumps(data, indent=1) + "\n"


def render_model_file(model: ModelConfig, binary: str, load: LoadMode | None = None,
                      page_cache: str = "drop", cpuset: tuple[str, str] | None = None) -> str:
    """`load`: how the agent has the server load the weights; the arguments it
    adds are chosen at each start (`hugepage-agent prepare-model`). `cpuset`:
    the CPUs and memory nodes of a pinned model, which a container outside the
    unit's cgroup (docker's) is given itself."""
    data: dict[str, object] = {
        "generated_by": f"hugepage-agent {__version__}",
        "name": model.name,
        "binary": binary,
        "model": model.path,
        "args": list(model.args),
    }
    if model.image is not None:
        data["image"] = model.image
        data["runtime"] = image_runtime(model)
        data["runtime_args"] = list(model.runtime_args)
        if cpuset is not None:
            data["cpuset"] = list(cpuset)
    if load is not None:
        data["load"] = {"mode": load.mode, "chosen_by": load.chosen_by,
                        "uncached": list(load.added),
                        "cached": list(load.cached) if load.cached is not None else None,
                        "page_cache": page_cache, "evidence": load.evidence}
    return json.dumps(data, indent=1) + "\n"


@dataclass(frozen=True)
class ModelFile:
    """A model file as run-model and prepare-model read it."""
    binary: str
    model: str
    args: tuple[str, ...]
    load: LoadMode | None  # None: a file written before the choice was made per start
    page_cache: str = "drop"
    unit: str | None = None  # the operator's own unit serves it: nothing to run
    image: str | None = None  # llama-container@NAME runs it from this image
    runtime: str = "podman"
    runtime_args: tuple[str, ...] = ()
    cpuset: tuple[str, str] | None = None  # a pinned model's CPUs and memory nodes


    def argv(self, added: Sequence[str] = ()) -> list[str]:
        return [self.binary, "--model", self.model, *added, *self.args]


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(a, str) for a in value)


def parse_model_file(text: str) -> ModelFile:
    """Raises ValueError (or KeyError, TypeError) for a malformed file."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    if "unit" in data:
        if not (isinstance(data["unit"], str) and isinstance(data["model"], str)):
            raise ValueError("malformed model file")
        return ModelFile("", data["model"], (), None, unit=data["unit"])
    binary, path, args = data["binary"], data["model"], data["args"]
    if not (isinstance(binary, str) and isinstance(path, str) and _strings(args)):
        raise ValueError("malformed model file")
    image = data.get("image")
    runtime, runtime_args = data.get("runtime", "podman"), data.get("runtime_args", [])
    cpuset = data.get("cpuset")
    if image is not None and not (isinstance(image, str) and runtime in ("podman", "docker")
                                  and _strings(runtime_args)
                                  and (cpuset is None or (_strings(cpuset) and len(cpuset) == 2
                                                          and all(NODE_LIST_RE.fullmatch(c)
                                                                  for c in cpuset)))):
        raise ValueError("malformed image section")
    load = None
    page_cache = "drop"
    raw = data.get("load")
    if raw is not None:
        if not (isinstance(raw, dict) and _strings(raw["uncached"])
                and (raw["cached"] is None or _strings(raw["cached"]))
                and isinstance(raw["mode"], str) and isinstance(raw["chosen_by"], str)
                and raw.get("page_cache", "drop") in ("drop", "keep")):
            raise ValueError("malformed load section")
        load = LoadMode(raw["mode"], raw["chosen_by"], tuple(raw["uncached"]),
                        cached=tuple(raw["cached"]) if raw["cached"] is not None else None,
                        evidence=str(raw.get("evidence", "")))
        page_cache = raw.get("page_cache", "drop")
    return ModelFile(binary, path, tuple(args), load, page_cache, image=image, runtime=runtime,
                     runtime_args=tuple(runtime_args),
                     cpuset=(cpuset[0], cpuset[1]) if cpuset else None)


def model_argv(text: str) -> list[str]:
    """The llama-server command line from a model file's text, before any
    per-start choice."""
    mf = parse_model_file(text)
    return mf.argv(mf.load.added if mf.load is not None else ())
