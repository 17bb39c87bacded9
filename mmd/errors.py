"""Errors that reach users: one line of message, an optional hint, an exit code."""

from __future__ import annotations


class MmdError(Exception):
    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(MmdError):
    """Bad configuration or usage: exit code 2."""

    exit_code = 2


class ManifestError(MmdError):
    """A manifest with one or more problems; each problem is a `file:line:col: msg` line."""

    exit_code = 1

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class UnsafePathError(MmdError):
    """A file name from a source that would escape or abuse the model folder."""


class InsufficientSpaceError(MmdError):
    pass


class StorageLockedError(MmdError):
    pass


class PluginError(MmdError):
    exit_code = 2


class SourceError(MmdError):
    """A source could not resolve a model (not found, no access, bad answer)."""


class OfflineError(SourceError):
    """The source was told not to use the network (e.g. HF_HUB_OFFLINE) and needs it."""


class DownloadError(MmdError, OSError):
    """A transfer failed. `retryable` says whether trying again later may help."""

    def __init__(self, message: str, hint: str | None = None, *, retryable: bool = True) -> None:
        super().__init__(message, hint)
        self.retryable = retryable


class ChecksumError(DownloadError):
    def __init__(self, path: str, expected: str, actual: str, algo: str = "sha256") -> None:
        super().__init__(
            f"{path}: {algo} mismatch: expected {expected}, got {actual}", retryable=False
        )
        self.expected = expected
        self.actual = actual
