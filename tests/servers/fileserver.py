"""A real HTTP file server for tests, with fault-injection knobs.

The server runs aiohttp in a daemon thread with its own event loop, so synchronous tests,
asynchronous tests and subprocesses can all talk to it through ``FileServer.url``.

Typical use::

    def test_download(fileserver: FileServer) -> None:
        url = fileserver.add("models/a.bin", b"x" * 1000)
        fileserver.set_fault("models/a.bin", cut_after=100)
        ...
        assert fileserver.bytes_sent("models/a.bin") == 100

Standalone (used by benchmarks)::

    python -m tests.servers.fileserver --port 0 --dir DIR
    # prints "READY http://127.0.0.1:<port>" and serves DIR/<rel> at /<rel> until killed.

Order in which the knobs of a path are applied to a request:

1. ``require_auth``: 401 unless ``Authorization`` matches (does not consume anything else).
2. ``status_sequence``: the next len(list) requests get these statuses (a 200 in the list
   means "serve normally" for that slot).
3. ``redirect_to``: 302 to that URL, ``redirect_times`` times.
4. Unknown path: 404.
5. Normal service (GET/HEAD, Range, If-Range), modified by ``ignore_range``,
   ``ignore_if_range``, ``flip_byte``,
   ``stall_after``/``stall_seconds`` and ``cut_after`` (the last two only for GET responses
   whose body is longer than the offset; only those responses count against
   ``stall_times``/``cut_times``). Offsets of ``cut_after``/``stall_after`` are relative to
   the body of the response; ``flip_byte`` is an absolute offset in the resource.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import pathlib
import sys
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from tests.servers.body import ALWAYS, BodyServer, Faults, RequestRecord, http_date
from tests.servers.threaded import exit_on_sigterm

__all__ = [
    "ALWAYS",
    "Faults",
    "FileServer",
    "RequestRecord",
    "fileserver",
    "fileserver2",
    "main",
]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Entry:
    data: bytes | None = None
    file: pathlib.Path | None = None
    etag: str | None = None
    last_modified: str = ""


@dataclasses.dataclass
class _Meta:
    size: int
    etag: str
    last_modified: str


def _norm(path: str) -> str:
    return "/" + path.lstrip("/")


def _default_etag(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


class FileServer(BodyServer):
    """Threaded aiohttp file server with fault knobs. See module docstring."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self.url = ""
        self.requests: list[RequestRecord] = []
        self._entries: dict[str, _Entry] = {}
        self._dirs: list[pathlib.Path] = []
        self._faults: dict[str, Faults] = {}

    # ------------------------------------------------------------------ lifecycle

    async def _setup(self) -> None:
        (self.port,) = await self._serve_app(self._handle, self.host, self.port)
        self.url = f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------------ content

    def add(self, path: str, data: bytes, *, etag: str | None = None) -> str:
        """Serve ``data`` at ``/<path>``; returns the full URL."""
        entry = _Entry(
            data=bytes(data),
            etag=etag if etag is not None else _default_etag(data),
            last_modified=http_date(time.time()),
        )
        with self._lock:
            self._entries[_norm(path)] = entry
        return self.url_for(path)

    def add_file(self, path: str, file: pathlib.Path) -> str:
        """Serve a file from disk (streamed, re-stat'ed on each request) at ``/<path>``."""
        entry = _Entry(file=pathlib.Path(file))
        with self._lock:
            self._entries[_norm(path)] = entry
        return self.url_for(path)

    def serve_dir(self, directory: pathlib.Path) -> None:
        """Serve every file below ``directory`` at ``/<relative path>`` (looked up lazily)."""
        with self._lock:
            self._dirs.append(pathlib.Path(directory).resolve())

    def remove(self, path: str) -> None:
        with self._lock:
            self._entries.pop(_norm(path), None)

    def url_for(self, path: str) -> str:
        return self.url + urllib.parse.quote(_norm(path))

    # ------------------------------------------------------------------ faults / stats

    def set_fault(self, path: str, **knobs: Any) -> None:
        """Set the fault knobs of ``path`` (replacing previous ones). Unknown knob: TypeError."""
        faults = Faults(**knobs)
        with self._lock:
            self._faults[_norm(path)] = faults

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def bytes_sent(self, path: str) -> int:
        """Body bytes of the resource written for ``path`` over all requests.

        Exact for complete, cut and stalled responses (the server flushes before cutting).
        If the *client* hangs up mid-body, the last piece handed to the socket counts in full
        even if the client never read all of it. Error bodies (404, injected statuses) don't
        count.
        """
        with self._lock:
            return self._bytes.get(_norm(path), 0)

    def reset_stats(self) -> None:
        with self._lock:
            self.requests.clear()
            self._bytes.clear()

    def requests_for(self, path: str) -> list[RequestRecord]:
        path = _norm(path)
        with self._lock:
            return [r for r in self.requests if r.path == path]

    # ------------------------------------------------------------------ request handling

    def _lookup(self, path: str) -> _Entry | None:
        with self._lock:
            entry = self._entries.get(path)
            dirs = list(self._dirs)
        if entry is not None:
            return entry
        rel = path.lstrip("/")
        if not rel:
            return None
        for root in dirs:
            candidate = (root / rel).resolve()
            if candidate.is_relative_to(root) and candidate.is_file():
                return _Entry(file=candidate)
        return None

    @staticmethod
    def _meta(entry: _Entry) -> _Meta | None:
        if entry.data is not None:
            assert entry.etag is not None
            return _Meta(len(entry.data), entry.etag, entry.last_modified)
        assert entry.file is not None
        try:
            st = entry.file.stat()
        except OSError:
            return None
        return _Meta(st.st_size, f'"{st.st_size:x}-{st.st_mtime_ns:x}"', http_date(st.st_mtime))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        record = RequestRecord(
            method=request.method,
            path=path,
            headers=dict(request.headers),
            range=request.headers.get("Range"),
        )
        with self._lock:
            self.requests.append(record)
            faults = self._faults.get(path)
        try:
            return await self._respond(request, record, faults)
        except ConnectionError:
            # Client went away (or we aborted the connection on purpose): nothing to answer,
            # and aiohttp ignores errors writing this response to the closed transport.
            return web.Response(status=499)

    async def _respond(
        self, request: web.Request, record: RequestRecord, faults: Faults | None
    ) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return self._simple(record, 405, headers={"Allow": "GET, HEAD"})

        injected = self._early_fault(
            request, faults, auth_headers={"WWW-Authenticate": 'Bearer realm="fileserver"'}
        )
        if injected is not None:
            status, headers = injected
            return self._simple(record, status, headers=headers)

        entry = self._lookup(record.path)
        meta = self._meta(entry) if entry is not None else None
        if entry is None or meta is None:
            return self._simple(record, 404)

        headers = {
            "Accept-Ranges": "bytes",
            "ETag": meta.etag,
            "Last-Modified": meta.last_modified,
            "Content-Type": "application/octet-stream",
        }
        return await self._serve_body(
            request,
            record,
            entry,
            record.path,
            size=meta.size,
            headers=headers,
            faults=faults,
            unsatisfiable_text="416 from test fileserver\n",
        )

    def _simple(
        self, record: RequestRecord, status: int, *, headers: dict[str, str] | None = None
    ) -> web.Response:
        record.status = status
        text = None if status < 400 else f"{status} from test fileserver\n"
        return web.Response(status=status, text=text, headers=headers)


# ---------------------------------------------------------------------- pytest fixtures


@pytest.fixture
def fileserver() -> Iterator[FileServer]:
    """A started FileServer, stopped after the test."""
    with FileServer() as server:
        yield server


@pytest.fixture
def fileserver2() -> Iterator[FileServer]:
    """A second, independent FileServer (different port, hence different origin)."""
    with FileServer() as server:
        yield server


# ---------------------------------------------------------------------- standalone mode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.servers.fileserver")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dir", type=pathlib.Path, required=True, help="directory to serve")
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        parser.error(f"not a directory: {args.dir}")

    exit_on_sigterm()
    server = FileServer(host=args.host, port=args.port)
    server.serve_dir(args.dir)
    server.serve_until_killed(lambda: f"READY {server.url}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
