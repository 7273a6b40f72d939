"""Configuration: TOML files in, frozen dataclasses out, validated at the edge.

Read from /etc/hugepage-agent/config.toml, then the drop-ins
/etc/hugepage-agent/config.d/*.toml in name order (a later file wins key by
key; a [[model]] with the name of an earlier one replaces it), or from one
--config FILE. Every error names the file and the key.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from hugepage_agent import amounts, consts, pools
from hugepage_agent.errors import ConfigError, HostError
from hugepage_agent.host import Host

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Debian 12 has 3.11
    import tomli as tomllib

MAIN_CONFIG = "/etc/hugepage-agent/config.toml"
DROPIN_GLOB = "/etc/hugepage-agent/config.d/*.toml"
DEFAULT_LIBRARY = consts.DEFAULT_LIBRARY
DEFAULT_SERVER = "/usr/local/bin/llama-server"
DEFAULT_TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"

THP_MODES = ("always", "madvise", "never", "keep")
DEFRAG_MODES = ("always", "defer", "defer+madvise", "madvise", "never", "keep")
WRAPPER_LOG = ("quiet", "info", "debug")
WRAPPER_PAGE = ("auto", "2M", "1G")
LOAD_MODES = ("auto", "dio", "none", "keep")
PAGE_CACHE = ("drop", "keep")
PRETOUCH = ("auto", "always", "never")
DEFAULT_ALLOC_MIN = 8 * amounts.MIB
# matched whole (fullmatch): a trailing newline is no part of a name
MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
UNIT_NAME_RE = re.compile(r"[A-Za-z0-9:_.\\\-@]+\.service")
# units the agent must never put its drop-in into: its own, systemd's, D-Bus's, users'
FORBIDDEN_UNIT_RE = re.compile(r"(hugepage-agent|dbus|dbus-broker|systemd-.*|user@.*|"
                               r"user-runtime-dir@.*|init|emergency|rescue)\.service")
NODE_KEY_RE = re.compile(r"[0-9]{1,4}")
# an image reference as podman and docker take it: [registry[:port]/]path[:tag][@digest]
IMAGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-/:@+]{0,254}")
# a container name as docker and podman take it
CONTAINER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
RUNTIMES = ("podman", "docker")


DEFAULT_HEADROOM = amounts.Amount(share=0.02)
DEFAULT_LIMIT = amounts.Amount(share=0.90)


@dataclass(frozen=True)
class PoolConfig:
    page_size: int = 2 * amounts.MIB
    size: amounts.Amount | None = None  # None: auto, from the model files
    headroom: amounts.Amount = DEFAULT_HEADROOM
    limit: amounts.Amount = DEFAULT_LIMIT
    nodes: tuple[tuple[int, float], ...] = ()  # (node, share of the target)


@dataclass(frozen=True)
class ThpConfig:
    enabled: str = "never"
    defrag: str = "never"


@dataclass(frozen=True)
class ReserveConfig:
    timeout: float = 30.0
    drop_caches: bool = False
    pretouch: str = "auto"  # touch the pages a reservation adds: auto (in a VM), always, never


@dataclass(frozen=True)
class WrapperConfig:
    library: str = ""  # empty: the installed library, or the checkout's build
    min_size: int = amounts.GIB
    alloc_min_size: int = DEFAULT_ALLOC_MIN  # 0: allocations are not served
    page_size: str = "auto"
    strict: bool = False
    log: str = "info"
    threads: int = 0  # 0: the library decides


@dataclass(frozen=True)
class ServerConfig:
    binary: str = DEFAULT_SERVER
    # how the agent has llama.cpp load the weights, unless a model's args choose
    load_mode: str = "auto"
    page_cache: str = "drop"  # after a load, drop the model file from the page cache


@dataclass(frozen=True)
class MetricsConfig:
    textfile_dir: str = DEFAULT_TEXTFILE_DIR  # empty: no metrics file
    interval: float = 60.0


@dataclass(frozen=True)
class ModelConfig:
    name: str
    path: str
    size: int
    args: tuple[str, ...] = ()
    unit: str | None = None  # an operator's own unit instead of llama-server@NAME
    autostart: bool = True
    restart: str = "on-change"  # or "manual": see RESTART_MODES
    numa: str = "auto"  # one of NUMA_MODES, or "nodes" (numa_nodes)
    numa_nodes: tuple[int, ...] = ()  # pinned there (numa = "nodes")
    image: str | None = None  # served from this container image by llama-container@NAME
    container: str | None = None  # an existing container the operator runs (compose)
    runtime: str | None = None  # podman or docker; None: podman for an image, either
    runtime_args: tuple[str, ...] = ()  # added to the runtime's `run` before the image

    @property
    def kind(self) -> str:
        """Who runs the server: "template" (llama-server@NAME), "unit" (the
        operator's own), "image" (llama-container@NAME) or "container" (the
        operator's own container, e.g. a compose service)."""
        if self.image is not None:
            return "image"
        if self.container is not None:
            return "container"
        return "unit" if self.unit is not None else "template"


RESTART_MODES = ("on-change", "manual")
NUMA_MODES = ("auto", "interleave", "off")

class Origin(NamedTuple):
    """The file that set a key last."""
    key: str
    file: str


@dataclass(frozen=True)
class Config:
    files: tuple[str, ...] = ()
    pool: PoolConfig = field(default_factory=PoolConfig)
    thp: ThpConfig = field(default_factory=ThpConfig)
    reserve: ReserveConfig = field(default_factory=ReserveConfig)
    wrapper: WrapperConfig = field(default_factory=WrapperConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    models: tuple[ModelConfig, ...] = ()
    origins: tuple[Origin, ...] = ()

    def origin(self, key: str) -> str:
        """The file that set a key last (for messages about the merged result)."""
        for k, file in self.origins:
            if k == key:
                return file
        return self.files[-1] if self.files else "<defaults>"

_SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "pool": {"page_size": str, "size": (str, int), "headroom": (str, int),
             "limit": (str, int), "nodes": dict},
    "thp": {"enabled": str, "defrag": str},
    "reserve": {"timeout": (str, int, float), "drop_caches": bool, "pretouch": str},
    "wrapper": {"library": str, "min_size": (str, int), "alloc_min_size": (str, int),
                "page_size": str, "strict": bool, "log": str, "threads": int},
    "server": {"binary": str, "load_mode": str, "page_cache": str},
    "metrics": {"textfile_dir": str, "interval": (str, int, float)},
}
_MODEL_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str, "path": str, "args": list, "unit": str, "autostart": bool,
    "restart": str, "numa": (str, int, list), "image": str, "container": str,
    "runtime": str, "runtime_args": list,
}
_TYPE_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false",
               dict: "a table", list: "a list"}


