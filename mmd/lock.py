"""The storage lock: one writer per storage folder, released by the kernel on any exit."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from mmd.errors import StorageLockedError

LOCK_NAME = ".mmd.lock"


class StorageLock:
    def __init__(self, root: Path, wait: float = 0.0) -> None:
        self.path = root / LOCK_NAME
        self.wait = wait
        self.fd: int | None = None

    def _lines(self) -> list[str]:
        try:
            return self.path.read_text().split()
        except OSError:
            return []

    def holder(self) -> str:
        """The pid of the process holding the lock, as it wrote it."""
        lines = self._lines()
        return lines[0] if lines else "unknown"

    def daemon_url(self) -> str | None:
        """The API address a running `mmd run` announced, when the holder is one."""
        lines = self._lines()
        return lines[1] if len(lines) > 1 and lines[1].startswith("http") else None

    def probe(self) -> bool:
        """Is the lock held by someone? Needs only read access to the storage.

        For `mmd sync` run by a user who may read the storage (and talk to the daemon)
        but not write it: a shared lock attempt tells, without creating anything.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def announce(self, url: str) -> None:
        """Tell other mmd commands where the daemon holding this lock listens."""
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n{url}\n".encode(), 0)

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise StorageLockedError(
                        f"storage {self.path.parent} is in use by another mmd process "
                        f"(pid {self.holder()})",
                        hint="wait for it to finish, or use --wait SECONDS",
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> StorageLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
