"""The JSON registry (SPEC §4): what is really in storage. One writer, atomic saves."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from mmd.storage import Storage, fsync_dir, hash_file, list_files
from mmd.types import FileEntry, ModelEntry, ModelStatus, ModelType

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def atomic_write(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename, fsync the folder: never a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


class Registry:
    def __init__(self, path: Path, models: dict[str, ModelEntry] | None = None) -> None:
        self.path = path
        self.models: dict[str, ModelEntry] = models or {}
        self.generation = 0  # bumped by every save: lets readers cache what they derive
        # model id -> (entry, its revision, its JSON): only changed entries are encoded again.
        self._encoded: dict[str, tuple[ModelEntry, int, bytes]] = {}

    @classmethod
    def read(cls, path: Path) -> Registry:
        """Read as-is; raises OSError/ValueError when missing or unreadable."""
        with open(path, "rb") as fh:
            data = json.load(fh)
        if not isinstance(data, dict) or not isinstance(data.get("models", {}), dict):
            raise ValueError(f"not a registry (a JSON {type(data).__name__} of the wrong shape)")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"unsupported registry schema {data.get('schema_version')!r}")
        models = {k: ModelEntry.from_json(v) for k, v in (data.get("models") or {}).items()}
        return cls(path, models)

    @classmethod
    def load(
        cls,
        path: Path,
        storage: Storage,
        known: Iterable[tuple[str, str]] = (),
        *,
        persist: bool = True,
    ) -> Registry:
        """The registry, or one rebuilt by scanning storage when missing or unreadable.

        With `persist=False` (read-only commands) nothing is written or renamed.
        """
        try:
            return cls.read(path)
        except FileNotFoundError:
            reason = "missing"
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            reason = f"unreadable ({exc})"
            if not persist:
                registry = cls(path)
                registry.rebuild(storage, known, persist=False)
                return registry
            kept = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            try:
                os.replace(path, kept)
                reason += f"; kept as {kept.name}"
            except OSError:
                pass
        registry = cls(path)
        found = registry.rebuild(storage, known, persist=persist)
        if found:
            log.warning("registry %s %s: rebuilt from storage (%d models)", path, reason, found)
        return registry

    def rebuild(
        self, storage: Storage, known: Iterable[tuple[str, str]], *, persist: bool = True
    ) -> int:
        """Register every model folder found on disk, hashing its files.

        `known` (source, id) pairs from the manifest settle ids with a '/'.
        """
        folders: dict[tuple[str, str], Path] = {}
        for source, model_id in known:
            folder = storage.model_dir(source, model_id)
            if folder.is_dir() and not folder.is_symlink():
                folders[(source, model_id)] = folder
        claimed = {f for f in folders.values()}
        for source, model_id, folder in storage.model_folders():
            if (
                folder in claimed
                or folder.parent in claimed
                or any(c.parent == folder for c in claimed)
            ):
                continue
            folders[(source, model_id)] = folder
        for (source, model_id), folder in folders.items():
            files = [
                FileEntry(path=rel, size=size, sha256=hash_file(folder / rel))
                for rel, size in list_files(folder)
            ]
            self.models[model_id] = ModelEntry(
                model_id=model_id,
                source=source,
                model_type=str(ModelType.OTHER),
                path=str(folder),
                status=ModelStatus.AVAILABLE,
                version=None,
                size_bytes=sum(f.size for f in files),
                download_date=None,
                files=files,
                metadata={"recovered": True},
            )
        if folders and persist:
            self.save()
        return len(folders)

    def to_json(self) -> dict[str, object]:
        return {
            "schema_version": SCHEMA_VERSION,
            "updated_at": utc_now(),
            "models": {k: v.to_json() for k, v in sorted(self.models.items())},
        }

    def encoded(self, entry: ModelEntry) -> bytes:
        """The entry as JSON, encoded again only when it changed since last time."""
        cached = self._encoded.get(entry.model_id)
        if cached is not None and cached[0] is entry and cached[1] == entry.revision:
            return cached[2]
        # default=str: a plugin's metadata may hold values JSON cannot (dates, paths).
        data = json.dumps(entry.to_json(), default=str).encode()
        self._encoded[entry.model_id] = (entry, entry.revision, data)
        return data

    def save(self) -> None:
        """Write the whole file atomically; one model per line, so diffs stay readable."""
        self.generation += 1
        for gone in self._encoded.keys() - self.models.keys():
            del self._encoded[gone]
        head = json.dumps({"schema_version": SCHEMA_VERSION, "updated_at": utc_now()})
        lines = b",\n ".join(
            json.dumps(model_id).encode() + b": " + self.encoded(entry)
            for model_id, entry in sorted(self.models.items())
        )
        body = head[:-1].encode() + b', "models": {\n ' + lines + b"\n}}\n"
        atomic_write(self.path, body)

    def get(self, model_id: str) -> ModelEntry | None:
        return self.models.get(model_id)

    def put(self, entry: ModelEntry) -> None:
        self.models[entry.model_id] = entry

    def remove(self, model_id: str) -> None:
        self.models.pop(model_id, None)

    def query(
        self,
        status: str | None = None,
        model_type: str | None = None,
        source: str | None = None,
    ) -> list[ModelEntry]:
        return [
            entry
            for _, entry in sorted(self.models.items())
            if (status is None or entry.status == status)
            and (model_type is None or entry.model_type == model_type)
            and (source is None or entry.source == source)
        ]
