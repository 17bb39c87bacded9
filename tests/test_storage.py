"""Storage safety: hostile file names, symlinks, atomic switch-in, leftovers."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mmd.errors import UnsafePathError
from mmd.storage import Storage, ensure_dirs, exchange, validate_relpath
from mmd.types import RemoteFile
from tests.conftest import Home, Result
from tests.servers.fileserver import FileServer
from tests.sources_for_tests import StaticSource
from tests.test_sync_http import payload, sha

Mmd = Callable[..., Result]

HOSTILE = [
    "../escape.bin",
    "a/../../escape.bin",
    "/etc/passwd-mmd",
    "dir\\..\\escape.bin",
    "nul\x00byte",
    "bell\x07.bin",
    "new\nline.bin",
    "a//b.bin",
    "./a.bin",
    "..",
    "",
    "x" * 300,
]


@pytest.mark.parametrize("name", HOSTILE)
def test_validate_relpath_refuses(name: str) -> None:
    with pytest.raises(UnsafePathError):
        validate_relpath(name)


@pytest.mark.parametrize("name", ["a.bin", "sub/dir/x.safetensors", "weird name (1).json"])
def test_validate_relpath_accepts(name: str) -> None:
    assert validate_relpath(name) == name


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_from_a_source_are_refused(
    name: str, home: Home, mmd: Mmd, fileserver: FileServer, tmp_path: Path
) -> None:
    data = payload(1000)
    url = fileserver.add("x.bin", data)
    good = RemoteFile("ok.bin", len(data), sha(data), url)
    evil = RemoteFile(name, len(data), sha(data), url)
    home.write_manifest("models:\n  evil:\n    source: rogue\n")
    before = snapshot(tmp_path)

    result = mmd("sync", plugins=[StaticSource("rogue", [good, evil])])

    assert result.code == 1
    error = home.entry("evil")["error"]
    assert "file name" in error
    assert "\n" not in error
    assert fileserver.requests == []  # refused before any download
    created = snapshot(tmp_path) - before
    storage_rel = str(home.storage.relative_to(tmp_path))
    assert all(p.startswith(storage_rel) for p in created), created
    assert not (home.storage / "rogue/evil").exists()


def test_same_name_twice_and_file_vs_folder_are_refused(
    home: Home, mmd: Mmd, fileserver: FileServer
) -> None:
    url = fileserver.add("x.bin", b"x")
    home.write_manifest("models:\n  d:\n    source: dup\n  f:\n    source: clash\n")
    dup = StaticSource(
        "dup", [RemoteFile("a.bin", 1, None, url), RemoteFile("a.bin", 1, None, url)]
    )
    clash = StaticSource("clash", [RemoteFile("a", 1, None, url), RemoteFile("a/b", 1, None, url)])
    assert mmd("sync", plugins=[dup, clash]).code == 1
    assert "appears twice" in home.entry("d")["error"]
    assert "both a file and a folder" in home.entry("f")["error"]


def test_symlinked_folder_in_storage_is_not_written_through(
    home: Home, mmd: Mmd, fileserver: FileServer, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    home.storage.mkdir(parents=True)
    (home.storage / "http").symlink_to(outside)
    data = payload(1000)
    url = fileserver.add("m.bin", data)
    home.write_manifest(f"models:\n  m:\n    source: http\n    url: {url}\n")

    result = mmd("sync")
    assert result.code == 1
    assert "not a plain folder" in home.entry("m")["error"]
    assert list(outside.iterdir()) == []


def test_ensure_dirs_refuses_symlink(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(UnsafePathError):
        ensure_dirs(tmp_path, "link/sub")
    assert not (tmp_path / "target" / "sub").exists()


def test_promote_replaces_whole_folder(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "models")
    storage.prepare()
    old = storage.model_dir("http", "org/m")
    old.mkdir(parents=True)
    (old / "old.bin").write_bytes(b"old")
    built = storage.cache / "built"
    built.mkdir()
    (built / "new.bin").write_bytes(b"new")

    target = storage.promote(built, "http", "org/m")

    assert sorted(os.listdir(target)) == ["new.bin"]
    assert not built.exists()
    storage.empty_trash()
    assert list(storage.trash.iterdir()) == []


def test_exchange_swaps_two_folders(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "from-a").touch()
    if not exchange(a, b):
        pytest.skip("this kernel or filesystem has no renameat2(RENAME_EXCHANGE)")
    assert (b / "from-a").exists() and not (a / "from-a").exists()
