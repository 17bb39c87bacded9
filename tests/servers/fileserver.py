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
import asyncio
import collections
import dataclasses
import email.utils
import hashlib
import logging
import pathlib
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from typing import Any, BinaryIO

import pytest
from aiohttp import web

from tests.servers.threaded import ThreadedServer

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

#: Use as ``cut_times``/``stall_times``/``redirect_times`` for "every time".
ALWAYS = 1 << 62

DATA_CHUNK = 1024 * 1024
FILE_CHUNK = 4 * 1024 * 1024
_FLUSH_TIMEOUT = 5.0


@dataclasses.dataclass
class RequestRecord:
    """One request as seen by the server (fields are final once the response is done)."""

    method: str
    path: str
    headers: dict[str, str]
    status: int = 0
    bytes_sent: int = 0
    range: str | None = None

    def header(self, name: str) -> str | None:
        """Case-insensitive lookup of a request header."""
        lname = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lname:
                return value
        return None


@dataclasses.dataclass
class Faults:
    """Fault knobs of one path; see ``FileServer.set_fault``."""

    cut_after: int | None = None
    cut_times: int = 1
    stall_after: int | None = None
    stall_seconds: float = 0.0
    stall_times: int = 1
    ignore_range: bool = False
    ignore_if_range: bool = False  # honour Range but not If-Range, like naive servers
    flip_byte: int | None = None
    status_sequence: list[int] = dataclasses.field(default_factory=list)
    retry_after: str | None = None
    redirect_to: str | None = None
    redirect_times: int = ALWAYS
    require_auth: str | None = None

    def __post_init__(self) -> None:
        self._statuses: collections.deque[int] = collections.deque(self.status_sequence)


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


def _http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def _norm(path: str) -> str:
    return "/" + path.lstrip("/")


