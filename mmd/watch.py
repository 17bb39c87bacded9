"""watchdog observers that hand file events to the event loop.

Events are hints, never the truth: watchdog can drop or merge them (inotify queue
overflow, editors that write through a rename). The manifest watch only asks for a pass;
the storage watch only names paths to re-check; a periodic rescan covers what is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

log = logging.getLogger(__name__)

# watchdog 7 warns when a folder moved inside the tree (every switch-in does that) is
# watched again under its new name; the events still arrive. Not news for an operator.
warnings.filterwarnings("ignore", "Callback with id", RuntimeWarning, "watchdog")

# Reading a file (ours included) raises opened/closed-no-write events: they change nothing.
_CHANGES = {"created", "modified", "moved", "deleted", "closed"}
# Asked of inotify itself, so opens, reads and each written chunk never reach watchdog: a
# file rewritten in place still ends with a close-after-write. Without this, re-walking
# thousands of folders after a queue overflow overflows the queue again, for ever.
_STORAGE_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileClosedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
]
_ROOT_EVENTS: list[type[FileSystemEvent]] = [DirCreatedEvent, DirDeletedEvent, DirMovedEvent]


def _paths(event: FileSystemEvent) -> list[str]:
    paths = [os.fsdecode(event.src_path)]
    if getattr(event, "dest_path", ""):
        paths.append(os.fsdecode(event.dest_path))
    return paths


class Debounced:
    """Calls `action` once, `delay` seconds after the last of a burst of `poke()` calls."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float, action: Callable[[], None]):
        self.loop = loop
        self.delay = delay
        self.action = action
        self._handle: asyncio.TimerHandle | None = None

    def poke(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self.loop.call_later(self.delay, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self.action()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class _ManifestHandler(FileSystemEventHandler):
    def __init__(self, names: set[str], notify: Callable[[], None]) -> None:
        self.names = names
        self.notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _CHANGES:
            return
        if any(os.path.basename(p) in self.names for p in _paths(event)):
            self.notify()


class _StorageHandler(FileSystemEventHandler):
    def __init__(self, root: str, ignore: Callable[[str], bool], notify: Callable[[str], None]):
        self.root = root
        self.ignore = ignore
        self.notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _CHANGES:
            return
        for path in _paths(event):
            rel = os.path.relpath(path, self.root)
            if rel != "." and not rel.startswith("..") and not self.ignore(rel):
                self.notify(rel)


class Watchers:
    """The manifest watch and the storage watch, each on its own watchdog thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._observers: dict[str, BaseObserver] = {}

    def _start(self, key: str, folder: Path, handler: FileSystemEventHandler, recursive: bool):
        self.stop(key)
        observer = Observer()
        observer.daemon = True
        try:
            observer.schedule(handler, str(folder), recursive=recursive)
            observer.start()
        except OSError as exc:
            # E.g. the inotify watch limit: the periodic rescan still keeps things true.
            log.warning("cannot watch %s (%s); relying on the periodic rescan", folder, exc)
            return
        self._observers[key] = observer

    def watch_manifest(self, manifest: Path, on_change: Callable[[], None]) -> None:
        """Watch the manifest's folder, so editors that save via a rename are seen too."""

        def hand_over() -> None:
            self.loop.call_soon_threadsafe(on_change)

        # `..data`: a Kubernetes ConfigMap volume swaps a symlink of that name.
        handler = _ManifestHandler({manifest.name, "..data"}, hand_over)
        folder = manifest.absolute().parent
        if folder.is_dir():
            self._start("manifest", folder, handler, recursive=False)
        else:
            log.warning("manifest folder %s does not exist; not watching it", folder)

    def watch_storage(
        self, root: Path, ignore: Callable[[str], bool], on_path: Callable[[str], None]
    ) -> None:
        """Watch each top-level folder of storage recursively, except the ignored ones.

        `cache/` is never watched: every downloaded chunk would be an event, and a stage
        exchanged with a watched model folder confuses watchdog's inotify bookkeeping.
        The root itself is watched flat, to pick up a new source folder (or `custom/`).
        """
        self.stop("storage")
        observer = Observer()
        observer.daemon = True
        handler = _StorageHandler(str(root), ignore, lambda rel: self._hand_over(on_path, rel))
        tops: dict[str, ObservedWatch] = {}

        def add(name: str) -> None:
            folder = root / name
            if name in tops or ignore(name) or folder.is_symlink() or not folder.is_dir():
                return
            try:
                tops[name] = observer.schedule(
                    handler, str(folder), recursive=True, event_filter=_STORAGE_EVENTS
                )
            except OSError as exc:
                log.warning("cannot watch %s (%s); relying on the periodic rescan", folder, exc)

        def top_changed(name: str) -> None:
            # On the loop thread: scheduling from watchdog's own thread could deadlock.
            watch = tops.pop(name, None)
            if watch is not None:
                with contextlib.suppress(KeyError, RuntimeError):
                    observer.unschedule(watch)
            add(name)
            on_path(name)

        def at_root(rel: str) -> None:
            self.loop.call_soon_threadsafe(top_changed, rel)

        try:
            observer.schedule(
                _StorageHandler(str(root), ignore, at_root),
                str(root),
                recursive=False,
                event_filter=_ROOT_EVENTS,
            )
            for child in sorted(root.iterdir()):
                add(child.name)
            observer.start()
        except OSError as exc:
            log.warning("cannot watch %s (%s); relying on the periodic rescan", root, exc)
            return
        self._observers["storage"] = observer

    def _hand_over(self, on_path: Callable[[str], None], rel: str) -> None:
        self.loop.call_soon_threadsafe(on_path, rel)

    def alive(self) -> dict[str, bool]:
        return {key: observer.is_alive() for key, observer in self._observers.items()}

    def stop(self, key: str | None = None, *, join: bool = True) -> None:
        for name in [key] if key else list(self._observers):
            observer = self._observers.pop(name, None) if name else None
            if observer is not None:
                observer.stop()
                if join:
                    observer.join(timeout=2)
