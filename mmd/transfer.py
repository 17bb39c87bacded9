"""The HTTP byte mover used by every HTTP source.

Streams into a PartFile (sha256 while writing, in a worker thread so hashing overlaps
the network), resumes with Range + If-Range, checks 206/Content-Range, retries with
capped exponential backoff and full jitter (tenacity), honours Retry-After, stops at
once on 4xx other than 408/429, and never forwards credentials to another origin.
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import logging
import random
import re
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urljoin

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from mmd.errors import DownloadError
from mmd.partfile import PartFile
from mmd.types import RemoteFile
from mmd.urls import origin, show_url

log = logging.getLogger(__name__)

Progress = Callable[[int, int | None, float], None]
"""progress(bytes_done, bytes_total or None, rate in bytes/s)"""

MAX_REDIRECTS = 10
PIPELINE_DEPTH = 2  # chunks queued per stage (hash, write) behind the one in work
WRITEBACK_EVERY = 32 << 20  # bytes between background fdatasync calls
PROGRESS_EVERY = 0.1  # seconds between progress callbacks
# Headers that carry credentials: dropped when a redirect leaves the original origin.
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # failures in a row without new bytes before giving up
    base: float = 0.5
    cap: float = 30.0
    retry_after_cap: float = 600.0


@dataclass(frozen=True)
class TransferOptions:
    idle_timeout: float = 3600.0
    connect_timeout: float = 30.0
    chunk_size: int = 4 << 20
    retry: RetryPolicy = field(default_factory=RetryPolicy)


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class RetryableHTTPError(DownloadError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message, retryable=True)
        self.retry_after = retry_after


def new_session(options: TransferOptions, limit: int = 16) -> aiohttp.ClientSession:
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=options.connect_timeout, sock_read=options.idle_timeout
    )
    return aiohttp.ClientSession(
        timeout=timeout,
        auto_decompress=False,
        # aiohttp's 64 KiB default costs ~20 % of throughput on fast links.
        read_bufsize=options.chunk_size,
        connector=aiohttp.TCPConnector(limit=limit),
        trust_env=True,
    )


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, DownloadError):
        return exc.retryable
    return isinstance(exc, aiohttp.ClientError | asyncio.TimeoutError)


class _Attempts:
    """Counts failures since the last attempt that moved bytes."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.failures = 0
        self.last_offset = -1

    def record(self, offset: int) -> None:
        self.failures = 1 if offset > self.last_offset else self.failures + 1
        self.last_offset = offset

    def stop(self, state: RetryCallState) -> bool:
        return self.failures >= self.policy.attempts

    def wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return min(retry_after, self.policy.retry_after_cap)
        ceiling = min(self.policy.cap, self.policy.base * 2 ** (self.failures - 1))
        return random.uniform(0, ceiling)


async def download(
    session: aiohttp.ClientSession,
    file: RemoteFile,
    part: PartFile,
    options: TransferOptions,
    progress: Progress | None = None,
    on_retry: Callable[[], None] | None = None,
) -> None:
    """Fill `part` with the bytes of `file.url`, resuming what is already there."""

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else "?"
        log.info("%s: retrying after %s", file.path, error)
        if on_retry is not None:
            on_retry()

    if not file.url:
        raise DownloadError(f"{file.path}: the source gave no URL", retryable=False)
    attempts = _Attempts(options.retry)
    retrying = AsyncRetrying(
        retry=retry_if_exception(_is_retryable),
        stop=attempts.stop,
        wait=attempts.wait,
        sleep=asyncio.sleep,
        reraise=True,
        before_sleep=before_sleep,
    )
    try:
        async for attempt in retrying:
            with attempt:
                try:
                    await _attempt(session, file, part, options, progress)
                except BaseException:
                    attempts.record(part.offset)
                    raise
    except (TimeoutError, aiohttp.ClientError) as exc:
        # Out of retries on a transport error: say it in one line, keep the .part.
        raise DownloadError(
            f"{file.path}: {_describe(exc, options)} from {show_url(file.url)} "
            f"(gave up after {attempts.failures} tries; the next pass resumes)"
        ) from exc
    except RetryableHTTPError as exc:
        raise DownloadError(
            f"{file.path}: {exc.message} (gave up after {attempts.failures} tries)"
        ) from exc


