"""Crash and corruption recovery: what a re-run finds on disk is verified, never trusted."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Home, Result
from tests.servers.fileserver import FileServer
from tests.test_sync_http import http_manifest, payload

Mmd = Callable[..., Result]


def test_corrupt_file_is_not_reused_by_the_healing_pass(
    home: Home, mmd: Mmd, fileserver: FileServer
) -> None:
    data = payload(300_000)
    http_manifest(home, fileserver.add("m.bin", data), data)
    assert mmd("sync").code == 0
    target = home.storage / "http/tiny/m.bin"
    bad = bytearray(data)
    bad[10] ^= 0xFF
    target.write_bytes(bytes(bad))  # same size: only a hash notices
    assert mmd("verify").code == 1

    fileserver.reset_stats()
    assert mmd("sync").code == 0
    assert target.read_bytes() == data
    assert fileserver.bytes_sent("m.bin") == len(data)
    assert mmd("verify").code == 0


def test_resume_against_server_ignoring_if_range_does_not_splice(
    home: Home, mmd: Mmd, fileserver: FileServer
) -> None:
    old, new = payload(2_000_000, b"old"), payload(2_000_000, b"new")
    url = fileserver.add("m.bin", old)
    fileserver.set_fault(
        "m.bin",
        cut_after=500_000,
        status_sequence=[200] + [503] * 10,
        retry_after="0",
        ignore_if_range=True,
    )
    home.write_manifest(f"models:\n  m:\n    source: http\n    url: {url}\n")
    assert mmd("sync").code == 1  # cut, then 503s: a resumable .part of the old file
    assert list((home.storage / "cache/staging").rglob("*.part"))

    fileserver.add("m.bin", new)  # upstream replaced it (new ETag)
    fileserver.set_fault("m.bin", ignore_if_range=True)
    assert mmd("sync").code == 0
    assert (home.storage / "http/m/m.bin").read_bytes() == new


def test_complete_part_without_known_size_is_not_downloaded_again(
    home: Home, mmd: Mmd, fileserver: FileServer
) -> None:
    data = payload(1_000_000)
    url = fileserver.add("m.bin", data)
    home.write_manifest(f"models:\n  m:\n    source: http\n    url: {url}\n")
    assert mmd("sync").code == 0
    # Rebuild the state of a process killed after its last write, before the rename.
    folder = home.storage / "http/m"
    stage_parts = list((home.storage / "cache/staging").rglob("*"))
    assert stage_parts == []
    (home.storage / "model_registry.json").unlink()
    files_dir = _stage_files(home, "http", "m", f"url:{_url_version(url)}")
    (folder / "m.bin").rename(files_dir / "m.bin.part")
    etag = _etag(fileserver, url)
    (files_dir / "m.bin.part.json").write_text(
        json.dumps({"url": url, "validator": etag, "size": len(data)})
    )
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()
    fileserver.reset_stats()

    assert mmd("sync").code == 0
    assert (home.storage / "http/m/m.bin").read_bytes() == data
    assert fileserver.bytes_sent("m.bin") == 0


def test_source_change_keeps_old_copy_until_new_one_is_in(
    home: Home, mmd: Mmd, fileserver: FileServer, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"local copy")
    home.write_manifest(f"models:\n  m:\n    source: local\n    path: {src}\n")
    assert mmd("sync").code == 0

    home.write_manifest(f"models:\n  m:\n    source: http\n    url: {fileserver.url}/gone\n")
    assert "update   m (1 file): source changed from local to http" in mmd("plan").out
    assert mmd("sync").code == 1
    entry = home.entry("m")
    assert (entry["source"], entry["status"]) == ("local", "available")
    assert entry["error"].startswith("update failed:")
    assert (home.storage / "local/m/a.txt").read_bytes() == b"local copy"

    data = payload(1000)
    home.write_manifest(
        f"models:\n  m:\n    source: http\n    url: {fileserver.add('a.txt', data)}\n"
    )
    assert mmd("sync").code == 0
    assert home.entry("m")["source"] == "http"
    assert (home.storage / "http/m/a.txt").read_bytes() == data
    assert not (home.storage / "local/m").exists()


def test_signed_url_secrets_stay_out_of_registry_and_output(
    home: Home, mmd: Mmd, fileserver: FileServer
) -> None:
    data = payload(1000)
    fileserver.add("m.bin", data)
    url = fileserver.url.replace("://", "://user:pw-secret@") + "/m.bin?X-Amz-Signature=SIGSECRET"
    home.write_manifest(f"models:\n  m:\n    source: http\n    url: '{url}'\n")
    results = [mmd("sync"), mmd("show", "m"), mmd("list", "--json")]
    assert results[0].code == 0
    text = home.registry_file.read_text() + "".join(r.out + r.err for r in results)
    assert "SIGSECRET" not in text and "pw-secret" not in text


def test_registry_of_the_wrong_shape_is_rebuilt(home: Home, mmd: Mmd, fileserver: FileServer):
    data = payload(1000)
    http_manifest(home, fileserver.add("m.bin", data), data)
    assert mmd("sync").code == 0
    for junk in ("[]", '"x"', '{"schema_version": 1, "models": []}'):
        home.registry_file.write_text(junk)
        listed = mmd("list", "--json")
        assert listed.code == 0, listed.err
        assert [e["model_id"] for e in json.loads(listed.out)] == ["tiny"]


def test_unwritable_storage_is_one_line(home: Home, mmd: Mmd, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    home.write_manifest("models: {}\n")
    result = mmd("sync", "--storage-dir", str(blocker / "models"))
    assert result.code == 1
    assert result.err.startswith("mmd: ") and "Not a directory" in result.err
    assert "Traceback" not in result.err and len(result.err.strip().splitlines()) == 1


def _url_version(url: str) -> str:
    import hashlib

    return hashlib.sha256(url.encode()).hexdigest()[:16]


def _stage_files(home: Home, source: str, model_id: str, version: str) -> Path:
    from mmd.storage import Storage

    stage = Storage(home.storage).staging_dir(source, model_id, version) / "files"
    stage.mkdir(parents=True)
    return stage


def _etag(server: FileServer, url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as resp:
        etag = resp.headers["ETag"]
    server.reset_stats()
    return etag
