"""A `.part` file being filled: appends hash as they are written; survives restarts.

The hash state is rebuilt from the bytes already on disk when a `.part` is reopened,
so a resumed download still ends with a sha256 over the whole file. A small JSON
sidecar keeps what a resume needs to ask for the same bytes again (URL, validator).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from mmd.errors import ChecksumError

READ_CHUNK = 8 << 20
WRITE_SLICE = 128 << 10


class PartFile:
    """Implements the `Sink` protocol of mmd.hookspecs for source-side fetches."""

    def __init__(self, final: Path, label: str) -> None:
        self.final = final
        self.label = label  # the file's path inside the model, for messages
        self.part = final.with_name(final.name + ".part")
        self.meta_path = final.with_name(final.name + ".part.json")
        self.fd: int | None = None
        self.offset = 0
        self._hash = hashlib.sha256()
        self._blob: Any = None  # git blob sha1, when the expected size is known
        self._blob_size: int | None = None

    def open(self, git_blob_size: int | None = None) -> None:
        """Open or create the .part (never through a symlink) and rehash what is there.

        With `git_blob_size`, a git blob sha1 is computed alongside the sha256.
        """
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        self.fd = os.open(self.part, flags, 0o644)
        self._blob_size = git_blob_size
        self._start_hashes()
        while data := os.read(self.fd, READ_CHUNK):
            self.update_hash(data)
            self.offset += len(data)

    def _start_hashes(self) -> None:
        self._hash = hashlib.sha256()
        self.offset = 0
        self._blob = None
        if self._blob_size is not None:
            self._blob = hashlib.sha1(f"blob {self._blob_size}\0".encode(), usedforsecurity=False)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.update_hash(data)
        self.append(data, self.offset)

    # The two halves of write(), for callers that run them in two threads at once
    # (hashlib and os.write both drop the GIL on large buffers). Call each in chunk order.

    def update_hash(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)
        if self._blob is not None:
            self._blob.update(data)

    def append(self, data: bytes | bytearray | memoryview, at: int) -> None:
        """Append `data` (without hashing it) if the file is `at` bytes long; else raise."""
        assert self.fd is not None
        if at != self.offset:  # an earlier append failed: never leave a gap
            raise OSError(errno.EIO, f"{self.label}: append at {at}, but have {self.offset}")
        view = memoryview(data)
        while view:
            # Large write() calls make the kernel allocate large page-cache folios, which
            # cost up to 5x more CPU per byte on some VMs (bench/transfer.py).
            written = os.write(self.fd, view[:WRITE_SLICE])
            view = view[written:]
        self.offset += len(data)

    def sync(self) -> None:
        """Push what is written so far towards the disk (early writeback before finish())."""
        assert self.fd is not None
        os.fdatasync(self.fd)

    def reset(self) -> None:
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self._start_hashes()
        self.meta_path.unlink(missing_ok=True)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def load_meta(self) -> dict[str, Any]:
        try:
            data = json.loads(self.meta_path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def save_meta(self, meta: dict[str, Any]) -> None:
        tmp = self.meta_path.with_name(self.meta_path.name + ".tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, self.meta_path)

    def close(self) -> None:
        """Flush to disk and close, keeping the .part for a later resume."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None

    def discard(self) -> None:
        self.close()
        self.part.unlink(missing_ok=True)
        self.meta_path.unlink(missing_ok=True)

    def finish(
        self,
        expected_sha256: str | None,
        expected_size: int | None,
        expected_git_sha1: str | None = None,
    ) -> str:
        """Verify and move into place; a mismatch deletes the bytes so a retry starts clean.

        Returns the sha256 (always computed, whatever was checked).
        """
        digest = self.hexdigest()
        if expected_size is not None and self.offset != expected_size:
            size = self.offset
            self.discard()
            raise ChecksumError(self.label, f"{expected_size} bytes", f"{size} bytes", "size")
        if expected_sha256 is not None and digest != expected_sha256.lower():
            self.discard()
            raise ChecksumError(self.label, expected_sha256.lower(), digest)
        if expected_sha256 is None and expected_git_sha1 is not None:
            blob = self._blob.hexdigest() if self._blob is not None else "unknown"
            if blob != expected_git_sha1.lower():
                self.discard()
                raise ChecksumError(self.label, expected_git_sha1.lower(), blob, "git blob sha1")
        self.close()
        os.replace(self.part, self.final)
        self.meta_path.unlink(missing_ok=True)
        return digest
