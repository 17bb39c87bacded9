"""`<storage_dir>/audit.log`: one JSON line per API request that changes something and per
model added, updated, removed or found corrupt. Rotated by size (logging's
RotatingFileHandler: 10 MiB, 5 old files). Never holds a token.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
from pathlib import Path
from typing import Any

from mmd.registry import utc_now
from mmd.sync import SyncEvents
from mmd.types import ModelEntry, ModelStatus

MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 5


class AuditLog(SyncEvents):
    def __init__(self, path: Path, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
        self.path = path
        # A logger of its own that never reaches stderr: the audit trail is a file.
        self._logger = logging.Logger(f"mmd.audit.{path}")
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger.addHandler(handler)
        self._known: dict[str, tuple[ModelStatus, str | None]] = {}

    def remember(self, entries: list[ModelEntry]) -> None:
        """What is in storage at start, so the first status change is told right."""
        for e in entries:
            self._known[e.model_id] = (e.status, e.version)

    def record(
        self,
        action: str,
        model_id: str | None = None,
        *,
        version: str | None = None,
        peer: str | None = None,
        outcome: str = "ok",
        **extra: Any,
    ) -> None:
        line = {
            "time": utc_now(),
            "action": action,
            "model_id": model_id,
            "version": version,
            "peer": peer,
            "outcome": outcome,
            **extra,
        }
        self._logger.info(json.dumps(line, default=str))

    def close(self) -> None:
        for handler in self._logger.handlers:
            handler.close()

    # -- model events -----------------------------------------------------------

    def status(self, entry: ModelEntry) -> None:
        before = self._known.get(entry.model_id)
        self._known[entry.model_id] = (entry.status, entry.version)
        old_status, old_version = before if before is not None else (None, None)
        if entry.status is ModelStatus.AVAILABLE and not entry.error:
            if old_version is None:
                action = "model.added"
            elif old_version != entry.version:
                action = "model.updated"
            elif old_status is not ModelStatus.AVAILABLE:
                action = "model.repaired"
            else:
                return
            self.record(action, entry.model_id, version=entry.version)
        elif entry.status is ModelStatus.DELETED and old_status is not ModelStatus.DELETED:
            self.record("model.removed", entry.model_id, version=old_version)

    def verify_failed(self, model_id: str, path: str, reason: str) -> None:
        self.record("model.corrupt", model_id, outcome="error", file=path, reason=reason)
