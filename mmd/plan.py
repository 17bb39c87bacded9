"""Plan: compare what the manifest wants with what the registry and disk show.

Level-triggered: every pass starts from scratch, so a missed event, a crash or a
hand-deleted file is healed by the next pass.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from mmd.errors import MmdError, OfflineError, UnsafePathError
from mmd.hookspecs import SourceContext
from mmd.manifest import Manifest
from mmd.plugins import Plugins
from mmd.registry import Registry
from mmd.storage import Storage, validate_relpath
from mmd.types import ModelEntry, ModelSpec, ModelStatus, Release, State, spec_digest

CUSTOM_SOURCE = "custom"


class ActionKind(StrEnum):
    FETCH = "fetch"
    UPDATE = "update"
    REMOVE = "remove"
    NOTHING = "nothing"
    ERROR = "error"


@dataclass
class Action:
    kind: ActionKind
    model_id: str
    source: str
    reason: str
    spec: ModelSpec | None = None
    release: Release | None = None

    @property
    def total_bytes(self) -> int | None:
        if self.release is None:
            return None
        sizes = [f.size for f in self.release.files]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)

    def to_json(self) -> dict[str, object]:
        return {
            "action": str(self.kind),
            "model_id": self.model_id,
            "source": self.source,
            "reason": self.reason,
            "version": self.release.version if self.release else None,
            "files": len(self.release.files) if self.release else None,
            "bytes": self.total_bytes,
        }


def _disk_drift(entry: ModelEntry, storage: Storage) -> str | None:
    """A file missing or resized on disk since it was registered (stat only, no hashing)."""
    folder = storage.model_dir(entry.source, entry.model_id)
    if not folder.is_dir():
        return "its folder is missing"
    for file in entry.files:
        try:
            size = os.stat(folder / file.path).st_size
        except OSError:
            return f"{file.path} is missing on disk"
        if size != file.size:
            return f"{file.path} changed size on disk ({file.size} -> {size} bytes)"
    return None


def _check_release(release: Release) -> None:
    seen: set[str] = set()
    for file in release.files:
        validate_relpath(file.path)
        if file.path in seen:
            raise UnsafePathError(f"file name {file.path!r} appears twice")
        seen.add(file.path)
    # "a" and "a/b" cannot both be files.
    for path in seen:
        parts = path.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in seen:
                raise UnsafePathError(f"{'/'.join(parts[:i])!r} is both a file and a folder")


def _present_action(
    spec: ModelSpec, release: Release, registry: Registry, storage: Storage
) -> Action:
    entry = registry.get(spec.model_id)
    version = release.version

    def act(kind: ActionKind, reason: str) -> Action:
        return Action(kind, spec.model_id, spec.source, reason, spec, release)

    if entry is None or entry.status is ModelStatus.DELETED:
        return act(ActionKind.FETCH, "not in storage")
    if entry.source == CUSTOM_SOURCE and spec.source != CUSTOM_SOURCE:
        # Replacing it would delete a folder someone dropped in by hand.
        return act(
            ActionKind.ERROR,
            f"id {spec.model_id!r} is taken by the hand-made folder custom/{spec.model_id}; "
            "rename one of them",
        )
    if entry.source != spec.source:
        # An update: the copy from the old source stays available until the new one is in.
        kind = ActionKind.UPDATE if entry.status is ModelStatus.AVAILABLE else ActionKind.FETCH
        return act(kind, f"source changed from {entry.source} to {spec.source}")
    if entry.status is not ModelStatus.AVAILABLE:
        why = f"last attempt failed: {entry.error}" if entry.error else f"status {entry.status}"
        return act(ActionKind.FETCH, why)
    if entry.version != version:
        return act(ActionKind.UPDATE, f"version {entry.version} -> {version}")
    if entry.spec_digest != spec_digest(spec):
        return act(ActionKind.UPDATE, "manifest settings changed (source keys)")
    if drift := _disk_drift(entry, storage):
        return act(ActionKind.UPDATE, drift)
    if entry.error:
        # The source answers again and nothing changed: the error is history.
        return act(ActionKind.NOTHING, f"up to date at {version}; clears: {entry.error}")
    return act(ActionKind.NOTHING, f"up to date at {version}")


async def _resolve(spec: ModelSpec, plugins: Plugins, ctx: SourceContext) -> Release:
    source = plugins.source(spec.source)
    try:
        release = await asyncio.to_thread(source.resolve, spec, ctx)
    except MmdError:
        raise
    except Exception as exc:  # a plugin's bug must not take the pass down
        raise MmdError(f"source {spec.source!r} failed: {type(exc).__name__}: {exc}") from exc
    _check_release(release)
    return release


def _whole(
    entry: ModelEntry | None, spec: ModelSpec, storage: Storage, *, errors_ok: bool = False
) -> bool:
    """The registry holds this spec's model, available, as the manifest asks, unchanged.

    `errors_ok`: an earlier failed check (hub down) does not make the copy less whole.
    """
    return (
        entry is not None
        and entry.status is ModelStatus.AVAILABLE
        and entry.source == spec.source
        and (errors_ok or not entry.error)
        and entry.spec_digest == spec_digest(spec)
        and _disk_drift(entry, storage) is None
    )


async def plan(
    manifest: Manifest,
    registry: Registry,
    storage: Storage,
    plugins: Plugins,
    ctx: SourceContext,
    *,
    only: Iterable[str] | None = None,
    prune: bool = False,
    deferred: Mapping[str, str] | None = None,
) -> list[Action]:
    """One action per manifest model (and per registered model the manifest dropped).

    `deferred`: models to leave alone this pass (failing, waiting for their retry time),
    each with the reason to show; they cost no network.
    """
    deferred = deferred or {}
    wanted = set(only) if only is not None else None
    specs = [s for s in manifest.models.values() if wanted is None or s.model_id in wanted]

    async def one(spec: ModelSpec) -> Action:
        entry = registry.get(spec.model_id)
        source = plugins.sources.get(spec.source)
        if spec.state is State.PRESENT and spec.model_id in deferred:
            reason = deferred[spec.model_id]
            return Action(ActionKind.NOTHING, spec.model_id, spec.source, reason, spec)
        if (
            spec.state is State.PRESENT
            and source is not None
            and source.pinned_version is not None
            and _whole(entry, spec, storage)
        ):
            # An immutable version already here, whole: no network, no hashing.
            pinned = source.pinned_version(spec)
            if entry is not None and pinned is not None and pinned == entry.version:
                reason = f"up to date at {pinned} (pinned)"
                return Action(ActionKind.NOTHING, spec.model_id, spec.source, reason, spec)
        if spec.state is State.ABSENT and entry is not None and entry.source == CUSTOM_SOURCE:
            reason = "state: absent ignored: mmd never deletes folders in custom/"
            return Action(ActionKind.NOTHING, spec.model_id, CUSTOM_SOURCE, reason, spec)
        if spec.state is State.ABSENT:
            where = entry.source if entry else spec.source
            on_disk = storage.model_dir(where, spec.model_id).exists()
            if on_disk or (entry is not None and entry.status is not ModelStatus.DELETED):
                return Action(ActionKind.REMOVE, spec.model_id, where, "state: absent", spec)
            return Action(ActionKind.NOTHING, spec.model_id, where, "absent", spec)
        try:
            release = await _resolve(spec, plugins, ctx)
        except OfflineError as exc:
            if _whole(entry, spec, storage, errors_ok=True):
                assert entry is not None
                reason = f"offline, keeping {entry.version} ({exc.message})"
                return Action(ActionKind.NOTHING, spec.model_id, spec.source, reason, spec)
            return Action(ActionKind.ERROR, spec.model_id, spec.source, str(exc), spec)
        except MmdError as exc:
            return Action(ActionKind.ERROR, spec.model_id, spec.source, str(exc), spec)
        return _present_action(spec, release, registry, storage)

    actions = list(await asyncio.gather(*(one(s) for s in specs)))
    if wanted is None:
        for entry in registry.query():
            if entry.model_id in manifest.models or entry.status is ModelStatus.DELETED:
                continue
            if entry.source == CUSTOM_SOURCE:
                continue  # dropped in by hand: never deleted by mmd
            if prune:
                reason = "not in the manifest (prune: true)"
                actions.append(Action(ActionKind.REMOVE, entry.model_id, entry.source, reason))
            else:
                reason = "not in the manifest; kept (prune is off)"
                actions.append(Action(ActionKind.NOTHING, entry.model_id, entry.source, reason))
    return actions
