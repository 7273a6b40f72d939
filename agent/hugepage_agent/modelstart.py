"""One start of a model's server: how it loads its weights this time.

The choice depends on what the page cache holds of the model file right now
(loadmode.at_start), and only a caller that owns the file, may write it or
has CAP_FOWNER is told that truthfully (pagecache). So the template unit runs
`hugepage-agent prepare-model NAME` first, as root (`ExecStartPre=+`): it
measures, decides, drops from the page cache what direct I/O will not use,
and records the choice in /run/hugepage-agent/start/NAME.json. Then
`run-model NAME`, as the servers' unprivileged user, execs llama-server with
that choice, and, after a buffered load, has the wrapper drop the file from
the page cache (HUGEPAGE_WRAPPER_DROP_CACHE). `hugepage-agent exec` makes the
same choice in one step, as whoever runs it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence

from hugepage_agent import config, consts, loadmode, pagecache, serverargs, startrecord, unitfiles
from hugepage_agent.errors import AgentError, HostError
from hugepage_agent.host import Host
from hugepage_agent.loadmode import LoadMode, StartChoice

log = logging.getLogger(__name__)

FRESH_SECONDS = 600.0  # a recorded choice older than this is not this start's
DROP_ENV = consts.ENV_DROP_CACHE


def choose(lm: LoadMode, path: str, page_cache: str) -> StartChoice:
    """Measure, decide, and drop before the start what direct I/O will not use."""
    res = pagecache.residency(path)
    choice = loadmode.at_start(lm, res, page_cache)
    if choice.drop_before:
        pagecache.drop(path)
    return choice


def read_model_file(host: Host, name: str) -> unitfiles.ModelFile:
    if not config.MODEL_NAME_RE.fullmatch(name):
        raise AgentError(f"{name!r} is not a valid model name")
    path = unitfiles.model_file(name)
    text = host.read_optional(path)
    if text is None:
        raise AgentError(f"no model '{name}': {path} does not exist (is it configured, "
                         "and has hugepage-agent.service run?)")
    try:
        return unitfiles.parse_model_file(text)
    except (ValueError, KeyError, TypeError) as e:
        raise AgentError(f"{path}: malformed model file ({e})") from e


def prepare(host: Host, name: str) -> StartChoice | None:
    """What the unit's privileged ExecStartPre runs: this start's load choice
    (None for a model file that leaves it to the server, or the operator's own
    unit), recorded with what the start runs with (startrecord)."""
    mf = read_model_file(host, name)
    unit = mf.unit or (f"llama-container@{name}.service" if mf.image is not None
                       else f"llama-server@{name}.service")
    record = startrecord.make(host, mf, unit, os.environ)
    refused = None
    if mf.image is not None:
        from hugepage_agent import containerstart, preload

        library = preload.listed(os.environ.get(consts.PRELOAD_ENV, ""))
        checked = containerstart.check_image(name, mf.runtime, mf.image, mf.model,
                                             library[0] if library else None)
        refused = checked.refused
        record.update(image=mf.image, image_id=checked.image_id, refused=refused)
    choice = None
    if mf.load is not None:
        choice = choose(mf.load, mf.model, mf.page_cache)
        record.update(args=list(choice.args), mode=choice.mode, why=choice.why,
                      drop_after=choice.drop_after)
    try:
        startrecord.write(host, name, record)
    except HostError as e:
        log.warning("model %s: cannot record this start (%s); status cannot tell whether it "
                    "runs the configuration, and the server measures the page cache itself",
                    name, e)
    # after the record: a fixed configuration then counts as a change to restart for
    if refused is not None:
        from hugepage_agent.preload import PreloadError

        raise PreloadError(refused)
    if mf.image is None:
        _check_preload(mf, os.environ)
    return choice


def _check_preload(mf: unitfiles.ModelFile, env: Mapping[str, str]) -> None:
    """Raises PreloadError when the library the drop-in preloads would not load
    into the server: the template's binary, or the program of an operator's
    own unit (in its RootDirectory=), as systemd says. Here, not in run-model:
    this runs without the wrapper, which a large read would go through."""
    from hugepage_agent import preload, systemd

    library = preload.listed(env.get(consts.PRELOAD_ENV, ""))
    if not library:
        return
    binary: str | None = mf.binary
    root = "/"
    if mf.unit is not None:
        try:
            binary, root = systemd.Systemd(systemd.system_bus()).exec_info(mf.unit)
        except AgentError:
            binary, root = None, "/"
    preload.check(library[0], binary, root)


def _recorded(host: Host, name: str, mf: unitfiles.ModelFile) -> StartChoice | None:
    data = startrecord.read(host, name)
    if data is None:
        return None
    try:
        fresh = 0 <= time.time() - float(data["time"]) <= FRESH_SECONDS
        args = data["args"]
        ok = (fresh and data["identity"] == startrecord.identity(mf.model)
              and isinstance(args, list) and all(isinstance(a, str) for a in args)
              and isinstance(data["mode"], str) and isinstance(data["why"], str))
        if not ok or mf.load is None or tuple(args) not in (mf.load.added, mf.load.cached):
            return None  # stale, another file, or not one of the model file's choices
        return StartChoice(tuple(args), data["mode"], data["why"], drop_before=False,
                           drop_after=bool(data["drop_after"]))
    except (KeyError, TypeError, ValueError):
        return None


def run_command(host: Host, name: str) -> tuple[list[str], dict[str, str]]:
    """What run-model execs: the argv and the environment it adds."""
    mf = read_model_file(host, name)
    if mf.unit is not None:
        raise AgentError(f"model {name} is served by its own unit {mf.unit}, not run-model")
    if mf.image is not None:
        raise AgentError(f"model {name} is served from image {mf.image} by "
                         f"llama-container@{name}.service, not run-model")
    added, extra = _this_start(host, name, mf)
    return mf.argv(added), extra


def _this_start(host: Host, name: str,
                mf: unitfiles.ModelFile) -> tuple[tuple[str, ...], dict[str, str]]:
    """This start's load mode arguments, and the environment that says why."""
    if mf.load is None:
        return (), {}
    choice = _recorded(host, name, mf) or choose(mf.load, mf.model, mf.page_cache)
    return choice.args, choice_env(choice, mf.model)


def container_command(host: Host, name: str
                      ) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """What run-container execs: the runtime's `run` and its whole environment;
    and this start's load choice (the environment that says it, in the
    container's)."""
    from hugepage_agent import containerstart

    mf = read_model_file(host, name)
    if mf.image is None:
        raise AgentError(f"model {name} has no image: llama-server@{name}.service serves it")
    added, extra = _this_start(host, name, mf)
    return (*containerstart.run_command(host, name, mf, added, extra), extra)


def choice_env(choice: StartChoice, model_path: str) -> dict[str, str]:
    env = {loadmode.ENV_CHOICE: choice.summary()}
    if choice.drop_after:
        env[DROP_ENV] = model_path
    return env


def model_path_in(args: Sequence[str]) -> str | None:
    """The --model of a llama-server command line."""
    return serverargs.value(args, "-m", "--model")
