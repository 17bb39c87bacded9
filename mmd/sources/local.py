"""`source: local` — copy a folder (or one file) from a local or mounted filesystem."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from mmd.errors import SourceError
from mmd.globs import select
from mmd.hookspecs import KeyRule, Sink, Source, SourceContext, hookimpl
from mmd.types import ModelSpec, Release, RemoteFile

CHUNK = 4 << 20


def _root(spec: ModelSpec) -> Path:
    return Path(str(spec.options["path"])).expanduser()


def _walk(root: Path) -> dict[str, os.stat_result]:
    found: dict[str, os.stat_result] = {}
    # Symlinked files are followed (an HF cache snapshot is all symlinks); symlinked
    # folders are not, so a link loop cannot trap the walk.
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(folder, d)))
        for name in names:
            full = os.path.join(folder, name)
            try:
                st = os.stat(full)
            except OSError:
                continue
            if os.path.isfile(full):
                found[os.path.relpath(full, root).replace(os.sep, "/")] = st
    return found


def resolve(spec: ModelSpec, ctx: SourceContext) -> Release:
    root = _root(spec)
    if root.is_file():
        stats = {root.name: root.stat()}
    elif root.is_dir():
        stats = _walk(root)
    else:
        raise SourceError(f"local path {root} does not exist or is not a file or folder")
    chosen = select(sorted(stats), spec.options.get("include"), spec.options.get("exclude"))
    if not chosen:
        raise SourceError(f"local path {root}: no files match include/exclude")
    # Version from names, sizes and mtimes: cheap, and changes when any file does.
    digest = hashlib.sha256()
    for rel in chosen:
        st = stats[rel]
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    files = tuple(RemoteFile(path=rel, size=stats[rel].st_size) for rel in chosen)
    return Release(
        version="local:" + digest.hexdigest()[:16], files=files, metadata={"path": str(root)}
    )


def fetch(spec: ModelSpec, file: RemoteFile, sink: Sink, ctx: SourceContext) -> None:
    root = _root(spec)
    source = root if root.is_file() else root / file.path
    with open(source, "rb") as fh:
        fh.seek(sink.offset)
        while chunk := fh.read(CHUNK):
            sink.write(chunk)


@hookimpl
def mmd_sources() -> list[Source]:
    return [
        Source(
            name="local",
            resolve=resolve,
            fetch=fetch,
            description="copy from a local or mounted folder",
            keys={
                "path": KeyRule("path", required=True, help="a folder or a file to copy"),
                "include": KeyRule("globs", help="globs of files to copy"),
                "exclude": KeyRule("globs", help="globs of files to skip"),
            },
        )
    ]
