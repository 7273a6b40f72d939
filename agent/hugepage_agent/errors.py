"""The agent's error hierarchy. Exit codes are chosen in cli.py only."""

from __future__ import annotations


class AgentError(Exception):
    """An expected failure: reported as one message, never as a traceback."""


class ConfigError(AgentError):
    """Invalid configuration. Carries the file and the key it concerns."""

    def __init__(self, file: str, key: str, message: str) -> None:
        self.file = file
        self.key = key
        self.message = message
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {message}")


class HostError(AgentError):
    """The host could not be read or changed as needed."""


class PermissionDenied(AgentError):
    """An operation that changes the host was asked for by a non-root user."""
