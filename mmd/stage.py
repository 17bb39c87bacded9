"""A model version being built under cache/staging: what is done, what can be reused.

`done.json` in a stage records each verified file, so a restarted pass does not fetch
it again. Files already on disk (the current version, or a promoted stage whose
registry save was interrupted) are reused only after they hash to the expected digest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmd.errors import DownloadError
from mmd.partfile import PartFile
from mmd.registry import atomic_write
from mmd.storage import Storage, hash_file_and_blob
from mmd.types import ModelEntry, RemoteFile

if TYPE_CHECKING:
    from mmd.sync import SyncEvents


def reusable_files(entry: ModelEntry, storage: Storage) -> dict[str, Path]:
    """Files of the current version by sha256, for reuse when a new version keeps them."""
    folder = storage.model_dir(entry.source, entry.model_id)
    found: dict[str, Path] = {}
    for f in entry.files:
        path = folder / f.path
        if f.sha256 and path.is_file() and not path.is_symlink() and path.stat().st_size == f.size:
            found[f.sha256] = path
    return found


def finished_in(stages: list[Path]) -> dict[str, Path]:
    """Verified files of other stages (say, a branch that moved mid-download), by sha256."""
    found: dict[str, Path] = {}
    for stage in stages:
        for rel, record in load_done(stage).items():
            path = stage / "files" / rel
            if record.get("sha256") and path.is_file() and not path.is_symlink():
                found[record["sha256"]] = path
    return found


def adopt_partial(siblings: list[Path], rel: str, final: Path, size: int | None) -> int:
    """Move the longest interrupted download of `rel` from an older stage of this model.

    For when the version moved while a large file was half there (a branch, a changed
    small file): its bytes are kept. Only safe where the resume itself checks the bytes
    (a known sha256, or If-Range against the saved validator); the caller decides.
    Returns the bytes adopted (0: nothing).
    """
    part = final.with_name(final.name + ".part")
    if part.exists() or part.is_symlink():
        return 0
    best: tuple[Path, int] | None = None
    for stage in siblings:
        candidate = stage / "files" / (rel + ".part")
        if candidate.is_symlink() or not candidate.is_file():
            continue
        have = candidate.stat().st_size
        if size is not None and have > size:
            continue
        if best is None or have > best[1]:
            best = (candidate, have)
    if best is None or best[1] == 0:
        return 0
    candidate, have = best
    os.rename(candidate, part)
    meta = candidate.with_name(candidate.name + ".json")
    with contextlib.suppress(FileNotFoundError):
        os.rename(meta, part.with_name(part.name + ".json"))
    return have


def keep_only(files_dir: Path, wanted: set[str]) -> None:
    """Drop from a stage what this version does not list (an earlier selection's files,
    stray .part files), so the folder switched in holds exactly the registry's files."""
    for current, dirs, names in os.walk(files_dir, topdown=False):
        for name in names:
            path = Path(current) / name
            if path.relative_to(files_dir).as_posix() not in wanted:
                path.unlink()
        for name in dirs:
            with contextlib.suppress(OSError):
                (Path(current) / name).rmdir()


def reuse_verified(
    candidates: list[Path | None],
    sha256: str | None,
    file: RemoteFile,
    dst: Path,
    *,
    trust: bool = False,
) -> str | None:
    """Link the first candidate whose bytes match the expected digest into place.

    Hashed every time: a file on disk may have been changed by hand since it was
    registered, and a corrupt copy must never be carried into a new version. With
    `trust` (verify_checksums: false) a candidate of the right size is taken as it is
    when its sha256 is already known. Returns the sha256, or None when none matched.
    """
    for path in candidates:
        if path is None or path.is_symlink() or not path.is_file():
            continue
        if file.size is not None and path.stat().st_size != file.size:
            continue
        if trust and sha256 is not None:
            _link_or_copy(path, dst)
            return sha256
        digest, blob = hash_file_and_blob(path)
        if (sha256 is not None and digest == sha256) or (sha256 is None and blob == file.git_sha1):
            _link_or_copy(path, dst)
            return digest
    return None


def _link_or_copy(src: Path, dst: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        dst.unlink()
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copyfile(src, dst, follow_symlinks=False)


DONE_FILE = "done.json"


def load_done(stage: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads((stage / DONE_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def mark_done(
    stage: Path, done: dict[str, dict[str, Any]], path: str, size: int, sha256: str
) -> None:
    """Record a verified file of the stage, so a restart does not fetch it again."""
    done[path] = {"size": size, "sha256": sha256}
    atomic_write(stage / DONE_FILE, json.dumps(done).encode())


class SourceSink:
    """The sink a source's own fetch writes to: the PartFile, plus progress and a stop."""

    def __init__(
        self,
        part: PartFile,
        loop: asyncio.AbstractEventLoop,
        events: SyncEvents,
        model_id: str,
        file: RemoteFile,
    ) -> None:
        self.part, self.loop, self.events = part, loop, events
        self.model_id, self.file = model_id, file
        self.stopped = threading.Event()
        self.started, self.start_offset = time.monotonic(), part.offset
        self.next_progress = 0.0

    @property
    def offset(self) -> int:
        return self.part.offset

    def write(self, data: bytes) -> None:
        if self.stopped.is_set():
            raise DownloadError(f"{self.file.path}: interrupted")
        self.part.write(data)
        done, now = self.part.offset, time.monotonic()
        if now < self.next_progress and done != self.file.size:
            return  # a few progress calls a second, not one per chunk
        self.next_progress = now + 0.1
        rate = (done - self.start_offset) / max(now - self.started, 1e-6)
        self.loop.call_soon_threadsafe(
            self.events.file_progress, self.model_id, self.file.path, done, self.file.size, rate
        )

    def reset(self) -> None:
        self.part.reset()

    def existing(self, chunk: int = 8 << 20) -> Iterator[bytes]:
        """The bytes already in the sink (before `offset`), read back from disk.

        For sources that check a digest of their own (an S3 multipart ETag) across a
        resumed fetch.
        """
        with open(self.part.part, "rb") as fh:
            left = self.part.offset
            while left > 0 and (data := fh.read(min(chunk, left))):
                left -= len(data)
                yield data