def _type_name(t: type | tuple[type, ...]) -> str:
    ts = t if isinstance(t, tuple) else (t,)
    return " or ".join(_TYPE_NAMES[x] for x in ts)


def _check_type(file: str, key: str, value: object, t: type | tuple[type, ...]) -> None:
    ts = t if isinstance(t, tuple) else (t,)
    if isinstance(value, bool) and bool not in ts:
        raise ConfigError(file, key, f"expected {_type_name(t)}, found {value!r}")
    if not isinstance(value, ts):
        raise ConfigError(file, key, f"expected {_type_name(t)}, found {type(value).__name__}")


def _check_models(file: str, body: object) -> None:
    """The [[model]] tables of one file: known keys, their types, names once."""
    if not isinstance(body, list):
        raise ConfigError(file, "model", "expected [[model]] tables")
    names: set[str] = set()
    for i, m in enumerate(body):
        where = f"model[{i}]"
        if not isinstance(m, dict):
            raise ConfigError(file, where, "expected a table")
        for key, value in m.items():
            if key not in _MODEL_KEYS:
                raise ConfigError(file, f"{where}.{key}", "unknown key (expected one of "
                                  f"{', '.join(_MODEL_KEYS)})")
            _check_type(file, f"{where}.{key}", value, _MODEL_KEYS[key])
        for req in ("name", "path"):
            if req not in m:
                raise ConfigError(file, f"{where}.{req}", "missing")
        name = m["name"]
        if name in names:
            raise ConfigError(file, f"{where}.name", f"duplicate model name '{name}'")
        names.add(name)


