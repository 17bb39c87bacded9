"""Source plugins that exist only for tests: they answer whatever the test says."""

from __future__ import annotations

from collections.abc import Sequence

from mmd.hookspecs import Source, SourceContext, hookimpl
from mmd.types import ModelSpec, Release, RemoteFile


class StaticSource:
    """`source: <name>` resolving to a fixed list of files (URLs on a local server)."""

    def __init__(self, name: str, files: Sequence[RemoteFile], version: str = "v1") -> None:
        self.name = name
        self.files = tuple(files)
        self.version = version
        self.__name__ = f"static-{name}"

    def resolve(self, spec: ModelSpec, ctx: SourceContext) -> Release:
        return Release(version=self.version, files=self.files)

    @hookimpl
    def mmd_sources(self) -> list[Source]:
        return [Source(name=self.name, resolve=self.resolve, description="test source")]
