"""The `local` source, the registry's recovery, and the read-only commands."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Home, Result
from tests.servers.fileserver import FileServer
from tests.test_sync_http import payload, sha

Mmd = Callable[..., Result]


def make_source_folder(root: Path) -> dict[str, bytes]:
    files = {
        "model.safetensors": payload(200_000, b"w"),
        "config.json": b'{"hidden": 8}',
        "tokenizer/vocab.txt": b"a\nb\n",
        "notes.md": b"# not wanted\n",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_local_folder_with_include_exclude(home: Home, mmd: Mmd, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = make_source_folder(src)
    home.write_manifest(
        f"""
        models:
          team/ft:
            source: local
            path: {src}
            exclude: ["*.md"]
            type: text-generation
            metadata: {{owner: ml}}
        """
    )
    plan = mmd("plan")
    assert "fetch    team/ft (3 files, 195.3 KiB): not in storage" in plan.out
    assert mmd("sync").code == 0
    folder = home.storage / "local/team/ft"
    on_disk = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert on_disk == ["config.json", "model.safetensors", "tokenizer/vocab.txt"]
    for rel in on_disk:
        assert (folder / rel).read_bytes() == files[rel]
    entry = home.entry("team/ft")
    assert entry["model_type"] == "text-generation"
    assert entry["metadata"]["owner"] == "ml"
    assert {f["path"]: f["sha256"] for f in entry["files"]}["config.json"] == sha(
        files["config.json"]
    )


def test_local_change_is_an_update_of_the_whole_folder(
    home: Home, mmd: Mmd, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_source_folder(src)
    home.write_manifest(f"models:\n  m:\n    source: local\n    path: {src}\n")
    assert mmd("sync").code == 0
    weights = home.storage / "local/m/model.safetensors"
    folder_inode = (home.storage / "local/m").stat().st_ino
    (src / "config.json").write_bytes(b'{"hidden": 16}')

    assert "update   m" in mmd("plan").out
    assert mmd("sync").code == 0
    assert (home.storage / "local/m/config.json").read_bytes() == b'{"hidden": 16}'
    # Local files have no digest to compare, so the unchanged one is copied again.
    assert weights.read_bytes() == (src / "model.safetensors").read_bytes()
    # The new version was switched in as a whole folder, not patched in place.
    assert (home.storage / "local/m").stat().st_ino != folder_inode


def test_local_relative_path_single_file_and_symlinks(home: Home, mmd: Mmd, tmp_path: Path) -> None:
    blob = home.root / "blobs" / "abc"
    blob.parent.mkdir()
    blob.write_bytes(b"gguf-bytes")
    snapshot = home.root / "snap"
    snapshot.mkdir()
    (snapshot / "model.gguf").symlink_to(blob)
    home.write_manifest(
        "models:\n  one:\n    source: local\n    path: blobs/abc\n"
        "  snap:\n    source: local\n    path: snap\n"
    )
    assert mmd("sync").code == 0
    assert (home.storage / "local/one/abc").read_bytes() == b"gguf-bytes"
    copied = home.storage / "local/snap/model.gguf"
    assert copied.read_bytes() == b"gguf-bytes" and not copied.is_symlink()


def test_local_missing_path_is_a_one_line_error(home: Home, mmd: Mmd, tmp_path: Path) -> None:
    home.write_manifest(f"models:\n  m:\n    source: local\n    path: {tmp_path}/nope\n")
    result = mmd("sync")
    assert result.code == 1
    assert (
        home.entry("m")["error"]
        == f"local path {tmp_path}/nope does not exist or is not a file or folder"
    )


def test_corrupt_registry_is_rebuilt_from_storage(home: Home, mmd: Mmd, fileserver: FileServer):
    data = payload(100_000)
    url = fileserver.add("m.bin", data)
    home.write_manifest(
        f"models:\n  org/m:\n    source: http\n    url: {url}\n    sha256: {sha(data)}\n"
    )
    assert mmd("sync").code == 0
    home.registry_file.write_text('{"schema_version": 1, "models": {tor')
    fileserver.reset_stats()

    listed = mmd("list", "--json")
    assert listed.code == 0
    (entry,) = json.loads(listed.out)
    assert entry["model_id"] == "org/m" and entry["status"] == "available"

    result = mmd("sync")
    assert result.code == 0
    assert fileserver.requests == []  # same bytes on disk: reused, not downloaded again
    assert home.entry("org/m")["version"] == f"sha256:{sha(data)}"
    kept = [p.name for p in home.storage.iterdir() if ".corrupt-" in p.name]
    assert len(kept) == 1 and "registry" in result.err


def test_missing_registry_is_rebuilt(home: Home, mmd: Mmd, fileserver: FileServer) -> None:
    data = payload(50_000)
    url = fileserver.add("m.bin", data)
    home.write_manifest(f"models:\n  m:\n    source: http\n    url: {url}\n")
    assert mmd("sync").code == 0
    home.registry_file.unlink()
    shown = mmd("show", "m", "--json")
    assert shown.code == 0
    assert json.loads(shown.out)["files"][0]["sha256"] == sha(data)


def test_list_show_verify(home: Home, mmd: Mmd, fileserver: FileServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_source_folder(src)
    data = payload(10_000)
    url = fileserver.add("m.bin", data)
    home.write_manifest(
        f"models:\n  a:\n    source: local\n    path: {src}\n    type: embedding\n"
        f"  b:\n    source: http\n    url: {url}\n"
    )
    assert mmd("list").out == "no models\n"
    assert mmd("sync").code == 0

    table = mmd("list").out.splitlines()
    assert table[0].split() == ["ID", "SOURCE", "TYPE", "STATUS", "SIZE", "VERSION"]
    assert [line.split()[0] for line in table[1:]] == ["a", "b"]
    assert [
        e["model_id"] for e in json.loads(mmd("list", "--type", "embedding", "--json").out)
    ] == ["a"]
    assert [e["model_id"] for e in json.loads(mmd("list", "--source", "http", "--json").out)] == [
        "b"
    ]
    assert json.loads(mmd("list", "--status", "error", "--json").out) == []
    assert mmd("list", "--status", "bogus").code == 2

    shown = mmd("show", "b")
    assert shown.code == 0 and "status: available" in shown.out and sha(data) in shown.out
    missing = mmd("show", "zzz")
    assert missing.code == 1 and "no model 'zzz'" in missing.err

    verified = mmd("verify")
    assert verified.code == 0 and "ok     a" in verified.out and "ok     b" in verified.out

    target = home.storage / "http/b/m.bin"
    corrupted = bytearray(target.read_bytes())
    corrupted[5] ^= 1
    target.write_bytes(bytes(corrupted))
    bad = mmd("verify", "b")
    assert bad.code == 1
    assert f"sha256 mismatch: expected {sha(data)}, got {sha(bytes(corrupted))}" in bad.out
    assert home.entry("b")["status"] == "error"
    # The next pass heals it.
    assert mmd("sync").code == 0
    assert target.read_bytes() == data
    os.remove(home.storage / "local/a/config.json")
    assert "config.json is missing" in mmd("verify", "a").out
    assert mmd("verify", "nope").code == 2


def test_validate_and_missing_manifest_messages(home: Home, mmd: Mmd) -> None:
    result = mmd("sync")
    assert result.code == 2
    assert f"manifest {home.manifest} does not exist" in result.err
    home.write_manifest("models:\n  m:\n    source: http\n    url: ftp://x/y\n")
    assert mmd("sync").code == 2
    assert mmd("validate").code == 1


def test_source_failure_keeps_an_available_model_available(
    home: Home, mmd: Mmd, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_source_folder(src)
    home.write_manifest(f"models:\n  m:\n    source: local\n    path: {src}\n")
    assert mmd("sync").code == 0
    src.rename(tmp_path / "gone")  # the NFS mount went away

    result = mmd("sync")
    assert result.code == 1
    entry = home.entry("m")
    assert entry["status"] == "available"  # still whole on disk: schedulers keep using it
    assert entry["error"].startswith("check failed: local path")
    assert (home.storage / "local/m/config.json").exists()

    (tmp_path / "gone").rename(src)
    copied = (home.storage / "local/m/config.json").stat().st_ino
    assert "nothing  m: up to date" in mmd("plan").out
    assert mmd("sync").code == 0
    assert home.entry("m")["error"] is None
    assert (home.storage / "local/m/config.json").stat().st_ino == copied  # not copied again
