"""Errors that end a command with one clear line instead of a traceback."""

from __future__ import annotations


class EatlabError(Exception):
    """A user-facing error: the CLI prints `error: <message>` and exits with status 2."""

    exit_code = 2


class DataError(EatlabError):
    """Bad input data; the message names the file and, where known, the line (1-based)."""

    def __init__(self, path: object, message: str, line: int | None = None):
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


class ConfigError(EatlabError):
    """Bad configuration; the message names the key."""


class RequestsFailed(EatlabError):
    """Most model requests of a job failed after their retries: a failed job (exit status 1), not a score."""

    exit_code = 1

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.details = details or {}
