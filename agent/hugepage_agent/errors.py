"""The agent's error hierarchy. Exit codes are chosen in cli.py only."""

from __future__ import annotations

import unicodedata


def printable(text: str) -> str:
    """Text for one line of a message or log: control, format and separator
    characters (newlines, escapes, U+001E, U+2028...) written as escapes, so
    that a hostile key or value cannot split or forge a line."""
    out = []
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


class AgentError(Exception):
    """An expected failure: reported as one message, never as a traceback."""


class ConfigError(AgentError):
    """Invalid configuration. Carries the file and the key it concerns."""

    def __init__(self, file: str, key: str, message: str) -> None:
        self.file = file
        self.key = key
        self.message = message
        where = f"{file}: {key}" if key else file
        super().__init__(printable(f"{where}: {message}"))


class HostError(AgentError):
    """The host could not be read or changed as needed. `errno` (when an
    OSError was the cause) and `path` let callers tell the kinds apart without
    reading the message."""

    def __init__(self, message: str, *, errno: int | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.errno = errno
        self.path = path


class PermissionDenied(AgentError):
    """An operation that changes the host was asked for by a non-root user."""
