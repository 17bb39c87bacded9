"""`mmd.transfer.download` used directly, as a source plugin's core would use it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mmd.errors import ChecksumError, DownloadError
from mmd.partfile import PartFile
from mmd.transfer import TransferOptions, download, new_session, parse_retry_after, show_url
from mmd.types import RemoteFile
from tests.servers.fileserver import FileServer
from tests.test_sync_http import payload


async def fetch(file: RemoteFile, dest: Path, progress=None) -> str:
    part = PartFile(dest, file.path)
    part.open()
    options = TransferOptions(idle_timeout=5)
    try:
        async with new_session(options) as session:
            await download(session, file, part, options, progress)
        return part.finish(file.sha256, file.size)
    finally:
        part.close()


async def test_progress_reports_done_total_and_rate(fileserver: FileServer, tmp_path: Path):
    data = payload(9 * 1024 * 1024)
    url = fileserver.add("p.bin", data)
    seen: list[tuple[int, int | None, float]] = []
    digest = await fetch(
        RemoteFile("p.bin", len(data), None, url), tmp_path / "p.bin", lambda *a: seen.append(a)
    )
    assert digest == hashlib.sha256(data).hexdigest()
    assert seen and seen[-1][0] == len(data)
    assert all(total == len(data) for _, total, _ in seen)
    assert [d for d, _, _ in seen] == sorted(d for d, _, _ in seen)
    assert all(rate > 0 for _, _, rate in seen)


async def test_resume_rehashes_existing_part(fileserver: FileServer, tmp_path: Path):
    data = payload(2 * 1024 * 1024)
    url = fileserver.add("r.bin", data)
    dest = tmp_path / "r.bin"
    # An earlier process left the first half and the resume record behind.
    dest.with_name("r.bin.part").write_bytes(data[: len(data) // 2])
    part = PartFile(dest, "r.bin")
    head = await _head_etag(fileserver, url)
    part.save_meta({"url": url, "validator": head, "size": len(data)})

    sha = hashlib.sha256(data).hexdigest()
    assert await fetch(RemoteFile("r.bin", len(data), sha, url), dest) == sha
    (request,) = [r for r in fileserver.requests if r.method == "GET"]
    assert request.range == f"bytes={len(data) // 2}-" and request.header("If-Range") == head
    assert dest.read_bytes() == data and not dest.with_name("r.bin.part").exists()


async def _head_etag(server: FileServer, url: str) -> str:
    async with new_session(TransferOptions()) as session, session.head(url) as resp:
        etag = resp.headers["ETag"]
    server.reset_stats()
    return etag


async def test_changed_remote_file_restarts_via_if_range(fileserver: FileServer, tmp_path: Path):
    old, new = payload(1_000_000, b"old"), payload(1_000_000, b"new")
    url = fileserver.add("c.bin", new)
    dest = tmp_path / "c.bin"
    dest.with_name("c.bin.part").write_bytes(old[:400_000])
    PartFile(dest, "c.bin").save_meta({"url": url, "validator": '"stale-etag"', "size": 10**6})

    sha = hashlib.sha256(new).hexdigest()
    assert await fetch(RemoteFile("c.bin", len(new), sha, url), dest) == sha
    (request,) = [r for r in fileserver.requests if r.method == "GET"]
    assert request.status == 200  # the server said "changed": whole file, from zero
    assert dest.read_bytes() == new


async def test_wrong_digest_deletes_bytes(fileserver: FileServer, tmp_path: Path):
    url = fileserver.add("w.bin", b"abc")
    dest = tmp_path / "dl"
    dest.mkdir()
    with pytest.raises(ChecksumError) as info:
        await fetch(RemoteFile("w.bin", 3, "0" * 64, url), dest / "w.bin")
    assert info.value.expected == "0" * 64
    assert info.value.actual == hashlib.sha256(b"abc").hexdigest()
    assert list(dest.iterdir()) == []


async def test_no_url_is_an_error(tmp_path: Path):
    with pytest.raises(DownloadError, match="gave no URL"):
        await fetch(RemoteFile("x.bin"), tmp_path / "x.bin")


def test_show_url_hides_credentials_and_query() -> None:
    shown = show_url("https://user:pw@host.example:8443/a/b.bin?X-Amz-Signature=secret")
    assert shown == "https://host.example:8443/a/b.bin"


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert 0 <= (parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") or 0) < 1
