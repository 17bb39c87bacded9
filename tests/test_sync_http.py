"""`mmd sync` of http models against a real local server with injected faults."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable

from mmd.types import RemoteFile
from tests.conftest import Home, Result
from tests.servers.fileserver import FileServer
from tests.sources_for_tests import StaticSource

Mmd = Callable[..., Result]
SIZE = 3 * 1024 * 1024 + 123


def payload(size: int = SIZE, seed: bytes = b"mmd") -> bytes:
    blocks, counter = [], 0
    while sum(map(len, blocks)) < size:
        blocks.append(hashlib.sha256(seed + counter.to_bytes(8, "big")).digest() * 512)
        counter += 1
    return b"".join(blocks)[:size]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def http_manifest(home: Home, url: str, data: bytes, model_id: str = "tiny", **extra: str) -> None:
    lines = "".join(f"    {k}: {v}\n" for k, v in extra.items())
    home.write_manifest(
        f"models:\n  {model_id}:\n    source: http\n    url: {url}\n"
        f"    sha256: {sha(data)}\n{lines}"
    )


def range_start(request) -> int:
    """Where a resumed request asked to start (aiohttp may drop its last unread buffer)."""
    assert request.range and request.range.startswith("bytes=") and request.range.endswith("-")
    return int(request.range[len("bytes=") : -1])


def gets(server: FileServer, path: str) -> list:
    return [r for r in server.requests_for(path) if r.method == "GET"]


def test_fetch_then_noop_pass_makes_no_request(home: Home, mmd: Mmd, fileserver: FileServer):
    data = payload()
    url = fileserver.add("m/tiny.gguf", data)
    http_manifest(home, url, data)

    result = mmd("sync")
    assert result.code == 0, result.err
    target = home.storage / "http" / "tiny" / "tiny.gguf"
    assert target.read_bytes() == data
    entry = home.entry("tiny")
    assert entry["status"] == "available"
    assert entry["version"] == f"sha256:{sha(data)}"
    assert entry["files"] == [{"path": "tiny.gguf", "size": SIZE, "sha256": sha(data)}]
    assert entry["size_bytes"] == SIZE and entry["error"] is None
    assert entry["model_type"] == "other"
    assert entry["path"] == str(home.storage / "http" / "tiny")
    request = gets(fileserver, "m/tiny.gguf")[0]
    assert request.header("Accept-Encoding") == "identity"

    fileserver.reset_stats()
    again = mmd("sync")
    assert again.code == 0
    assert fileserver.requests == []
    assert "0 changed, 0 failed" in again.out
    # Nothing left behind in staging.
    assert sorted((home.storage / "cache").rglob("*")) == [
        home.storage / "cache/staging",
        home.storage / "cache/trash",
    ]


def test_cut_connection_resumes_with_range(home: Home, mmd: Mmd, fileserver: FileServer):
    data = payload()
    url = fileserver.add("m.bin", data)
    fileserver.set_fault("m.bin", cut_after=1_000_000)
    http_manifest(home, url, data)

    assert mmd("sync").code == 0
    assert (home.storage / "http/tiny/m.bin").read_bytes() == data
    first, second = gets(fileserver, "m.bin")
    assert first.range is None
    assert 0 < range_start(second) <= 1_000_000
    assert second.header("If-Range")  # resumes only if the file did not change
    assert second.status == 206
    assert fileserver.bytes_sent("m.bin") == SIZE + 1_000_000 - range_start(second)


def test_stalled_transfer_hits_idle_timeout_and_resumes(
    home: Home, mmd: Mmd, fileserver: FileServer, monkeypatch
):
    monkeypatch.setenv("DOWNLOAD_TIMEOUT", "1")
    data = payload()
    url = fileserver.add("m.bin", data)
    fileserver.set_fault("m.bin", stall_after=500_000, stall_seconds=8)
    http_manifest(home, url, data)

    started = time.monotonic()
    assert mmd("sync").code == 0
    assert time.monotonic() - started < 7  # gave up on the stall, did not wait it out
    assert (home.storage / "http/tiny/m.bin").read_bytes() == data
    requests = gets(fileserver, "m.bin")
    assert len(requests) == 2
    assert 0 < range_start(requests[1]) <= 500_000


def test_server_ignoring_range_restarts_from_zero(home: Home, mmd: Mmd, fileserver: FileServer):
    data = payload()
    url = fileserver.add("m.bin", data)
    fileserver.set_fault("m.bin", cut_after=700_000, ignore_range=True)
    http_manifest(home, url, data)

    assert mmd("sync").code == 0
    assert (home.storage / "http/tiny/m.bin").read_bytes() == data
    _, second = gets(fileserver, "m.bin")
    assert 0 < range_start(second) <= 700_000 and second.status == 200


def test_flipped_byte_is_caught_and_rerun_starts_from_zero(
    home: Home, mmd: Mmd, fileserver: FileServer
):
    data = payload()
    url = fileserver.add("m.bin", data)
    fileserver.set_fault("m.bin", flip_byte=1234)
    http_manifest(home, url, data)
    bad = bytearray(data)
    bad[1234] ^= 0xFF

    result = mmd("sync")
    assert result.code == 1
    entry = home.entry("tiny")
    assert entry["status"] == "error"
    assert f"expected {sha(data)}" in entry["error"]
    assert f"got {sha(bytes(bad))}" in entry["error"]
    assert sha(data) in result.out and "FAILED tiny" in result.out
    assert not (home.storage / "http/tiny").exists()
    assert not list((home.storage / "cache").rglob("*.part"))

    fileserver.clear_faults()
    fileserver.reset_stats()
    assert mmd("sync").code == 0
    assert [r.range for r in gets(fileserver, "m.bin")] == [None]
    assert (home.storage / "http/tiny/m.bin").read_bytes() == data
    assert home.entry("tiny")["status"] == "available"


def test_429_with_retry_after_is_honoured(home: Home, mmd: Mmd, fileserver: FileServer):
    data = payload(100_000)
    url = fileserver.add("m.bin", data)
    fileserver.set_fault("m.bin", status_sequence=[429], retry_after="1")
    http_manifest(home, url, data)

    started = time.monotonic()
    assert mmd("sync").code == 0
    assert time.monotonic() - started >= 0.95
    assert [r.status for r in gets(fileserver, "m.bin")] == [429, 200]


def test_503_then_success(home: Home, mmd: Mmd, fileserver: FileServer):
    data = payload(100_000)
    url = fileserver.add("m.bin", data)
    fileserver.set_fault("m.bin", status_sequence=[503, 503], retry_after="0")
    http_manifest(home, url, data)

    assert mmd("sync").code == 0
    assert [r.status for r in gets(fileserver, "m.bin")] == [503, 503, 200]
    assert (home.storage / "http/tiny/m.bin").read_bytes() == data


def test_endless_503_gives_up_with_one_line_error(home: Home, mmd: Mmd, fileserver: FileServer):
    data = payload(10_000)
    url = fileserver.add("m.bin", data)
    fileserver.set_fault("m.bin", status_sequence=[503] * 50, retry_after="0")
    http_manifest(home, url, data)

    result = mmd("sync")
    assert result.code == 1
    error = home.entry("tiny")["error"]
    assert "HTTP 503" in error and "\n" not in error
    assert len(gets(fileserver, "m.bin")) == 6  # bounded retries, no hot loop


def test_404_stops_at_once(home: Home, mmd: Mmd, fileserver: FileServer):
    data = payload(10_000)
    http_manifest(home, f"{fileserver.url}/missing.bin", data)

    result = mmd("sync")
    assert result.code == 1
    assert "HTTP 404" in home.entry("tiny")["error"]
    assert len(gets(fileserver, "missing.bin")) == 1
    assert not (home.storage / "cache/staging/http/tiny").exists()  # failed staging cleaned


def test_redirect_to_other_origin_drops_credentials(
    home: Home, mmd: Mmd, fileserver: FileServer, fileserver2: FileServer
):
    data = payload(200_000)
    cdn_url = fileserver2.add("blob/m.bin", data)
    fileserver.set_fault("api/m.bin", redirect_to=cdn_url)
    source = StaticSource(
        "private",
        [
            RemoteFile(
                path="m.bin",
                size=len(data),
                sha256=sha(data),
                url=f"{fileserver.url}/api/m.bin",
                headers={"Authorization": "Bearer sekret-token"},
            )
        ],
    )
    home.write_manifest("models:\n  p:\n    source: private\n")

    result = mmd("sync", plugins=[source])
    assert result.code == 0, result.err
    assert (home.storage / "private/p/m.bin").read_bytes() == data
    (api_request,) = fileserver.requests_for("api/m.bin")
    assert api_request.header("Authorization") == "Bearer sekret-token"
    (cdn_request,) = fileserver2.requests_for("blob/m.bin")
    assert cdn_request.header("Authorization") is None
    assert "sekret-token" not in home.registry_file.read_text()
    assert "sekret-token" not in result.out + result.err


def test_redirect_within_origin_keeps_credentials(home: Home, mmd: Mmd, fileserver: FileServer):
    data = payload(50_000)
    final = fileserver.add("real/m.bin", data)
    fileserver.set_fault("old/m.bin", redirect_to=final)
    fileserver.set_fault("real/m.bin", require_auth="Bearer t")
    remote = RemoteFile(
        "m.bin", len(data), sha(data), f"{fileserver.url}/old/m.bin", {"Authorization": "Bearer t"}
    )
    home.write_manifest("models:\n  p:\n    source: private\n")

    assert mmd("sync", plugins=[StaticSource("private", [remote])]).code == 0
    assert (home.storage / "private/p/m.bin").read_bytes() == data


def test_one_failing_model_does_not_stop_the_others(home: Home, mmd: Mmd, fileserver: FileServer):
    good = payload(300_000, b"good")
    url_good = fileserver.add("good.bin", good)
    home.write_manifest(
        f"""
        models:
          good:
            source: http
            url: {url_good}
            sha256: {sha(good)}
          broken:
            source: http
            url: {fileserver.url}/nope.bin
        """
    )
    result = mmd("sync")
    assert result.code == 1
    assert home.entry("good")["status"] == "available"
    assert home.entry("broken")["status"] == "error"
    assert (home.storage / "http/good/good.bin").read_bytes() == good
    assert "ok     good" in result.out and "FAILED broken" in result.out


def test_size_mismatch_is_an_error(home: Home, mmd: Mmd, fileserver: FileServer):
    data = payload(50_000)
    url = fileserver.add("m.bin", data)
    home.write_manifest(f"models:\n  s:\n    source: http\n    url: {url}\n    size: 60000\n")
    assert mmd("sync").code == 1
    assert "60000" in home.entry("s")["error"] and "50000" in home.entry("s")["error"]
    assert not (home.storage / "http/s").exists()


def test_not_enough_free_space_names_needed_and_free(home: Home, mmd: Mmd, fileserver: FileServer):
    home.write_manifest(
        f"models:\n  huge:\n    source: http\n    url: {fileserver.url}/huge.bin\n"
        f"    size: {10**18}\n"
    )
    result = mmd("sync")
    assert result.code == 1
    error = home.entry("huge")["error"]
    assert f"need {10**18} bytes" in error and " free" in error
    assert fileserver.requests == []  # refused before downloading anything


def test_url_change_updates_and_switches_atomically(home: Home, mmd: Mmd, fileserver: FileServer):
    v1, v2 = payload(100_000, b"v1"), payload(120_000, b"v2")
    url1, url2 = fileserver.add("v1/m.bin", v1), fileserver.add("v2/m.bin", v2)
    http_manifest(home, url1, v1, filename="m.bin")
    assert mmd("sync").code == 0
    folder = home.storage / "http/tiny"
    inode_before = os.stat(folder).st_ino

    http_manifest(home, url2, v2, filename="m.bin")
    plan = mmd("plan")
    assert plan.code == 0
    assert "update   tiny" in plan.out and f"sha256:{sha(v2)}" in plan.out
    result = mmd("sync")
    assert result.code == 0, result.err
    assert (folder / "m.bin").read_bytes() == v2
    assert os.stat(folder).st_ino != inode_before  # a new folder, switched in whole
    assert home.entry("tiny")["version"] == f"sha256:{sha(v2)}"


def test_failed_update_keeps_old_version_available(home: Home, mmd: Mmd, fileserver: FileServer):
    v1 = payload(100_000, b"v1")
    http_manifest(home, fileserver.add("v1.bin", v1), v1, filename="m.bin")
    assert mmd("sync").code == 0
    http_manifest(home, f"{fileserver.url}/gone.bin", payload(10, b"x"), filename="m.bin")

    assert mmd("sync").code == 1
    entry = home.entry("tiny")
    assert entry["status"] == "available"
    assert entry["error"].startswith("update failed:") and "HTTP 404" in entry["error"]
    assert (home.storage / "http/tiny/m.bin").read_bytes() == v1


def test_state_absent_and_prune(home: Home, mmd: Mmd, fileserver: FileServer, monkeypatch):
    a, b = payload(1000, b"a"), payload(1000, b"b")
    ua, ub = fileserver.add("a.bin", a), fileserver.add("b.bin", b)
    home.write_manifest(
        f"models:\n  a:\n    source: http\n    url: {ua}\n  b:\n    source: http\n    url: {ub}\n"
    )
    assert mmd("sync").code == 0
    home.write_manifest(f"models:\n  a:\n    source: http\n    url: {ua}\n")
    plan = mmd("plan")
    assert "nothing  b: not in the manifest; kept (prune is off)" in plan.out
    assert mmd("sync").code == 0
    assert (home.storage / "http/b/b.bin").exists()

    monkeypatch.setenv("MMD_PRUNE", "true")
    assert "remove   b: not in the manifest (prune: true)" in mmd("plan").out
    assert mmd("sync").code == 0
    assert not (home.storage / "http/b").exists()
    assert home.entry("b")["status"] == "deleted"

    home.write_manifest("models:\n  a:\n    source: http\n    state: absent\n")
    assert "remove   a: state: absent" in mmd("plan").out
    assert mmd("sync").code == 0
    assert not (home.storage / "http/a").exists()
    assert home.entry("a")["status"] == "deleted"
    assert "nothing  a: absent" in mmd("plan").out


def test_sync_json_and_selected_ids(home: Home, mmd: Mmd, fileserver: FileServer):
    a, b = payload(1000, b"a"), payload(1000, b"b")
    ua, ub = fileserver.add("a.bin", a), fileserver.add("b.bin", b)
    home.write_manifest(
        f"models:\n  a:\n    source: http\n    url: {ua}\n  b:\n    source: http\n    url: {ub}\n"
    )
    result = mmd("sync", "a", "--json")
    assert result.code == 0
    outcomes = json.loads(result.out)
    assert [(o["model_id"], o["action"], o["ok"]) for o in outcomes] == [("a", "fetch", True)]
    assert not (home.storage / "http/b").exists()
    unknown = mmd("sync", "zzz")
    assert unknown.code == 2 and "not in the manifest: zzz" in unknown.err


def test_hand_deleted_file_is_healed(home: Home, mmd: Mmd, fileserver: FileServer):
    data = payload(10_000)
    http_manifest(home, fileserver.add("m.bin", data), data)
    assert mmd("sync").code == 0
    target = home.storage / "http/tiny/m.bin"
    target.unlink()
    assert "update   tiny (1 file): m.bin is missing on disk" in mmd("plan").out
    assert mmd("sync").code == 0
    assert target.read_bytes() == data


def test_server_that_keeps_cutting_gives_one_line_error(
    home: Home, mmd: Mmd, fileserver: FileServer, monkeypatch
):
    data = payload(100_000)
    url = fileserver.add("m.bin", data)
    fileserver.set_fault("m.bin", cut_after=0, cut_times=1000)
    http_manifest(home, url, data)
    result = mmd("sync")
    assert result.code == 1
    error = home.entry("tiny")["error"]
    assert error.startswith("m.bin: connection closed mid-file from http://127.0.0.1:")
    assert "gave up after 6 tries" in error and "\n" not in error
    assert "Traceback" not in result.err


def test_unreachable_server_is_one_line(home: Home, mmd: Mmd):
    home.write_manifest("models:\n  m:\n    source: http\n    url: http://127.0.0.1:9/x.bin\n")
    result = mmd("sync")
    assert result.code == 1
    assert "m.bin" not in result.err
    error = home.entry("m")["error"]
    assert error.startswith("x.bin: cannot connect (") and "127.0.0.1:9/x.bin" in error
