"""A real `python -m mmd sync` killed with SIGKILL mid-object resumes with a Range GET."""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Callable

from conftest import BUCKET, MIB, S3, Home, Proxy, Result, wait_for
from test_s3_sync import payload


def test_sigkill_mid_download_then_resume(
    home: Home, mmd: Callable[..., Result], s3: S3, proxy: Proxy, spawn
) -> None:
    data = payload(16 * MIB + 4321, b"big")
    s3.put_multipart("big/model.bin", data, part_size=5 * MIB)  # the ETag is md5-of-md5s
    s3.put("big/config.json", b"{}")
    home.write_manifest(
        f"""
        models:
          big:
            source: s3
            url: s3://{BUCKET}/big/
            endpoint_url: {proxy.endpoint}
        """
    )
    proxy.rate = 4 * MIB  # bytes per second: about 4 s for the object
    proc = spawn("sync")
    wait_for(lambda: home.part_size() >= 3 * MIB, timeout=30, what="3 MiB in the .part")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    kept = home.part_size()
    assert 3 * MIB <= kept < len(data)

    proxy.rate = None
    proxy.log.clear()
    result = mmd("sync")
    assert result.code == 0, result.text
    # Resumed where the .part ended, not started over...
    [resumed] = proxy.gets(f"/{BUCKET}/big/model.bin")
    assert resumed.range == f"bytes={kept}-"
    assert resumed.sent == len(data) - kept
    # ...and still checked over the whole object (ETag) and sha256'd whole by the core.
    assert home.model_files("big")["model.bin"] == data
    files = {f["path"]: f["sha256"] for f in home.entry("big")["files"]}
    assert files["model.bin"] == hashlib.sha256(data).hexdigest()
    assert not list((home.storage / "cache").rglob("*.part"))
