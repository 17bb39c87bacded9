"""`GET /metrics`: Prometheus text format through prometheus_client, one registry per daemon."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from mmd.registry import Registry
from mmd.sync import SyncEvents
from mmd.types import ModelEntry, ModelStatus

# A model version takes seconds to hours; a pass milliseconds to hours.
_DOWNLOAD_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600)
_PASS_BUCKETS = (0.05, 0.1, 0.5, 1, 5, 30, 120, 600, 3600, 4 * 3600)


class Metrics(SyncEvents):
    def __init__(self, registry: Registry, storage_root: Path) -> None:
        self.registry = registry
        self.prom = CollectorRegistry()
        self.models = Gauge(
            "mmd_models", "Models in the registry, by status", ["status"], registry=self.prom
        )
        self.bytes = Counter(
            "mmd_downloaded_bytes", "Bytes received from sources", registry=self.prom
        )
        self.download_seconds = Histogram(
            "mmd_download_duration_seconds",
            "Time from a model's first file transfer to its version switched in",
            buckets=_DOWNLOAD_BUCKETS,
            registry=self.prom,
        )
        self.verify_failures = Counter(
            "mmd_verify_failures",
            "Files whose size or digest did not match (downloads and files changed on disk)",
            registry=self.prom,
        )
        self.retries = Counter(
            "mmd_download_retries", "Transfer attempts retried after an error", registry=self.prom
        )
        self.pass_seconds = Histogram(
            "mmd_pass_duration_seconds",
            "Duration of reconcile passes",
            buckets=_PASS_BUCKETS,
            registry=self.prom,
        )
        self.free = Gauge(
            "mmd_storage_free_bytes", "Free bytes on the storage filesystem", registry=self.prom
        )
        self.free.set_function(lambda: shutil.disk_usage(storage_root).free)
        self._seen: dict[tuple[str, str], int] = {}
        self._started: dict[str, float] = {}

    def render(self) -> bytes:
        counts = {s: 0 for s in ModelStatus}
        for entry in self.registry.models.values():
            counts[entry.status] += 1
        for status, n in counts.items():
            self.models.labels(status=str(status)).set(n)
        return generate_latest(self.prom)

    # -- SyncEvents ------------------------------------------------------------

    def status(self, entry: ModelEntry) -> None:
        started = self._started.pop(entry.model_id, None)
        if started is not None and entry.status is ModelStatus.AVAILABLE and not entry.error:
            self.download_seconds.observe(time.monotonic() - started)
        elif started is not None and entry.status is ModelStatus.DOWNLOADING:
            self._started[entry.model_id] = started
        for key in [k for k in self._seen if k[0] == entry.model_id]:
            if entry.status is not ModelStatus.DOWNLOADING:
                del self._seen[key]

    def file_started(self, model_id: str, path: str, total: int | None, done: int) -> None:
        self._started.setdefault(model_id, time.monotonic())
        self._seen[(model_id, path)] = done  # resumed bytes were counted when received

    def file_progress(
        self, model_id: str, path: str, done: int, total: int | None, rate: float
    ) -> None:
        before = self._seen.get((model_id, path), 0)
        if done > before:
            self.bytes.inc(done - before)
        self._seen[(model_id, path)] = done

    def verify_failed(self, model_id: str, path: str, reason: str) -> None:
        self.verify_failures.inc()

    def retried(self, model_id: str, path: str) -> None:
        self.retries.inc()