def _default_etag(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


class _Unsatisfiable:
    pass


_UNSATISFIABLE = _Unsatisfiable()


def _parse_range(value: str, size: int) -> tuple[int, int] | _Unsatisfiable | None:
    """Parse a single ``bytes=`` range.

    Returns (start, end_exclusive), ``_UNSATISFIABLE`` or None (invalid / multi-range:
    ignore the header and send the full body).
    """
    unit, _, spec = value.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, sep, last = spec.strip().partition("-")
    if not sep:
        return None
    first, last = first.strip(), last.strip()
    try:
        if not first:  # suffix range: bytes=-S
            suffix = int(last)
            if suffix <= 0 or size == 0:
                return _UNSATISFIABLE
            return max(0, size - suffix), size
        start = int(first)
        end = int(last) + 1 if last else None
    except ValueError:
        return None
    if start < 0 or (end is not None and end <= start):
        return None
    if start >= size:
        return _UNSATISFIABLE
    return start, size if end is None else min(end, size)


class FileServer(ThreadedServer):
    """Threaded aiohttp file server with fault knobs. See module docstring."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self.url = ""
        self.requests: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._dirs: list[pathlib.Path] = []
        self._faults: dict[str, Faults] = {}
        self._bytes: dict[str, int] = collections.defaultdict(int)

    # ------------------------------------------------------------------ lifecycle

    async def _setup(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.25)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        self.port = runner.addresses[0][1]
        self.url = f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------------ content

    def add(self, path: str, data: bytes, *, etag: str | None = None) -> str:
        """Serve ``data`` at ``/<path>``; returns the full URL."""
        entry = _Entry(
            data=bytes(data),
            etag=etag if etag is not None else _default_etag(data),
            last_modified=_http_date(time.time()),
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
        return _Meta(st.st_size, f'"{st.st_size:x}-{st.st_mtime_ns:x}"', _http_date(st.st_mtime))

    def _take(self, faults: Faults | None, kind: str) -> bool:
        """Consume one use of a counted knob; True if it applies to this response."""
        if faults is None:
            return False
        with self._lock:
            left = getattr(faults, kind)
            if left <= 0:
                return False
            setattr(faults, kind, left - 1)
            return True

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

        if faults is not None:
            if (
                faults.require_auth is not None
                and request.headers.get("Authorization") != faults.require_auth
            ):
                return self._simple(
                    record, 401, headers={"WWW-Authenticate": 'Bearer realm="fileserver"'}
                )
            with self._lock:
                status = faults._statuses.popleft() if faults._statuses else None
            if status is not None and status != 200:
                headers = {}
                if faults.retry_after is not None:
                    headers["Retry-After"] = faults.retry_after
                return self._simple(record, status, headers=headers)
            if faults.redirect_to is not None and self._take(faults, "redirect_times"):
                return self._simple(record, 302, headers={"Location": faults.redirect_to})

        entry = self._lookup(record.path)
        meta = self._meta(entry) if entry is not None else None
        if entry is None or meta is None:
            return self._simple(record, 404)

        size = meta.size
        headers = {
            "Accept-Ranges": "bytes",
            "ETag": meta.etag,
            "Last-Modified": meta.last_modified,
            "Content-Type": "application/octet-stream",
        }
        start, end, status = 0, size, 200
        range_header = request.headers.get("Range")
        if range_header is not None and not (faults is not None and faults.ignore_range):
            if_range = request.headers.get("If-Range")
            if (
                if_range is None
                or (faults is not None and faults.ignore_if_range)
                or if_range.strip() in (meta.etag, meta.last_modified)
            ):
                parsed = _parse_range(range_header, size)
                if isinstance(parsed, _Unsatisfiable):
                    headers["Content-Range"] = f"bytes */{size}"
                    return self._simple(record, 416, headers=headers)
                if parsed is not None:
                    start, end = parsed
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"

        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = end - start
        record.status = status
        await resp.prepare(request)
        if request.method == "HEAD":
            await resp.write_eof()
            return resp

        length = end - start
        stall_at: int | None = None
        cut_at: int | None = None
        stall_seconds = 0.0
        if faults is not None:
            if (
                faults.stall_after is not None
                and faults.stall_after < length
                and self._take(faults, "stall_times")
            ):
                stall_at = max(0, faults.stall_after)
                stall_seconds = faults.stall_seconds
            if (
                faults.cut_after is not None
                and faults.cut_after < length
                and self._take(faults, "cut_times")
            ):
                cut_at = max(0, faults.cut_after)
        flip = faults.flip_byte if faults is not None else None

        await resp.write(b"")  # push the (buffered) headers out now
        pos = 0

        async def checkpoint() -> bool:
            """Handle stall/cut at the current position; True if the connection was cut."""
            nonlocal stall_at
            if stall_at is not None and pos == stall_at:
                stall_at = None
                await self._flush(request)
                await asyncio.sleep(stall_seconds)
            if cut_at is not None and pos == cut_at:
                await self._flush(request)
                transport = request.transport
                if transport is not None:
                    transport.abort()
                return True
            return False

        if await checkpoint():
            return resp
        async for chunk in self._iter_body(entry, start, end, flip):
            view = memoryview(chunk)
            while view:
                limit = len(view)
                for mark in (stall_at, cut_at):
                    if mark is not None and mark > pos:
                        limit = min(limit, mark - pos)
                piece, view = view[:limit], view[limit:]
                transport = request.transport
                if transport is None or transport.is_closing():
                    raise ConnectionResetError("client went away")
                # Counted before the write so that a client that has read everything never
                # sees a stale count. resp.write() hands the piece to the transport without
                # suspending first; an error after that (while draining) means the piece was
                # at least partly sent, so it stays counted.
                with self._lock:
                    self._bytes[record.path] += len(piece)
                    record.bytes_sent += len(piece)
                await resp.write(piece)
                pos += len(piece)
                if await checkpoint():
                    return resp
        await resp.write_eof()
        return resp

    def _simple(
        self, record: RequestRecord, status: int, *, headers: dict[str, str] | None = None
    ) -> web.Response:
        record.status = status
        text = None if status < 400 else f"{status} from test fileserver\n"
        return web.Response(status=status, text=text, headers=headers)

    @staticmethod
    async def _flush(request: web.Request) -> None:
        """Wait until everything written so far has left the transport's buffer."""
        transport = request.transport
        deadline = time.monotonic() + _FLUSH_TIMEOUT
        while (
            transport is not None
            and not transport.is_closing()
            and transport.get_write_buffer_size() > 0
            and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.001)

    @staticmethod
    async def _iter_body(
        entry: _Entry, start: int, end: int, flip: int | None
    ) -> AsyncIterator[bytes | memoryview]:
        def flipped(chunk: bytes | memoryview, offset: int) -> bytes | memoryview:
            if flip is None or not offset <= flip < offset + len(chunk):
                return chunk
            buf = bytearray(chunk)
            buf[flip - offset] ^= 0xFF
            return bytes(buf)

        if entry.data is not None:
            data = memoryview(entry.data)
            for offset in range(start, end, DATA_CHUNK):
                chunk = data[offset : min(end, offset + DATA_CHUNK)]
                yield flipped(chunk, offset)
            return
        assert entry.file is not None
        loop = asyncio.get_running_loop()
        fh: BinaryIO = await loop.run_in_executor(None, entry.file.open, "rb")
        try:
            fh.seek(start)
            offset = start
            while offset < end:
                chunk = await loop.run_in_executor(None, fh.read, min(FILE_CHUNK, end - offset))
                if not chunk:
                    raise ConnectionAbortedError(f"{entry.file} shrank while serving it")
                yield flipped(chunk, offset)
                offset += len(chunk)
        finally:
            fh.close()


# ---------------------------------------------------------------------- pytest fixtures


@pytest.fixture
def fileserver() -> Iterator[FileServer]:
    """A started FileServer, stopped after the test."""
    server = FileServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fileserver2() -> Iterator[FileServer]:
    """A second, independent FileServer (different port, hence different origin)."""
    server = FileServer().start()
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------- standalone mode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.servers.fileserver")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dir", type=pathlib.Path, required=True, help="directory to serve")
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        parser.error(f"not a directory: {args.dir}")

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    server = FileServer(host=args.host, port=args.port)
    server.serve_dir(args.dir)
    server.start()
    try:
        sys.stdout.write(f"READY {server.url}\n")
        sys.stdout.flush()
        threading.Event().wait()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