def _check_file(file: str, data: Mapping[str, Any]) -> None:
    """Unknown keys and wrong types, per file, so the message names the right file."""
    for section, body in data.items():
        if section == "model":
            _check_models(file, body)
            continue
        if section not in _SCHEMA:
            raise ConfigError(file, section, "unknown section (expected one of "
                              f"{', '.join([*_SCHEMA, 'model'])})")
        if not isinstance(body, dict):
            raise ConfigError(file, section, "expected a table")
        for key, value in body.items():
            if key not in _SCHEMA[section]:
                raise ConfigError(file, f"{section}.{key}", "unknown key (expected one of "
                                  f"{', '.join(_SCHEMA[section])})")
            _check_type(file, f"{section}.{key}", value, _SCHEMA[section][key])


def _read_toml(file: str, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(file, "", f"invalid TOML: {e}") from e
    except RecursionError as e:
        raise ConfigError(file, "", "invalid TOML: nested too deeply") from e


def _config_files(host: Host, explicit: str | None) -> list[tuple[str, str]]:
    """(name shown in messages, text) for each file, in the order they apply."""
    if explicit is not None:
        try:
            text = Host("/").read_config(os.path.abspath(explicit))
        except (HostError, ValueError) as e:
            raise ConfigError(explicit, "", str(e)) from e
        if text is None:
            raise ConfigError(explicit, "", "cannot read: No such file or directory")
        return [(explicit, text)]
    out: list[tuple[str, str]] = []
    for p in [MAIN_CONFIG, *host.glob(DROPIN_GLOB)]:
        try:
            text = host.read_config(p)
        except HostError as e:
            raise ConfigError(p, "", str(e)) from e
        if text is not None:
            out.append((p, text))
    return out


def _field(file: str, key: str, fn: Any, value: object) -> Any:
    try:
        return fn(value)
    except ValueError as e:
        raise ConfigError(file, key, str(e)) from e


def load(host: Host, explicit: str | None = None, models_present: bool = True) -> Config:
    """Read, merge and validate the configuration. Raises ConfigError. With
    models_present=False (release), a model file that is gone is no error."""
    merged: dict[str, dict[str, Any]] = {}
    origins: dict[str, str] = {}
    models: dict[str, tuple[str, int, dict[str, Any]]] = {}
    files = _config_files(host, explicit)
    for file, text in files:
        data = _read_toml(file, text)
        _check_file(file, data)
        for section, body in data.items():
            if section == "model":
                for i, m in enumerate(body):
                    models.pop(m["name"], None)  # a later file replaces, and reorders
                    models[m["name"]] = (file, i, m)
                continue
            for key, value in body.items():
                merged.setdefault(section, {})[key] = value
                origins[f"{section}.{key}"] = file
    return _build(merged, origins, models, tuple(f for f, _ in files), models_present,
                  nodes_online=tuple(pools.online_nodes(host)))


def _build(raw: dict[str, dict[str, Any]], origins: dict[str, str],
           models: Mapping[str, tuple[str, int, dict[str, Any]]],
           files: tuple[str, ...], models_present: bool = True, *,
           nodes_online: tuple[int, ...] = ()) -> Config:
    def src(key: str) -> str:
        return origins.get(key, "<defaults>")

    d = Config()  # the defaults: the dataclasses above are their one source

    def choice(key: str, default: str, allowed: tuple[str, ...]) -> str:
        section, name = key.split(".")
        value: str = raw.get(section, {}).get(name, default)
        if value not in allowed:
            raise ConfigError(src(key), key, f"'{value}' is not one of {', '.join(allowed)}")
        return value

    p = raw.get("pool", {})
    pool = d.pool
    page_size = _field(src("pool.page_size"), "pool.page_size", amounts.parse_page_size,
                       p["page_size"]) if "page_size" in p else pool.page_size
    size = pool.size
    if "size" in p and p["size"] != "auto":
        size = _field(src("pool.size"), "pool.size",
                      lambda v: amounts.parse_amount(v, allow_share=True), p["size"])
    headroom = pool.headroom
    if "headroom" in p:
        headroom = _field(src("pool.headroom"), "pool.headroom", amounts.parse_amount,
                          p["headroom"])
    limit = pool.limit
    if "limit" in p:
        limit = _field(src("pool.limit"), "pool.limit",
                       lambda v: amounts.parse_amount(v, allow_pages=False), p["limit"])
        if (limit.share is not None and limit.share <= 0) or limit.bytes == 0:
            raise ConfigError(src("pool.limit"), "pool.limit", "must be more than zero")
    nodes = _nodes(src("pool.nodes"), p.get("nodes", {}))

    enabled = choice("thp.enabled", d.thp.enabled, THP_MODES)
    defrag = choice("thp.defrag", d.thp.defrag, DEFRAG_MODES)

    r = raw.get("reserve", {})
    timeout = _field(src("reserve.timeout"), "reserve.timeout", amounts.parse_duration,
                     r["timeout"]) if "timeout" in r else d.reserve.timeout
    if timeout > 3600:
        raise ConfigError(src("reserve.timeout"), "reserve.timeout", "more than one hour")

    wrapper = _wrapper(raw.get("wrapper", {}), src, choice)

    binary = raw.get("server", {}).get("binary", d.server.binary)
    load_mode = choice("server.load_mode", d.server.load_mode, LOAD_MODES)
    page_cache = choice("server.page_cache", d.server.page_cache, PAGE_CACHE)
    pretouch = choice("reserve.pretouch", d.reserve.pretouch, PRETOUCH)
    if not binary.startswith("/"):
        raise ConfigError(src("server.binary"), "server.binary", "must be an absolute path")

    mt = raw.get("metrics", {})
    textfile_dir = mt.get("textfile_dir", d.metrics.textfile_dir)
    if textfile_dir and not textfile_dir.startswith("/"):
        raise ConfigError(src("metrics.textfile_dir"), "metrics.textfile_dir",
                          "must be an absolute path (or \"\" for no metrics file)")
    interval = _field(src("metrics.interval"), "metrics.interval", amounts.parse_duration,
                      mt["interval"]) if "interval" in mt else d.metrics.interval
    if not 1 <= interval <= 86400:
        raise ConfigError(src("metrics.interval"), "metrics.interval", "from 1s to 24h")

    return Config(
        files=files,
        pool=PoolConfig(page_size=page_size, size=size, headroom=headroom, limit=limit,
                        nodes=nodes),
        thp=ThpConfig(enabled=enabled, defrag=defrag),
        reserve=ReserveConfig(timeout=timeout, drop_caches=r.get("drop_caches",
                                                                 d.reserve.drop_caches),
                              pretouch=pretouch),
        wrapper=wrapper,
        server=ServerConfig(binary=binary, load_mode=load_mode, page_cache=page_cache),
        metrics=MetricsConfig(textfile_dir=textfile_dir, interval=interval),
        models=tuple(_model(f, i, m, models_present, nodes_online)
                     for f, i, m in models.values()),
        origins=tuple(Origin(k, f) for k, f in sorted(origins.items())),
    )


def _wrapper(w: Mapping[str, Any], src: Callable[[str], str],
             choice: Callable[[str, str, tuple[str, ...]], str]) -> WrapperConfig:
    """[wrapper], validated (src: the file that set a key; choice: a value
    checked against its allowed ones)."""
    d = WrapperConfig()
    min_size = _field(src("wrapper.min_size"), "wrapper.min_size",
                      lambda v: amounts.parse_amount(v, allow_pages=False, allow_share=False),
                      w["min_size"]).bytes if "min_size" in w else d.min_size
    if not min_size:
        raise ConfigError(src("wrapper.min_size"), "wrapper.min_size", "must be more than zero")
    alloc_raw = w.get("alloc_min_size")
    alloc_min = d.alloc_min_size if alloc_raw is None else 0 if alloc_raw in (
        "off", 0) else _field(
        src("wrapper.alloc_min_size"), "wrapper.alloc_min_size",
        lambda v: amounts.parse_amount(v, allow_pages=False, allow_share=False),
        alloc_raw).bytes
    threads = w.get("threads", d.threads)
    if not 0 <= threads <= 256:
        raise ConfigError(src("wrapper.threads"), "wrapper.threads", "must be from 0 to 256")
    library = w.get("library", d.library)
    if library and not library.startswith("/"):
        raise ConfigError(src("wrapper.library"), "wrapper.library", "must be an absolute path")
    return WrapperConfig(library=library, min_size=min_size, alloc_min_size=alloc_min,
                         page_size=choice("wrapper.page_size", d.page_size, WRAPPER_PAGE),
                         strict=w.get("strict", d.strict),
                         log=choice("wrapper.log", d.log, WRAPPER_LOG),
                         threads=threads)


def _nodes(file: str, nodes: Mapping[str, Any]) -> tuple[tuple[int, float], ...]:
    out: list[tuple[int, float]] = []
    for key, value in nodes.items():
        where = f"pool.nodes.{key}"
        if not NODE_KEY_RE.fullmatch(key):
            raise ConfigError(file, where, "a NUMA node number is expected as the key")
        share = amounts.parse_percent(value) if isinstance(value, str) else None
        if share is None:
            raise ConfigError(file, where, "expected a share of the pool such as \"50%\"")
        out.append((int(key), share))
    if out and abs(sum(s for _, s in out) - 1.0) > 1e-6:
        total = sum(s for _, s in out) * 100
        raise ConfigError(file, "pool.nodes", f"the shares add up to {total:g}%, not 100%")
    return tuple(sorted(out))


def _numa(file: str, key: str, value: object,
          online: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
    """model.numa: "auto", "interleave", "off", a node (1) or nodes ([0, 1])."""
    if isinstance(value, str):
        if value not in NUMA_MODES:
            raise ConfigError(file, key, f"{value!r} is not one of "
                              + ", ".join(f'"{v}"' for v in NUMA_MODES)
                              + ", a node number or a list of node numbers")
        return value, ()
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ConfigError(file, key, "an empty list of nodes")
    nodes: list[int] = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(file, key, f"{v!r} is not a NUMA node number")
        known = online or (0,)
        if v not in known:
            raise ConfigError(file, key, f"NUMA node {v} does not exist on this host "
                              f"(online: {', '.join(map(str, known))})")
        if v not in nodes:
            nodes.append(v)
    return "nodes", tuple(sorted(nodes))


def _model(file: str, index: int, m: Mapping[str, Any],
           present: bool = True, nodes_online: tuple[int, ...] = ()) -> ModelConfig:
    where = f"model[{index}]"
    name = m["name"]
    if not MODEL_NAME_RE.fullmatch(name):
        raise ConfigError(file, f"{where}.name", f"{name!r} is not a valid model name: use "
                          "letters, digits, '.', '_' and '-' (at most 64, not starting with "
                          "a punctuation mark); it becomes a systemd unit name")
    path = m["path"]
    if not path.startswith("/"):
        raise ConfigError(file, f"{where}.path", f"'{path}' is not an absolute path")
    if "\0" in path:
        raise ConfigError(file, f"{where}.path", "contains a NUL character")
    size = 0
    try:
        st = Path(path).stat()
        size = st.st_size
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(file, f"{where}.path", f"'{path}' is not a regular file")
    except OSError as e:
        if present:
            raise ConfigError(file, f"{where}.path", f"model file '{path}' cannot be used: "
                              f"{e.strerror or e}") from e
    base = ModelConfig(name=name, path=path, size=0)  # its defaults
    args = m.get("args", list(base.args))
    for j, a in enumerate(args):
        if not isinstance(a, str):
            raise ConfigError(file, f"{where}.args[{j}]", "expected a string")
        if "\0" in a:
            raise ConfigError(file, f"{where}.args[{j}]", "contains a NUL character")
    unit = m.get("unit")
    if unit is not None and not UNIT_NAME_RE.fullmatch(unit):
        raise ConfigError(file, f"{where}.unit", f"{unit!r} is not a valid .service unit name")
    if unit is not None and FORBIDDEN_UNIT_RE.fullmatch(unit):
        raise ConfigError(file, f"{where}.unit", f"{unit!r} must not be managed: the agent "
                          "would preload its library into it (the agent's own, systemd's, "
                          "D-Bus's and users' units are refused)")
    restart = m.get("restart", base.restart)
    if restart not in RESTART_MODES:
        raise ConfigError(file, f"{where}.restart", f"{restart!r} is not one of "
                          + ", ".join(f'"{r}"' for r in RESTART_MODES))
    numa, numa_nodes = _numa(file, f"{where}.numa", m.get("numa", base.numa), nodes_online)
    image, container, runtime, runtime_args = _container(file, where, m)
    return ModelConfig(name=name, path=path, size=size, args=tuple(args), unit=unit,
                       autostart=m.get("autostart", base.autostart), restart=restart, numa=numa,
                       numa_nodes=numa_nodes, image=image, container=container,
                       runtime=runtime, runtime_args=runtime_args)


def _container(file: str, where: str, m: Mapping[str, Any]
               ) -> tuple[str | None, str | None, str | None, tuple[str, ...]]:
    """model.image, model.container, model.runtime and model.runtime_args."""
    image, container = m.get("image"), m.get("container")
    given = [k for k in ("unit", "image", "container") if k in m]
    if len(given) > 1:
        raise ConfigError(file, f"{where}.{given[1]}", f"cannot be set with {given[0]}: a model "
                          "is served by one of the template unit, its own unit (unit), an "
                          "image the agent runs (image) or a container the operator runs "
                          "(container)")
    if image is not None and (not IMAGE_RE.fullmatch(image) or "//" in image):
        raise ConfigError(file, f"{where}.image", f"{image!r} is not a container image "
                          "reference (such as ghcr.io/ggml-org/llama.cpp:server)")
    if container is not None and not CONTAINER_RE.fullmatch(container):
        raise ConfigError(file, f"{where}.container", f"{container!r} is not a container name: "
                          "use letters, digits, '_', '.' and '-', not starting with a "
                          "punctuation mark")
    runtime = m.get("runtime")
    if runtime is not None:
        if image is None and container is None:
            raise ConfigError(file, f"{where}.runtime", "only for a model with image or "
                              "container")
        if runtime not in RUNTIMES:
            raise ConfigError(file, f"{where}.runtime", f"{runtime!r} is not one of "
                              + ", ".join(f'"{r}"' for r in RUNTIMES))
    runtime_args = m.get("runtime_args", [])
    if runtime_args and image is None:
        raise ConfigError(file, f"{where}.runtime_args", "only for a model with image")
    for j, a in enumerate(runtime_args):
        if not isinstance(a, str):
            raise ConfigError(file, f"{where}.runtime_args[{j}]", "expected a string")
        if "\0" in a or not a.startswith("-"):
            raise ConfigError(file, f"{where}.runtime_args[{j}]", f"{a!r} is not an option "
                              "of the runtime's run (each starts with '-', such as "
                              "\"--cpus=8\"; the image and the server's args are the agent's)")
    return image, container, runtime, tuple(runtime_args)