def _describe(exc: BaseException, options: TransferOptions) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"no data for {options.idle_timeout:g} s (download_timeout)"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "connection closed mid-file"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or exc.os_error})"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _request_headers(file: RemoteFile, part: PartFile) -> dict[str, str]:
    headers = {k: v for k, v in file.headers.items()}
    headers["Accept-Encoding"] = "identity"
    if part.offset > 0:
        validator = part.load_meta().get("validator")
        headers["Range"] = f"bytes={part.offset}-"
        if validator:
            headers["If-Range"] = validator
    return headers


def _can_resume(file: RemoteFile, part: PartFile) -> bool:
    """Resume only when a changed remote file would be noticed (validator or digest)."""
    meta = part.load_meta()
    if file.sha256 is not None:
        # The digest catches any splice, so a re-signed URL (LFS hrefs, presigned S3,
        # CDN tokens) for the same file keeps its bytes.
        return True
    return meta.get("url") == file.url and bool(meta.get("validator"))


async def _attempt(
    session: aiohttp.ClientSession,
    file: RemoteFile,
    part: PartFile,
    options: TransferOptions,
    progress: Progress | None,
) -> None:
    assert file.url is not None
    if part.offset and (
        not _can_resume(file, part) or (file.size is not None and part.offset > file.size)
    ):
        part.reset()
    known_size = file.size if file.size is not None else part.load_meta().get("size")
    if known_size is not None and part.offset == known_size and part.offset > 0:
        return  # every byte is already here (killed between last write and rename)
    headers = _request_headers(file, part)
    first_origin = origin(file.url)
    url = file.url
    for _ in range(MAX_REDIRECTS + 1):
        async with session.get(url, headers=headers, allow_redirects=False) as resp:
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.headers.get("Location")
                if not location:
                    raise DownloadError(f"redirect without Location from {show_url(url)}")
                url = urljoin(url, location)
                if origin(url) != first_origin:
                    headers = {
                        k: v for k, v in headers.items() if k.lower() not in CREDENTIAL_HEADERS
                    }
                continue
            await _receive(resp, url, file, part, options, progress)
            return
    raise DownloadError(f"too many redirects from {show_url(file.url)}", retryable=False)


async def _drain(
    pending: deque[asyncio.Future[None]],
    syncing: asyncio.Future[None] | None,
    *executors: ThreadPoolExecutor,
) -> OSError | None:
    """Wait for queued hash/write work; the first write error, if any."""
    futures = [*pending, *([syncing] if syncing is not None else [])]
    pending.clear()
    results = await asyncio.gather(*futures, return_exceptions=True) if futures else []
    for executor in executors:
        executor.shutdown(wait=False)
    return next((r for r in results if isinstance(r, OSError)), None)


def _write_failure(file: RemoteFile, exc: OSError) -> DownloadError:
    if exc.errno == errno.ENOSPC:
        return DownloadError(f"{file.path}: disk full while writing", retryable=False)
    return DownloadError(f"{file.path}: cannot write: {exc}", retryable=False)


def _check_status(resp: aiohttp.ClientResponse, url: str, file: RemoteFile) -> None:
    if resp.status in (200, 206, 416):
        return
    reason = f"HTTP {resp.status} {resp.reason or ''}".strip() + f" from {show_url(url)}"
    if resp.status in (408, 429) or resp.status >= 500:
        raise RetryableHTTPError(reason, parse_retry_after(resp.headers.get("Retry-After")))
    if resp.status == 403 and resp.headers.get("X-RateLimit-Remaining") == "0":
        # GitHub's (and others') rate limit: wait for the reset, do not give up.
        reset = resp.headers.get("X-RateLimit-Reset", "")
        wait = float(reset) - time.time() if reset.replace(".", "", 1).isdigit() else None
        raise RetryableHTTPError(reason + " (rate limited)", max(1.0, wait) if wait else None)
    hint = "check the URL and credentials" if resp.status in (401, 403, 404) else None
    raise DownloadError(f"{file.path}: {reason}", hint, retryable=False)


