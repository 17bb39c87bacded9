"""File selection with huggingface_hub's `allow_patterns`/`ignore_patterns` semantics."""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatch
from typing import Any


def as_patterns(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _normalize(pattern: str) -> str:
    # As in huggingface_hub: "folder/" means everything below it.
    return pattern + "*" if pattern.endswith("/") else pattern


def glob_problem(pattern: Any) -> str | None:
    """Why a glob is unusable, or None when it is fine."""
    if not isinstance(pattern, str) or not pattern:
        return "expected a non-empty glob string"
    if "\x00" in pattern:
        return "a glob cannot contain a NUL byte"
    depth = 0
    for char in pattern:
        if char == "[":
            depth += 1
        elif char == "]" and depth:
            depth -= 1
    if depth:
        return f"unclosed '[' in glob {pattern!r}"
    return None


def selected(path: str, include: list[str] | None, exclude: list[str] | None) -> bool:
    if include is not None and not any(fnmatch(path, _normalize(p)) for p in include):
        return False
    return not (exclude is not None and any(fnmatch(path, _normalize(p)) for p in exclude))


def select(paths: Iterable[str], include: Any = None, exclude: Any = None) -> list[str]:
    inc, exc = as_patterns(include), as_patterns(exclude)
    return [p for p in paths if selected(p, inc, exc)]
