"""Keeps the registry true to the disk between passes.

The storage watch names paths that changed; this module decides what they mean:
- a file of an available model deleted, resized or re-written (its mtime moved and
  its sha256 no longer matches) marks the model `error` and asks for a pass, which
  repairs it;
- a folder dropped into `custom/` is hashed in a thread and registered `available`; a
  folder removed from there is marked `deleted`. mmd never deletes anything in `custom/`.
A periodic `rescan()` does the same for every model, since watch events can be lost.
Models the running pass is changing are left alone until it ends.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from mmd.manifest import id_problem
from mmd.plan import CUSTOM_SOURCE
from mmd.registry import Registry, utc_now
from mmd.storage import Storage, hash_file, list_files
from mmd.sync import SyncEvents
from mmd.types import FileEntry, ModelEntry, ModelStatus, ModelType

log = logging.getLogger(__name__)

QUIET_S = 1.0  # a custom/ folder must stay unchanged this long before it is hashed

# (size, mtime_ns) of each file when it was last known good.
Stamps = dict[str, tuple[int, int]]


def _custom_id_ok(model_id: str) -> bool:
    """Hidden folders, `lost+found` and names that are no valid model id are not models."""
    if any(part.startswith(".") or part == "lost+found" for part in model_id.split("/")):
        return False
    problem = id_problem(model_id)
    if problem is not None and model_id not in _TOLD:
        _TOLD.add(model_id)
        log.warning("custom/%s: not registered: %s", model_id, problem)
    return problem is None


_TOLD: set[str] = set()


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _inspect(entry: ModelEntry, stamps: Stamps) -> tuple[str | None, Stamps]:
    """The first problem with a model's files, and fresh stamps of the good ones.

    Stat only, unless a file's mtime moved: then it is re-hashed.
    """
    folder = Path(entry.path)
    fresh: Stamps = {}
    for f in entry.files:
        stamp = _stamp(folder / f.path)
        if stamp is None:
            return f"{f.path} is missing on disk", fresh
        if stamp[0] != f.size:
            return f"{f.path} changed size on disk ({f.size} -> {stamp[0]} bytes)", fresh
        known = stamps.get(f.path)
        moved = known is not None and known != stamp
        if moved and f.sha256 and hash_file(folder / f.path) != f.sha256:
            return f"{f.path} changed on disk (sha256 mismatch)", fresh
        fresh[f.path] = stamp
    return None, fresh


def _hash_folder(folder: Path, old: dict[str, FileEntry], stamps: Stamps) -> tuple[list, Stamps]:
    """FileEntries of a custom folder, re-hashing only files whose stamp moved."""
    files: list[FileEntry] = []
    fresh: Stamps = {}
    for rel, size in list_files(folder):
        stamp = _stamp(folder / rel)
        if stamp is None:
            continue
        before = old.get(rel)
        if before is not None and stamps.get(rel) == stamp and before.sha256:
            sha = before.sha256
        else:
            sha = hash_file(folder / rel)
        files.append(FileEntry(rel, size, sha))
        fresh[rel] = stamp
    return files, fresh


def _snapshot(folder: Path) -> Stamps:
    return {rel: s for rel, _ in list_files(folder) if (s := _stamp(folder / rel)) is not None}


class DiskMonitor:
    def __init__(
        self,
        registry: Registry,
        storage: Storage,
        events: SyncEvents,
        on_damage: Callable[[str], None],
    ) -> None:
        self.registry = registry
        self.storage = storage
        self.events = events
        self.on_damage = on_damage
        self.busy: set[str] = set()
        self._stamps: dict[str, Stamps] = {}
        self._dirty: set[str] = set()
        self._custom_dirty = False
        self._lock = asyncio.Lock()
        self._custom_lock = asyncio.Lock()

    # -- hints from the storage watch ---------------------------------------

    def owner(self, rel: str) -> str | None:
        """The registered model a storage-relative path belongs to, if any."""
        parts = rel.split("/")
        if len(parts) < 2:
            return None
        for model_id in ("/".join(parts[1:3]), parts[1]):
            entry = self.registry.get(model_id)
            if entry is not None and entry.source == parts[0]:
                return model_id
        return None

    def hint(self, rel: str) -> None:
        if rel.split("/")[0] == CUSTOM_SOURCE:
            self._custom_dirty = True
        elif (model_id := self.owner(rel)) is not None:
            self._dirty.add(model_id)
        elif len(parts := rel.split("/")) == 2:
            # An organisation folder moved or deleted whole: every model below it.
            self._dirty.update(
                e.model_id
                for e in self.registry.models.values()
                if e.source == parts[0] and e.model_id.split("/")[0] == parts[1]
            )

    def pending_outside(self, busy: set[str]) -> bool:
        """Work left that a check could do now (models a pass is changing must wait)."""
        return self._custom_dirty or bool(self._dirty - busy)

    # -- checks ---------------------------------------------------------------

    async def baseline(self, model_ids: list[str] | None = None) -> None:
        """Remember the stamps of available models' files, as known good."""
        entries = [
            e
            for e in self.registry.query(status=ModelStatus.AVAILABLE)
            if model_ids is None or e.model_id in model_ids
        ]

        def stamps() -> dict[str, Stamps]:
            return {
                e.model_id: {
                    f.path: s for f in e.files if (s := _stamp(Path(e.path) / f.path)) is not None
                }
                for e in entries
            }

        self._stamps.update(await asyncio.to_thread(stamps))

    async def check(self) -> None:
        """Look at what the watch named since the last check."""
        async with self._lock:
            dirty, self._dirty = self._dirty - self.busy, self._dirty & self.busy
            for model_id in sorted(dirty):
                await self._check_model(model_id)
        # Hashing a big custom/ folder has a lock of its own: it never delays the above.
        if self._custom_dirty and not self._custom_lock.locked():
            async with self._custom_lock:
                self._custom_dirty = False
                await self._check_custom()

    async def rescan(self) -> None:
        """The truth, whatever events were lost: every available model, and `custom/`."""
        async with self._lock:
            for entry in self.registry.query(status=ModelStatus.AVAILABLE):
                if entry.source != CUSTOM_SOURCE and entry.model_id not in self.busy:
                    await self._check_model(entry.model_id)
        async with self._custom_lock:
            await self._check_custom()

    async def _check_model(self, model_id: str) -> None:
        entry = self.registry.get(model_id)
        if entry is None or entry.status is not ModelStatus.AVAILABLE:
            return
        if entry.source == CUSTOM_SOURCE:
            self._custom_dirty = True
            return
        stamps = self._stamps.get(model_id, {})
        problem, fresh = await asyncio.to_thread(_inspect, entry, stamps)
        # The pass may have switched in a new version while we looked.
        if self.registry.get(model_id) is not entry or model_id in self.busy:
            return
        if problem is None:
            self._stamps[model_id] = fresh
            return
        log.warning("%s: %s; the next pass repairs it", model_id, problem)
        if "mismatch" in problem or "changed size" in problem:
            self.events.verify_failed(model_id, problem.split(" ")[0], problem)
        entry.status, entry.error = ModelStatus.ERROR, problem
        self.registry.save()
        self.events.status(entry)
        self.on_damage(model_id)

    async def _check_custom(self) -> None:
        found = {
            model_id: folder
            for source, model_id, folder in await asyncio.to_thread(
                lambda: list(self.storage.model_folders())
            )
            if source == CUSTOM_SOURCE and _custom_id_ok(model_id)
        }
        for entry in self.registry.query(source=CUSTOM_SOURCE):
            if entry.model_id not in found and entry.status is not ModelStatus.DELETED:
                log.info("%s: folder removed from custom/; marked deleted", entry.model_id)
                entry.status, entry.files, entry.size_bytes = ModelStatus.DELETED, [], 0
                self._stamps.pop(entry.model_id, None)
                self.registry.save()
                self.events.status(entry)
        for model_id, folder in found.items():
            try:
                await self._register_custom(model_id, folder)
            except OSError as exc:  # one unreadable folder must not hide the others
                log.warning("custom/%s: not registered: %s", model_id, exc.strerror or exc)

    async def _register_custom(self, model_id: str, folder: Path) -> None:
        entry = self.registry.get(model_id)
        if entry is not None and entry.source != CUSTOM_SOURCE:
            if entry.status is not ModelStatus.DELETED:
                log.warning(
                    "custom/%s: id already used by a %s model; not registered",
                    model_id,
                    entry.source,
                )
                return
            entry = None
        stamps = self._stamps.get(model_id, {})
        before = await asyncio.to_thread(_snapshot, folder)
        if entry is not None and entry.status is ModelStatus.AVAILABLE and before == stamps:
            return
        if not before:
            return  # an empty folder is not a model (yet)
        # Still being copied in? Hash only once nothing changed for a moment.
        await asyncio.sleep(QUIET_S)
        if before != await asyncio.to_thread(_snapshot, folder):
            self._custom_dirty = True
            return
        old = {f.path: f for f in entry.files} if entry is not None else {}
        files, fresh = await asyncio.to_thread(_hash_folder, folder, old, stamps)
        if fresh != await asyncio.to_thread(_snapshot, folder):
            # Still being copied in: look again once it settles.
            self._custom_dirty = True
            return
        new = ModelEntry(
            model_id=model_id,
            source=CUSTOM_SOURCE,
            model_type=entry.model_type if entry else str(ModelType.OTHER),
            path=str(folder),
            status=ModelStatus.AVAILABLE,
            size_bytes=sum(f.size for f in files),
            download_date=utc_now(),
            files=files,
            metadata=entry.metadata if entry else {},
        )
        known = entry is not None and entry.status is ModelStatus.AVAILABLE
        size = new.size_bytes
        log.info(
            "%s: custom model %s (%d files, %d bytes)",
            model_id,
            "updated" if known else "registered",
            len(files),
            size,
        )
        self._stamps[model_id] = fresh
        self.registry.put(new)
        self.registry.save()
        self.events.status(new)
