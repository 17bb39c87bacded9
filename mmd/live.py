"""What the daemon is doing right now: per-model progress and a one-line summary.

Fed by a pass's `SyncEvents` on the event loop; read by the API, `STATUS=` and logs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mmd.registry import Registry
from mmd.sync import SyncEvents
from mmd.types import ModelEntry, ModelStatus


@dataclass
class _FileProgress:
    done: int = 0
    total: int | None = None
    rate: float = 0.0


@dataclass
class ModelProgress:
    files: dict[str, _FileProgress] = field(default_factory=dict)

    @property
    def bytes_done(self) -> int:
        return sum(f.done for f in self.files.values())

    @property
    def bytes_total(self) -> int | None:
        totals = [f.total for f in self.files.values()]
        return None if any(t is None for t in totals) else sum(t for t in totals if t is not None)

    @property
    def rate_bps(self) -> float:
        return sum(f.rate for f in self.files.values())

    def to_json(self) -> dict[str, float | int | None]:
        total, rate = self.bytes_total, self.rate_bps
        eta = (total - self.bytes_done) / rate if total is not None and rate > 0 else None
        return {
            "bytes_done": self.bytes_done,
            "bytes_total": total,
            "rate_bps": round(rate),
            "eta_s": None if eta is None else round(eta, 1),
        }


Listener = Callable[[str, ModelEntry | None], None]


class LiveState(SyncEvents):
    """Progress of running downloads; tells listeners ("status" or "progress") what changed."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.progress: dict[str, ModelProgress] = {}
        self.listeners: list[Listener] = []
        self._last_progress: dict[str, float] = {}

    def _tell(self, kind: str, entry: ModelEntry | None) -> None:
        for listener in list(self.listeners):
            listener(kind, entry)

    def status(self, entry: ModelEntry) -> None:
        if entry.status is not ModelStatus.DOWNLOADING:
            self.progress.pop(entry.model_id, None)
        self._tell("status", entry)

    def file_started(self, model_id: str, path: str, total: int | None, done: int) -> None:
        model = self.progress.setdefault(model_id, ModelProgress())
        model.files[path] = _FileProgress(done=done, total=total)

    def file_progress(
        self, model_id: str, path: str, done: int, total: int | None, rate: float
    ) -> None:
        model = self.progress.setdefault(model_id, ModelProgress())
        model.files[path] = _FileProgress(done=done, total=total, rate=rate)
        now = time.monotonic()
        # At most one progress notice a second per model, however fast the chunks come.
        if now - self._last_progress.get(model_id, 0.0) >= 1.0:
            self._last_progress[model_id] = now
            self._tell("progress", self.registry.get(model_id))

    def file_finished(self, model_id: str, path: str) -> None:
        model = self.progress.get(model_id)
        if model is not None and path in model.files:
            f = model.files[path]
            f.rate = 0.0
            if f.total is not None:
                f.done = f.total

    def summary(self) -> str:
        """E.g. "12 available, 1 downloading 43%, 0 error"."""
        counts = {s: 0 for s in ModelStatus}
        for entry in self.registry.models.values():
            counts[entry.status] += 1
        downloading = counts[ModelStatus.DOWNLOADING]
        text = f"{counts[ModelStatus.AVAILABLE]} available, {downloading} downloading"
        done = sum(p.bytes_done for p in self.progress.values())
        totals = [p.bytes_total for p in self.progress.values()]
        if downloading and totals and all(t for t in totals):
            text += f" {100 * done // sum(t for t in totals if t):.0f}%"
        if counts[ModelStatus.PENDING]:
            text += f", {counts[ModelStatus.PENDING]} pending"
        return text + f", {counts[ModelStatus.ERROR]} error"


class Fanout(SyncEvents):
    """Hands every event of a pass to several observers (live state, metrics, audit)."""

    def __init__(self, *observers: SyncEvents) -> None:
        self.observers = list(observers)

    def status(self, entry: ModelEntry) -> None:
        for o in self.observers:
            o.status(entry)

    def file_started(self, model_id: str, path: str, total: int | None, done: int) -> None:
        for o in self.observers:
            o.file_started(model_id, path, total, done)

    def file_progress(
        self, model_id: str, path: str, done: int, total: int | None, rate: float
    ) -> None:
        for o in self.observers:
            o.file_progress(model_id, path, done, total, rate)

    def file_finished(self, model_id: str, path: str) -> None:
        for o in self.observers:
            o.file_finished(model_id, path)

    def verify_failed(self, model_id: str, path: str, reason: str) -> None:
        for o in self.observers:
            o.verify_failed(model_id, path, reason)

    def retried(self, model_id: str, path: str) -> None:
        for o in self.observers:
            o.retried(model_id, path)