async def _receive(
    resp: aiohttp.ClientResponse,
    url: str,
    file: RemoteFile,
    part: PartFile,
    options: TransferOptions,
    progress: Progress | None,
) -> None:
    _check_status(resp, url, file)
    loop = asyncio.get_running_loop()
    total: int | None
    saved = part.load_meta()
    validator = resp.headers.get("ETag")
    if not validator or validator.startswith("W/"):
        validator = resp.headers.get("Last-Modified")
    if resp.status == 416:
        unsatisfied = resp.headers.get("Content-Range", "")
        if unsatisfied == f"bytes */{part.offset}" and validator == saved.get("validator"):
            return  # we already hold the whole, unchanged file
        # Our Range starts at or past the end: the server's file is shorter than ours.
        part.reset()
        raise RetryableHTTPError(f"HTTP 416 from {show_url(url)}; restarting from zero")
    if resp.status == 206:
        match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        total = None if not match or match.group(3) == "*" else int(match.group(3))
        changed = (validator and validator != saved.get("validator")) or (
            total is not None and saved.get("size") not in (None, total)
        )
        if not match or int(match.group(1)) != part.offset or changed:
            # A server that ignores If-Range must not splice two versions together.
            part.reset()
            raise RetryableHTTPError(
                f"{show_url(url)} changed or sent a bad range while resuming; restarting"
            )
    else:
        if part.offset:
            log.info("%s: server sent the whole file; restarting from zero", file.path)
            await loop.run_in_executor(None, part.reset)
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
    if total is not None and file.size is not None and total != file.size:
        raise DownloadError(
            f"{file.path}: server has {total} bytes, expected {file.size}", retryable=False
        )
    part.save_meta({"url": file.url, "validator": validator, "size": total})
    total = total if total is not None else file.size
    started, start_offset = time.monotonic(), part.offset
    # Three stages at once: the event loop receives chunk N+1 while one thread hashes
    # chunk N and another writes it (hashlib and os.write drop the GIL). One thread per
    # stage keeps each stage in order; up to PIPELINE_DEPTH chunks wait per stage.
    hasher = ThreadPoolExecutor(1, thread_name_prefix="mmd-sha256")
    writer = ThreadPoolExecutor(1, thread_name_prefix="mmd-write")
    pending: deque[asyncio.Future[None]] = deque()
    # An fdatasync in the background every WRITEBACK_EVERY bytes, so the disk writes
    # while the network is busy and the fsync in part.finish() has little left to do.
    syncing: asyncio.Future[None] | None = None
    received = synced = part.offset
    next_progress = 0.0
    try:
        while True:
            chunk = await resp.content.read(options.chunk_size)
            if not chunk:
                break
            while len(pending) >= 2 * PIPELINE_DEPTH:
                await pending.popleft()
            pending.append(loop.run_in_executor(hasher, part.update_hash, chunk))
            pending.append(loop.run_in_executor(writer, part.append, chunk, received))
            received += len(chunk)
            if received - synced >= WRITEBACK_EVERY and (syncing is None or syncing.done()):
                if syncing is not None:
                    await syncing  # raises its error, if any
                syncing = loop.run_in_executor(None, part.sync)
                synced = received
            now = time.monotonic()
            if progress is not None and (now >= next_progress or received == total):
                # A few times a second is plenty for bars, /status and SSE; per chunk it
                # would cost the event loop thousands of calls a second at 1 GB/s.
                progress(received, total, (received - start_offset) / max(now - started, 1e-6))
                next_progress = now + PROGRESS_EVERY
        while pending:
            await pending.popleft()
        if syncing is not None:
            await syncing
    except OSError as exc:
        if isinstance(exc, aiohttp.ClientError):
            write_error = await _drain(pending, syncing, hasher, writer)
            if write_error is not None:
                # The hash may cover bytes that never reached the disk: no resume on top
                # of that; the next pass reopens the .part and rehashes what is there.
                raise _write_failure(file, write_error) from exc
            raise
        await _drain(pending, syncing, hasher, writer)
        raise _write_failure(file, exc) from exc
    except BaseException:
        await _drain(pending, syncing, hasher, writer)
        raise
    await _drain(pending, syncing, hasher, writer)
    if total is not None and part.offset < total:
        raise RetryableHTTPError(
            f"connection closed at {part.offset} of {total} bytes from {show_url(url)}"
        )
