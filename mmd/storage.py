"""Storage layout (SPEC §3): model folders, staging under cache/, atomic switch-in.

A model folder only ever shows one complete, verified version. A new version is built
under `cache/staging/` (same filesystem) and switched in with one `renameat2` exchange
where the kernel offers it (readers see the old or the new folder, never neither), else
with two renames.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import logging
import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from mmd.errors import InsufficientSpaceError, UnsafePathError

log = logging.getLogger(__name__)

MAX_PATH_BYTES = 1024
MAX_PART_BYTES = 255
RESERVED_TOP = ("cache",)


def validate_relpath(path: str) -> str:
    """Refuse a remote file name that could escape or abuse a model folder."""
    if not isinstance(path, str) or not path:
        raise UnsafePathError("empty file name")
    shown = repr(path)
    if "\x00" in path:
        raise UnsafePathError(f"file name {shown} contains a NUL byte")
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise UnsafePathError(f"file name {shown} contains control characters")
    if "\\" in path:
        raise UnsafePathError(f"file name {shown} contains a backslash")
    if path.startswith("/"):
        raise UnsafePathError(f"file name {shown} is absolute")
    if len(path.encode()) > MAX_PATH_BYTES:
        raise UnsafePathError(f"file name {shown[:60]}… is longer than {MAX_PATH_BYTES} bytes")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise UnsafePathError(f"file name {shown} has an empty, '.' or '..' part")
        if len(part.encode()) > MAX_PART_BYTES:
            raise UnsafePathError(f"file name {shown} has a part longer than 255 bytes")
    return path


def ensure_dirs(base: Path, relative: str) -> Path:
    """Create base/relative folder by folder, refusing any symlink on the way."""
    current = base
    for part in [p for p in relative.split("/") if p]:
        current = current / part
        try:
            os.mkdir(current)
        except FileExistsError:
            st = os.lstat(current)
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafePathError(f"{current} exists and is not a plain folder") from None
    return current


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths; False when the kernel or filesystem cannot."""
    if _renameat2 is None:
        return False
    at_fdcwd = -100
    result = _renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


class Storage:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache = root / "cache"
        self.staging_root = self.cache / "staging"
        self.trash = self.cache / "trash"

    def prepare(self) -> None:
        for folder in (self.root, self.cache, self.staging_root, self.trash):
            folder.mkdir(parents=True, exist_ok=True)

    def model_dir(self, source: str, model_id: str) -> Path:
        return self.root / source / model_id

    def staging_dir(self, source: str, model_id: str, version: str) -> Path:
        """Stable per (model, version), so an interrupted download resumes in place."""
        key = hashlib.sha256(version.encode()).hexdigest()[:20]
        return self.staging_root / source / model_id / key

    def new_stage(self, source: str, model_id: str, version: str) -> Path:
        """The staging folder for this version (created if needed)."""
        stage = self.staging_dir(source, model_id, version)
        ensure_dirs(self.root, str(stage.relative_to(self.root)))
        return stage

    def sibling_stages(self, stage: Path) -> list[Path]:
        """Stages of the model's other versions: kept, for their finished files, until
        a version is switched in."""
        return sorted(p for p in stage.parent.iterdir() if p != stage and p.is_dir())

    def discard(self, path: Path) -> None:
        """Remove a folder we own: renamed into trash first, so it vanishes at once."""
        if not path.exists() and not path.is_symlink():
            return
        target = self.trash / f"{time.time_ns()}-{os.getpid()}"
        try:
            os.rename(path, target)
        except OSError:
            target = path
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)

    def drop_empty_parents(self, path: Path) -> None:
        """Remove empty folders from `path` up to (not including) the staging root."""
        current = path
        while current != self.staging_root and self.staging_root in current.parents:
            try:
                current.rmdir()
            except OSError:
                return
            current = current.parent

    def promote(self, built: Path, source: str, model_id: str) -> Path:
        """Switch a fully built and verified folder in as the model's folder."""
        target = self.model_dir(source, model_id)
        ensure_dirs(self.root, str(target.parent.relative_to(self.root)))
        if os.path.lexists(target):
            if os.path.islink(target) or not os.path.isdir(target):
                raise UnsafePathError(f"{target} is not a plain folder; refusing to replace it")
            if exchange(built, target):
                fsync_dir(target.parent)
                self.discard(built)  # now holds the old version
                return target
            self.discard(target)
        os.rename(built, target)
        fsync_dir(target.parent)
        return target

    def remove_model(self, source: str, model_id: str) -> None:
        if source == "custom":  # dropped in by hand: never deleted by mmd
            raise UnsafePathError(f"refusing to delete custom/{model_id}: mmd did not create it")
        target = self.model_dir(source, model_id)
        self.discard(target)
        # Drop an organisation folder left empty, as `rmdir` would.
        parent = target.parent
        if parent != self.root / source and parent.is_dir():
            with contextlib.suppress(OSError):
                parent.rmdir()
        stage_parent = self.staging_root / source / model_id
        self.discard(stage_parent)

    def empty_trash(self) -> None:
        if self.trash.is_dir():
            for item in self.trash.iterdir():
                shutil.rmtree(item, ignore_errors=True) if item.is_dir() else item.unlink()

    def check_free_space(self, needed: int) -> None:
        free = shutil.disk_usage(self.cache if self.cache.exists() else self.root).free
        if needed > free:
            raise InsufficientSpaceError(
                f"not enough free space in {self.root}: need {needed} bytes, {free} free",
                hint="free some space or point storage_dir at a larger disk",
            )

    def model_folders(self) -> Iterator[tuple[str, str, Path]]:
        """(source, id, folder) for every folder that looks like a model on disk.

        An id may hold one '/', so `<source>/<a>/<b>/` is ambiguous; a first-level
        folder holding only folders is taken as an organisation, else as a model.
        """
        if not self.root.is_dir():
            return
        for source_dir in sorted(self.root.iterdir()):
            if source_dir.name in RESERVED_TOP or not source_dir.is_dir():
                continue
            if source_dir.is_symlink():
                continue
            for first in sorted(source_dir.iterdir()):
                if not first.is_dir() or first.is_symlink():
                    continue
                children = list(first.iterdir())
                if children and all(c.is_dir() and not c.is_symlink() for c in children):
                    for second in sorted(children):
                        yield source_dir.name, f"{first.name}/{second.name}", second
                else:
                    yield source_dir.name, first.name, first


def list_files(folder: Path) -> list[tuple[str, int]]:
    """Relative paths and sizes of the regular files below a folder (symlinks skipped)."""
    found: list[tuple[str, int]] = []
    for current, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(current, d)))
        for name in sorted(names):
            full = os.path.join(current, name)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                found.append((os.path.relpath(full, folder).replace(os.sep, "/"), st.st_size))
    return found


def hash_file(path: Path) -> str:
    return _hash_file(path, git_blob=False)[0]


def hash_file_and_blob(path: Path) -> tuple[str, str]:
    """The file's sha256 and its git blob sha1 (sha1 of b"blob <size>\\0" + data)."""
    sha256, blob = _hash_file(path, git_blob=True)
    assert blob is not None
    return sha256, blob


def _hash_file(path: Path, *, git_blob: bool, chunk: int = 8 << 20) -> tuple[str, str | None]:
    digest = hashlib.sha256()
    blob = None
    with open(path, "rb", buffering=0) as fh:
        if git_blob:
            size = os.fstat(fh.fileno()).st_size
            blob = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False)
        while data := fh.read(chunk):
            digest.update(data)
            if blob is not None:
                blob.update(data)
    return digest.hexdigest(), blob.hexdigest() if blob is not None else None
