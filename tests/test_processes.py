"""Real `mmd` processes: SIGKILL mid-download then resume; two syncs on one storage."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Home
from tests.servers.fileserver import FileServer
from tests.test_sync_http import gets, payload, range_start, sha

SIZE = 24 * 1024 * 1024


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def wait_until_part_settles(home: Home, timeout: float = 20.0) -> int:
    """The .part size once the stalled writer has flushed its last chunk."""
    sizes = [-1]

    def settled() -> bool:
        sizes.append(part_size(home))
        return sizes[-1] > 0 and sizes[-1] == sizes[-2]

    wait_for(settled, timeout, "the .part to stop growing")
    return sizes[-1]


def part_size(home: Home) -> int:
    parts = list((home.storage / "cache").rglob("*.part"))
    return parts[0].stat().st_size if parts else 0


def test_sigkill_mid_download_then_resume(home: Home, fileserver: FileServer, spawn) -> None:
    data = payload(SIZE)
    url = fileserver.add("big.bin", data)
    half = SIZE // 2
    fileserver.set_fault("big.bin", stall_after=half, stall_seconds=60)
    home.write_manifest(
        f"models:\n  big:\n    source: http\n    url: {url}\n    sha256: {sha(data)}\n"
    )

    proc = spawn("sync")
    wait_for(lambda: part_size(home) >= half - 8 * 1024 * 1024, what="half the file on disk")
    wait_for(lambda: fileserver.bytes_sent("big.bin") >= half, what="server sent half")
    wait_until_part_settles(home)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    kept = part_size(home)
    assert kept > 0
    assert home.entry("big")["status"] == "downloading"
    assert not (home.storage / "http/big").exists()  # nothing half-written where a server loads

    fileserver.clear_faults()
    proc = spawn("sync")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    resumed = gets(fileserver, "big.bin")[-1]
    assert range_start(resumed) == kept
    assert resumed.status == 206
    assert fileserver.bytes_sent("big.bin") < 1.2 * SIZE
    assert (home.storage / "http/big/big.bin").read_bytes() == data
    assert home.entry("big")["status"] == "available"


def test_second_sync_on_same_storage_is_refused_and_registry_stays_valid(
    home: Home, fileserver: FileServer, spawn
) -> None:
    data = payload(4 * 1024 * 1024)
    url = fileserver.add("m.bin", data)
    fileserver.set_fault("m.bin", stall_after=1024 * 1024, stall_seconds=3)
    home.write_manifest(
        f"models:\n  m:\n    source: http\n    url: {url}\n    sha256: {sha(data)}\n"
    )
    first = spawn("sync")
    wait_for(lambda: fileserver.bytes_sent("m.bin") >= 1024 * 1024, what="first sync started")

    second = spawn("sync")
    _, err = second.communicate(timeout=30)
    assert second.returncode == 1
    assert f"is in use by another mmd process (pid {first.pid})" in err
    assert len(gets(fileserver, "m.bin")) == 1  # the second never downloaded

    # Readers never see a torn registry while the first sync writes it.
    while first.poll() is None:
        if home.registry_file.exists():
            json.loads(home.registry_file.read_text())
        time.sleep(0.01)
    assert first.returncode == 0
    assert home.entry("m")["status"] == "available"

    waited = spawn("sync", "--wait", "5")
    assert waited.wait(timeout=30) == 0


def test_lock_dies_with_a_killed_process(home: Home, fileserver: FileServer, spawn) -> None:
    data = payload(2 * 1024 * 1024)
    url = fileserver.add("m.bin", data)
    fileserver.set_fault("m.bin", stall_after=1024, stall_seconds=60)
    home.write_manifest(f"models:\n  m:\n    source: http\n    url: {url}\n")
    first = spawn("sync")
    wait_for(lambda: fileserver.bytes_sent("m.bin") >= 1024, what="first sync started")
    first.kill()
    first.wait()
    fileserver.clear_faults()
    again = spawn("sync")
    assert again.wait(timeout=30) == 0
    assert Path(home.storage / "http/m/m.bin").read_bytes() == data


def test_resume_survives_a_new_url_for_the_same_bytes(
    home: Home, fileserver: FileServer, spawn
) -> None:
    """Signed URLs (LFS hrefs, presigned S3, CDN tokens) change between runs; with a
    known sha256 the bytes already on disk are kept."""
    data = payload(SIZE)
    first = fileserver.add("a/big.bin", data)
    second = fileserver.add("b/big.bin", data)
    half = SIZE // 2
    fileserver.set_fault("a/big.bin", stall_after=half, stall_seconds=60)
    home.write_manifest(
        f"models:\n  big:\n    source: http\n    url: {first}\n    sha256: {sha(data)}\n"
        "    filename: big.bin\n"
    )
    proc = spawn("sync")
    wait_for(lambda: fileserver.bytes_sent("a/big.bin") >= half, what="server sent half")
    wait_until_part_settles(home)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    kept = part_size(home)
    assert kept > 0

    home.write_manifest(
        f"models:\n  big:\n    source: http\n    url: {second}\n    sha256: {sha(data)}\n"
        "    filename: big.bin\n"
    )
    proc = spawn("sync")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    resumed = gets(fileserver, "b/big.bin")[0]
    assert range_start(resumed) == kept
    assert (home.storage / "http/big/big.bin").read_bytes() == data
