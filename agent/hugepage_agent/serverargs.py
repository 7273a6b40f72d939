"""Reading llama-server's command line: the one owner of how an option's
value is found (`--flag VALUE` or `--flag=VALUE`; a later one wins, as in
llama.cpp's own parser)."""

from __future__ import annotations

from collections.abc import Sequence


def value(args: Sequence[str], *names: str) -> str | None:
    """The value of the last of `names` in `args`; None when none is given
    (or the last one has no value)."""
    found = None
    for i, a in enumerate(args):
        flag, eq, v = a.partition("=")
        if flag in names:
            found = v if eq else (args[i + 1] if i + 1 < len(args) else None)
    return found


def has(args: Sequence[str], *names: str) -> bool:
    return any(a.partition("=")[0] in names for a in args)
