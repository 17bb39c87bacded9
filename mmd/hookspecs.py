"""The source plugin contract.

A plugin is a module or object with functions marked `@mmd.hookimpl`. It ships in a
distribution with an entry point in the group `mmd` (see plugins/README.md). The
built-in sources `huggingface`, `github`, `http` and `local` are plugins of exactly this shape.

A source only *resolves* (which version, which files, sizes, digests, URLs) and, when
plain HTTP cannot reach its bytes, *fetches* one file into a sink it is given. Staging,
resume bookkeeping, hashing, verification, atomic switch-in, the registry and retries
belong to the core.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

from mmd.types import ModelSpec, Release, RemoteFile

if TYPE_CHECKING:
    from mmd.config import Settings

hookspec = pluggy.HookspecMarker("mmd")
hookimpl = pluggy.HookimplMarker("mmd")


@dataclass(frozen=True)
class KeyRule:
    """One manifest key a source accepts.

    `kind` is one of: "str", "url", "sha256", "int", "bool", "globs" (a glob or a list
    of globs), "path" (a local filesystem path), "name" (a safe single file name).
    """

    kind: str
    required: bool = False
    help: str = ""


@dataclass(frozen=True)
class SourceContext:
    """What the core hands a source: settings (secrets stay wrapped) and environment."""

    settings: Settings
    env: Mapping[str, str] = field(default_factory=dict)


class Sink(Protocol):
    """Where a source's own `fetch` writes bytes. The core hashes them as they arrive.

    `offset` is how many bytes are already there from an earlier, interrupted fetch:
    continue from that byte, or call `reset()` to start over.
    """

    @property
    def offset(self) -> int: ...

    def write(self, data: bytes) -> None: ...

    def reset(self) -> None: ...

    def existing(self) -> Iterator[bytes]:
        """The bytes already there (before `offset`), for a source's own digest check."""
        ...


ResolveFn = Callable[[ModelSpec, SourceContext], Release]
FetchFn = Callable[[ModelSpec, RemoteFile, Sink, SourceContext], None]
ValidateFn = Callable[[Mapping[str, Any]], Iterable[tuple[str, str]]]


@dataclass(frozen=True)
class Source:
    """A source of models, as a plugin declares it.

    - `name`: the manifest's `source:` value; unique across installed plugins.
    - `keys`: the manifest keys this source accepts beyond the common ones.
    - `resolve(spec, ctx) -> Release`: blocking is fine (it runs in a worker thread).
      Raise `mmd.errors.SourceError` with a one-line message on failure.
    - `fetch(spec, file, sink, ctx)`: optional; when absent the core downloads
      `file.url` with `file.headers` over HTTP (resumable, retried).
    - `validate(options) -> [(key, message)]`: optional checks across keys, run after
      each key's `kind` was checked.
    - `pinned_version(spec) -> str | None`: optional, no network; the version a spec
      pins for good (a commit sha). When the registry already holds that version, whole
      and unchanged, the core skips `resolve` entirely.
    """

    name: str
    resolve: ResolveFn
    keys: Mapping[str, KeyRule] = field(default_factory=dict)
    fetch: FetchFn | None = None
    validate: ValidateFn | None = None
    pinned_version: Callable[[ModelSpec], str | None] | None = None
    description: str = ""


@hookspec
def mmd_sources() -> list[Source]:  # type: ignore[empty-body]
    """Return the sources this plugin provides.

    :return: a list of :class:`Source`; an empty list is fine.
    """
