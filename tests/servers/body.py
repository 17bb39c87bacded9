"""Serving file bodies with fault injection, shared by ``FileServer`` and ``HfHubServer``.

``BodyServer`` (a ``ThreadedServer``) holds the request-level knobs (``require_auth``,
``status_sequence``, ``redirect_to``: ``_early_fault``) and the body ones (Range/If-Range with
206/416, ``ignore_range``, ``ignore_if_range``, ``flip_byte``, ``stall_after``, ``cut_after``:
``_serve_body``/``_stream_body``), and counts the body bytes written per key in ``_bytes``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import email.utils
import pathlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import BinaryIO, Protocol

from aiohttp import web

from tests.servers.threaded import ThreadedServer

__all__ = ["ALWAYS", "Blob", "BodyServer", "Faults", "RequestRecord", "Source", "http_date"]

#: Use as ``cut_times``/``stall_times``/``redirect_times`` for "every time".
ALWAYS = 1 << 62

DATA_CHUNK = 1024 * 1024
FILE_CHUNK = 4 * 1024 * 1024
SENDFILE_SEGMENT = 64 * 1024 * 1024
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


class Source(Protocol):
    """Where the bytes of a body come from: ``data`` if not None, else ``file``."""

    @property
    def data(self) -> bytes | None: ...

    @property
    def file(self) -> pathlib.Path | None: ...


@dataclasses.dataclass(frozen=True)
class Blob:
    """A ``Source`` held in memory."""

    data: bytes
    file: None = None


def http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


class Unsatisfiable:
    pass


UNSATISFIABLE = Unsatisfiable()


def parse_range(value: str, size: int) -> tuple[int, int] | Unsatisfiable | None:
    """Parse a single ``bytes=`` range.

    Returns (start, end_exclusive), ``UNSATISFIABLE`` or None (invalid / multi-range:
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
                return UNSATISFIABLE
            return max(0, size - suffix), size
        start = int(first)
        end = int(last) + 1 if last else None
    except ValueError:
        return None
    if start < 0 or (end is not None and end <= start):
        return None
    if start >= size:
        return UNSATISFIABLE
    return start, size if end is None else min(end, size)


class BodyServer(ThreadedServer):
    """A ``ThreadedServer`` that serves bodies with the fault knobs of ``Faults``."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.RLock()
        #: Body bytes written, by the key given to ``_serve_body``/``_stream_body``.
        self._bytes: dict[str, int] = collections.defaultdict(int)

    def _take(self, faults: Faults, kind: str) -> bool:
        """Consume one use of a counted knob; True if it applies to this response."""
        with self._lock:
            left = getattr(faults, kind)
            if left <= 0:
                return False
            setattr(faults, kind, left - 1)
            return True

    def _early_fault(
        self,
        request: web.Request,
        faults: Faults | None,
        auth_headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str]] | None:
        """(status, headers) that ``require_auth``, ``status_sequence`` or ``redirect_to``
        (in that order) impose on this request instead of its normal answer, or None."""
        if faults is None:
            return None
        if (
            faults.require_auth is not None
            and request.headers.get("Authorization") != faults.require_auth
        ):
            return 401, dict(auth_headers or {})
        with self._lock:
            status = faults._statuses.popleft() if faults._statuses else None
        if status is not None and status != 200:
            headers = {}
            if faults.retry_after is not None:
                headers["Retry-After"] = faults.retry_after
            return status, headers
        if faults.redirect_to is not None and self._take(faults, "redirect_times"):
            return 302, {"Location": faults.redirect_to}
        return None

    async def _serve_body(
        self,
        request: web.Request,
        record: RequestRecord,
        source: Source,
        key: str,
        *,
        size: int,
        headers: dict[str, str],
        faults: Faults | None,
        unsatisfiable_text: str,
        sendfile: bool = False,
    ) -> web.StreamResponse:
        """Answer a GET/HEAD with ``source``: 200, 206 or 416 per Range/If-Range (checked
        against ``headers``' ETag and Last-Modified), then the body knobs."""
        start, end, status = 0, size, 200
        range_header = request.headers.get("Range")
        if range_header is not None and not (faults is not None and faults.ignore_range):
            if_range = request.headers.get("If-Range")
            if (
                if_range is None
                or (faults is not None and faults.ignore_if_range)
                or if_range.strip() in (headers["ETag"], headers["Last-Modified"])
            ):
                parsed = parse_range(range_header, size)
                if isinstance(parsed, Unsatisfiable):
                    headers["Content-Range"] = f"bytes */{size}"
                    record.status = 416
                    return web.Response(status=416, text=unsatisfiable_text, headers=headers)
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
        flip = faults.flip_byte if faults is not None else None
        return await self._stream_body(
            request, resp, record, source, key, start, end, faults, flip, sendfile=sendfile
        )

    async def _stream_body(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        record: RequestRecord,
        source: Source,
        key: str,
        start: int,
        end: int,
        faults: Faults | None,
        flip: int | None,
        *,
        sendfile: bool = False,
    ) -> web.StreamResponse:
        """Write bytes [start, end) of ``source`` to the prepared ``resp``, with ``flip``
        applied and the stall/cut knobs of ``faults``; counted under ``key``."""
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

        def count(n: int) -> None:
            with self._lock:
                self._bytes[key] += n
                record.bytes_sent += n

        if (
            sendfile
            and source.file is not None
            and stall_at is None
            and cut_at is None
            and flip is None
            and length > 0
        ):
            await _sendfile(request, source.file, start, length, count)
            await resp.write_eof()
            return resp

        await resp.write(b"")  # push the (buffered) headers out now
        pos = 0

        async def checkpoint() -> bool:
            """Handle stall/cut at the current position; True if the connection was cut."""
            nonlocal stall_at
            if stall_at is not None and pos == stall_at:
                stall_at = None
                await _flush(request)
                await asyncio.sleep(stall_seconds)
            if cut_at is not None and pos == cut_at:
                await _flush(request)
                transport = request.transport
                if transport is not None:
                    transport.abort()
                return True
            return False

        if await checkpoint():
            return resp
        async for chunk in _iter_body(source, start, end, flip):
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
                count(len(piece))
                await resp.write(piece)
                pos += len(piece)
                if await checkpoint():
                    return resp
        await resp.write_eof()
        return resp


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


async def _iter_body(
    source: Source, start: int, end: int, flip: int | None
) -> AsyncIterator[bytes | memoryview]:
    def flipped(chunk: bytes | memoryview, offset: int) -> bytes | memoryview:
        if flip is None or not offset <= flip < offset + len(chunk):
            return chunk
        buf = bytearray(chunk)
        buf[flip - offset] ^= 0xFF
        return bytes(buf)

    if source.data is not None:
        data = memoryview(source.data)
        for offset in range(start, end, DATA_CHUNK):
            yield flipped(data[offset : min(end, offset + DATA_CHUNK)], offset)
        return
    file = source.file
    assert file is not None
    loop = asyncio.get_running_loop()
    fh: BinaryIO = await loop.run_in_executor(None, file.open, "rb")
    try:
        fh.seek(start)
        offset = start
        while offset < end:
            chunk = await loop.run_in_executor(None, fh.read, min(FILE_CHUNK, end - offset))
            if not chunk:
                raise ConnectionAbortedError(f"{file} shrank while serving it")
            yield flipped(chunk, offset)
            offset += len(chunk)
    finally:
        fh.close()


async def _sendfile(
    request: web.Request,
    file: pathlib.Path,
    offset: int,
    count: int,
    counted: Callable[[int], None],
) -> None:
    """Zero-copy body (os.sendfile) in segments; headers were sent by prepare()."""
    loop = asyncio.get_running_loop()
    fh: BinaryIO = await loop.run_in_executor(None, file.open, "rb")
    try:
        pos, left = offset, count
        while left > 0:
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("client went away")
            n = min(SENDFILE_SEGMENT, left)
            try:
                sent = await loop.sendfile(transport, fh, pos, n)
            except NotImplementedError:  # pragma: no cover - e.g. SSL transports
                fh.seek(pos)
                sent = 0
                while sent < n:
                    chunk = await loop.run_in_executor(None, fh.read, min(FILE_CHUNK, n - sent))
                    if not chunk:
                        break
                    transport.write(chunk)
                    sent += len(chunk)
            if sent <= 0:
                raise ConnectionAbortedError(f"{file} shrank while serving it")
            counted(sent)
            pos += sent
            left -= sent
    finally:
        fh.close()
