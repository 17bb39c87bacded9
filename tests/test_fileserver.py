"""Tests of the test HTTP file server (tests/servers/fileserver.py) and its fault knobs."""

from __future__ import annotations

import hashlib
import http.client
import os
import pathlib
import selectors
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import aiohttp
import pytest

from tests.servers import fileserver as fileserver_module
from tests.servers.fileserver import ALWAYS, FileServer

# The project's conftest imports these too; binding them here keeps this file self-contained.
fileserver = fileserver_module.fileserver
fileserver2 = fileserver_module.fileserver2

DATA = bytes(range(256)) * 64  # 16 KiB
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


class Reply:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def fetch(url: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> Reply:
    """One request with http.client (no redirects followed, no exceptions on 4xx/5xx)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    try:
        conn.request(method, parts.path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return Reply(resp.status, resp.headers, body)
    finally:
        conn.close()


# ---------------------------------------------------------------------- normal service


def test_full_get(fileserver: FileServer) -> None:
    url = fileserver.add("models/a.bin", DATA)
    assert url == fileserver.url + "/models/a.bin"
    assert fileserver.url.startswith("http://127.0.0.1:")
    assert not fileserver.url.endswith("/")
    r = fetch(url, headers={"Accept-Encoding": "gzip, deflate"})
    assert r.status == 200
    assert r.body == DATA
    assert r.headers["Content-Length"] == str(len(DATA))
    assert r.headers["Accept-Ranges"] == "bytes"
    assert r.headers["ETag"] == '"' + hashlib.sha256(DATA).hexdigest()[:32] + '"'
    assert r.headers["Last-Modified"].endswith("GMT")
    assert r.headers.get("Content-Encoding") is None
    assert fileserver.bytes_sent("models/a.bin") == len(DATA)
    assert fileserver.bytes_sent("/models/a.bin") == len(DATA)


def test_custom_etag(fileserver: FileServer) -> None:
    url = fileserver.add("x", b"abc", etag='"v1"')
    assert fetch(url).headers["ETag"] == '"v1"'


def test_head(fileserver: FileServer) -> None:
    url = fileserver.add("a.bin", DATA)
    r = fetch(url, method="HEAD")
    assert r.status == 200
    assert r.body == b""
    assert r.headers["Content-Length"] == str(len(DATA))
    assert r.headers["Accept-Ranges"] == "bytes"
    assert r.headers["ETag"]
    assert fileserver.bytes_sent("a.bin") == 0
    r = fetch(url, method="HEAD", headers={"Range": "bytes=10-"})
    assert r.status == 206
    assert r.headers["Content-Range"] == f"bytes 10-{len(DATA) - 1}/{len(DATA)}"


def test_404_and_405(fileserver: FileServer) -> None:
    r = fetch(fileserver.url + "/nope")
    assert r.status == 404
    fileserver.add("a", b"a")
    assert fetch(fileserver.url + "/a", method="POST").status == 405


def test_range_open_ended_and_closed(fileserver: FileServer) -> None:
    url = fileserver.add("a.bin", DATA)
    size = len(DATA)
    r = fetch(url, headers={"Range": "bytes=1000-"})
    assert r.status == 206
    assert r.body == DATA[1000:]
    assert r.headers["Content-Range"] == f"bytes 1000-{size - 1}/{size}"
    assert r.headers["Content-Length"] == str(size - 1000)
    r = fetch(url, headers={"Range": "bytes=10-19"})
    assert r.status == 206
    assert r.body == DATA[10:20]
    assert r.headers["Content-Range"] == f"bytes 10-19/{size}"
    assert r.headers["Content-Length"] == "10"
    r = fetch(url, headers={"Range": f"bytes=10-{size + 100}"})  # clamped
    assert r.status == 206
    assert r.body == DATA[10:]
    r = fetch(url, headers={"Range": "bytes=-5"})  # suffix
    assert r.status == 206
    assert r.body == DATA[-5:]
    assert fileserver.bytes_sent("a.bin") == (size - 1000) + 10 + (size - 10) + 5


def test_range_416(fileserver: FileServer) -> None:
    url = fileserver.add("a.bin", DATA)
    for start in (len(DATA), len(DATA) + 10):
        r = fetch(url, headers={"Range": f"bytes={start}-"})
        assert r.status == 416
        assert r.headers["Content-Range"] == f"bytes */{len(DATA)}"
    assert fileserver.requests[-1].status == 416


def test_if_range(fileserver: FileServer) -> None:
    url = fileserver.add("a.bin", DATA)
    head = fetch(url, method="HEAD")
    etag, last_modified = head.headers["ETag"], head.headers["Last-Modified"]
    r = fetch(url, headers={"Range": "bytes=100-", "If-Range": etag})
    assert (r.status, r.body) == (206, DATA[100:])
    r = fetch(url, headers={"Range": "bytes=100-", "If-Range": last_modified})
    assert (r.status, r.body) == (206, DATA[100:])
    r = fetch(url, headers={"Range": "bytes=100-", "If-Range": '"stale"'})
    assert (r.status, r.body) == (200, DATA)
    assert r.headers.get("Content-Range") is None
    # Content changed behind the client's back: its old ETag no longer matches.
    fileserver.add("a.bin", DATA[::-1])
    r = fetch(url, headers={"Range": "bytes=100-", "If-Range": etag})
    assert (r.status, r.body) == (200, DATA[::-1])


def test_add_file_streams_from_disk(fileserver: FileServer, tmp_path: pathlib.Path) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)  # spans several read chunks
    path = tmp_path / "big.bin"
    path.write_bytes(payload)
    url = fileserver.add_file("big.bin", path)
    r = fetch(url)
    assert r.status == 200
    assert r.body == payload
    etag = r.headers["ETag"]
    r = fetch(url, headers={"Range": "bytes=1048570-2097160", "If-Range": etag})
    assert r.status == 206
    assert r.body == payload[1048570:2097161]
    # Rewriting the file changes its ETag (re-stat'ed per request).
    path.write_bytes(payload + b"more")
    os.utime(path, ns=(1, 1))
    r = fetch(url, headers={"Range": "bytes=10-", "If-Range": etag})
    assert (r.status, r.body) == (200, payload + b"more")


def test_requests_log(fileserver: FileServer) -> None:
    url = fileserver.add("a.bin", DATA)
    fetch(url, headers={"X-Test": "1"})
    fetch(url, method="HEAD")
    fetch(url, headers={"Range": "bytes=5-9"})
    fetch(fileserver.url + "/missing")
    log = fileserver.requests
    assert [(r.method, r.path, r.status) for r in log] == [
        ("GET", "/a.bin", 200),
        ("HEAD", "/a.bin", 200),
        ("GET", "/a.bin", 206),
        ("GET", "/missing", 404),
    ]
    assert log[0].header("x-test") == "1"
    assert log[0].header("X-TEST") == "1"
    assert log[0].header("nope") is None
    assert log[0].range is None
    assert log[2].range == "bytes=5-9"
    assert [r.bytes_sent for r in log] == [len(DATA), 0, 5, 0]
    assert len(fileserver.requests_for("a.bin")) == 3
    fileserver.reset_stats()
    assert fileserver.requests == []
    assert fileserver.bytes_sent("a.bin") == 0


# ---------------------------------------------------------------------- fault knobs


def test_cut_after(fileserver: FileServer) -> None:
    url = fileserver.add("a.bin", DATA)
    fileserver.set_fault("a.bin", cut_after=1000)
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    conn.request("GET", parts.path)
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(len(DATA))
    with pytest.raises(http.client.IncompleteRead) as info:
        resp.read()
    conn.close()
    assert info.value.partial == DATA[:1000]
    assert fileserver.bytes_sent("a.bin") == 1000
    assert fileserver.requests[-1].bytes_sent == 1000
    # cut_times defaults to 1: the next response is complete.
    assert fetch(url).body == DATA
    assert fileserver.bytes_sent("a.bin") == 1000 + len(DATA)


def test_cut_after_zero_and_on_range(fileserver: FileServer) -> None:
    url = fileserver.add("a.bin", DATA)
    fileserver.set_fault("a.bin", cut_after=0, cut_times=2)
    with pytest.raises(http.client.IncompleteRead) as info:
        fetch(url)
    assert info.value.partial == b""
    # Offsets are relative to the response body, so a resumed request is cut too.
    fileserver.set_fault("a.bin", cut_after=100, cut_times=ALWAYS)
    with pytest.raises(http.client.IncompleteRead) as info:
        fetch(url, headers={"Range": "bytes=500-"})
    assert info.value.partial == DATA[500:600]
    # A body no longer than cut_after is served whole and doesn't count as a cut.
    r = fetch(url, headers={"Range": f"bytes={len(DATA) - 100}-"})
    assert (r.status, r.body) == (206, DATA[-100:])


async def test_cut_after_aiohttp_client(fileserver: FileServer) -> None:
    url = fileserver.add("a.bin", DATA)
    fileserver.set_fault("a.bin", cut_after=5000, cut_times=ALWAYS)
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            got = bytearray()
            with pytest.raises(aiohttp.ClientPayloadError):
                async with session.get(url) as resp:
                    assert resp.status == 200
                    async for chunk in resp.content.iter_any():
                        got += chunk
            assert bytes(got) == DATA[:5000]
    assert fileserver.bytes_sent("a.bin") == 10000


def test_stall(fileserver: FileServer) -> None:
    url = fileserver.add("a.bin", DATA)
    fileserver.set_fault("a.bin", stall_after=100, stall_seconds=0.3)
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    t0 = time.monotonic()
    conn.request("GET", parts.path)
    resp = conn.getresponse()
    first = resp.read(100)  # available before the stall
    t_first = time.monotonic() - t0
    rest = resp.read()
    elapsed = time.monotonic() - t0
    conn.close()
    assert first + rest == DATA
    assert t_first < 0.25
    assert elapsed >= 0.3
    # stall_times defaults to 1.
    t0 = time.monotonic()
    assert fetch(url).body == DATA
    assert time.monotonic() - t0 < 0.25


def test_stall_then_cut(fileserver: FileServer) -> None:
    url = fileserver.add("a.bin", DATA)
    fileserver.set_fault("a.bin", stall_after=50, stall_seconds=0.2, cut_after=4000, cut_times=1)
    t0 = time.monotonic()
    with pytest.raises(http.client.IncompleteRead) as info:
        fetch(url)
    assert time.monotonic() - t0 >= 0.2
    assert info.value.partial == DATA[:4000]
    assert fileserver.bytes_sent("a.bin") == 4000


def test_ignore_range(fileserver: FileServer) -> None:
    url = fileserver.add("a.bin", DATA)
    fileserver.set_fault("a.bin", ignore_range=True)
    etag = fetch(url, method="HEAD").headers["ETag"]
    r = fetch(url, headers={"Range": "bytes=100-", "If-Range": etag})
    assert r.status == 200
    assert r.body == DATA
    assert r.headers.get("Content-Range") is None
    fileserver.clear_faults()
    assert fetch(url, headers={"Range": "bytes=100-"}).status == 206


def test_flip_byte(fileserver: FileServer) -> None:
    url = fileserver.add("a.bin", DATA)
    etag = fetch(url, method="HEAD").headers["ETag"]
    fileserver.set_fault("a.bin", flip_byte=1234)
    r = fetch(url)
    assert r.status == 200
    assert len(r.body) == len(DATA)
    assert r.headers["ETag"] == etag
    assert r.body != DATA
    assert r.body[1234] == DATA[1234] ^ 0xFF
    assert r.body[:1234] == DATA[:1234]
    assert r.body[1235:] == DATA[1235:]
    # The offset is absolute: a range covering it is corrupted at the same place.
    r = fetch(url, headers={"Range": "bytes=1200-1299"})
    assert r.body[34] == DATA[1234] ^ 0xFF
    assert fetch(url, headers={"Range": "bytes=2000-"}).body == DATA[2000:]


def test_flip_byte_file(fileserver: FileServer, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(DATA)
    url = fileserver.add_file("f.bin", path)
    fileserver.set_fault("f.bin", flip_byte=0)
    body = fetch(url).body
    assert body[0] == DATA[0] ^ 0xFF
    assert body[1:] == DATA[1:]


def test_status_sequence(fileserver: FileServer) -> None:
    url = fileserver.add("a.bin", DATA)
    fileserver.set_fault("a.bin", status_sequence=[503, 429, 500], retry_after="2")
    statuses = []
    for _ in range(3):
        r = fetch(url)
        statuses.append(r.status)
        assert r.headers["Retry-After"] == "2"
        assert r.body != DATA
    assert statuses == [503, 429, 500]
    r = fetch(url)
    assert (r.status, r.body) == (200, DATA)
    assert r.headers.get("Retry-After") is None
    assert [x.status for x in fileserver.requests] == [503, 429, 500, 200]
    assert fileserver.bytes_sent("a.bin") == len(DATA)


def test_status_sequence_without_retry_after_and_with_200(fileserver: FileServer) -> None:
    url = fileserver.add("a.bin", DATA)
    fileserver.set_fault("a.bin", status_sequence=[502, 200, 404])
    r = fetch(url)
    assert r.status == 502
    assert r.headers.get("Retry-After") is None
    assert fetch(url).status == 200
    assert fetch(url).status == 404
    assert fetch(url).status == 200


def test_redirect_to_other_server(fileserver: FileServer, fileserver2: FileServer) -> None:
    assert fileserver.url != fileserver2.url
    target = fileserver2.add("real/a.bin", DATA)
    url = fileserver.url + "/a.bin"  # need not exist on the first server
    fileserver.set_fault("a.bin", redirect_to=target)
    r = fetch(url)
    assert r.status == 302
    assert r.headers["Location"] == target
    with urllib.request.urlopen(url, timeout=5) as resp:  # follows the redirect
        assert resp.status == 200
        assert resp.geturl() == target
        assert resp.read() == DATA
    assert [x.status for x in fileserver.requests] == [302, 302]
    assert [(x.path, x.status) for x in fileserver2.requests] == [("/real/a.bin", 200)]


def test_redirect_times(fileserver: FileServer, fileserver2: FileServer) -> None:
    target = fileserver2.add("a.bin", b"other")
    url = fileserver.add("a.bin", DATA)
    fileserver.set_fault("a.bin", redirect_to=target, redirect_times=1)
    assert fetch(url).status == 302
    assert fetch(url).body == DATA


def test_require_auth(fileserver: FileServer) -> None:
    url = fileserver.add("a.bin", DATA)
    fileserver.set_fault("a.bin", require_auth="Bearer s3cret")
    r = fetch(url)
    assert r.status == 401
    assert fetch(url, headers={"Authorization": "Bearer wrong"}).status == 401
    r = fetch(url, headers={"Authorization": "Bearer s3cret"})
    assert (r.status, r.body) == (200, DATA)
    assert fileserver.requests[-1].header("authorization") == "Bearer s3cret"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url, timeout=5)
    assert info.value.code == 401
    info.value.close()


def test_set_fault_replaces_and_rejects_unknown(fileserver: FileServer) -> None:
    url = fileserver.add("a.bin", DATA)
    fileserver.set_fault("a.bin", status_sequence=[500])
    fileserver.set_fault("a.bin", flip_byte=0)
    r = fetch(url)
    assert r.status == 200
    assert r.body[0] != DATA[0]
    with pytest.raises(TypeError):
        fileserver.set_fault("a.bin", no_such_knob=1)


def test_concurrent_clients(fileserver: FileServer) -> None:
    url = fileserver.add("a.bin", DATA)
    fileserver.set_fault("a.bin", stall_after=10, stall_seconds=0.3, stall_times=1)
    results: list[bytes] = []

    def worker() -> None:
        results.append(fetch(url).body)

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [DATA] * 4
    assert time.monotonic() - t0 < 1.0  # the stalled one doesn't block the others
    assert len(fileserver.requests) == 4


def test_start_stop_context_manager() -> None:
    with FileServer() as server:
        url = server.add("a", b"hello")
        assert fetch(url).body == b"hello"
    with pytest.raises(OSError):
        fetch(url)


def test_stop_with_stalled_request() -> None:
    server = FileServer().start()
    url = server.add("a", DATA)
    server.set_fault("a", stall_after=10, stall_seconds=30)
    errors: list[BaseException] = []

    def client() -> None:
        try:
            fetch(url)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=client, daemon=True)
    t.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    server.stop()
    assert time.monotonic() - t0 < 2
    t.join(5)
    assert errors  # the client saw its connection die


# ---------------------------------------------------------------------- standalone mode


def test_standalone_process(tmp_path: pathlib.Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.bin").write_bytes(DATA)
    (tmp_path / "top.txt").write_bytes(b"top")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.servers.fileserver", "--port", "0", "--dir", str(tmp_path)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(timeout=10), "no READY line within 10 s"
        line = proc.stdout.readline().decode().strip()
        assert line.startswith("READY http://127.0.0.1:"), line
        url = line.split(" ", 1)[1]
        r = fetch(url + "/sub/m.bin")
        assert (r.status, r.body) == (200, DATA)
        assert r.headers["Accept-Ranges"] == "bytes"
        r = fetch(url + "/sub/m.bin", headers={"Range": "bytes=16-31"})
        assert (r.status, r.body) == (206, DATA[16:32])
        (tmp_path / "late.bin").write_bytes(b"late")  # files added later are served too
        assert fetch(url + "/late.bin").body == b"late"
        assert fetch(url + "/top.txt").body == b"top"
        assert fetch(url + "/../etc/passwd").status == 404
        assert fetch(url + "/nope").status == 404
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0
