"""The real daemon (`mmd run`) as a subprocess, against local servers.

Each test starts `python -m mmd run` with its own MMD_HOME and an API on a free port, then
acts on it the way an operator would: edit the manifest, delete a file, drop a folder
into custom/, send signals, run `mmd sync` next to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Home
from tests.servers.fileserver import FileServer
from tests.test_processes import part_size, wait_for, wait_until_part_settles
from tests.test_sync_http import gets, payload, range_start, sha


class Daemon:
    """A running `mmd run`; stderr goes to a file so a chatty daemon never blocks."""

    def __init__(self, home: Home, args: tuple[str, ...], env: dict[str, str]) -> None:
        self.home = home
        self.log_path = home.root / f"daemon-{time.monotonic_ns()}.log"
        full_env = dict(os.environ)
        full_env.update({"MODEL_API_PORT": "0", "MMD_SCHEDULE": "interval: 1h"})
        full_env.update(env)
        full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mmd", "run", *args],
                env=full_env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def url(self, timeout: float = 20.0) -> str:
        lock = self.home.storage / ".mmd.lock"

        def announced() -> bool:
            assert self.proc.poll() is None, f"daemon exited early:\n{self.log}"
            words = lock.read_text().split() if lock.is_file() else []
            return len(words) > 1 and words[0] == str(self.proc.pid)

        wait_for(announced, timeout, "the daemon to announce its API")
        return lock.read_text().split()[1]

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url() + path, data=data, method=method)
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def health(self) -> dict[str, Any]:
        status, body = self.call("GET", "/healthz")
        assert status == 200
        return body

    def wait_pass(self, at_least: int = 1, timeout: float = 30.0) -> dict[str, Any]:
        wait_for(
            lambda: self.health()["passes"]["completed"] >= at_least,
            timeout,
            f"pass {at_least} to finish",
        )
        return self.health()["passes"]["last"]

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def daemon(home: Home) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Daemon:
        d = Daemon(home, args, env or {})
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def status_of(home: Home, model_id: str) -> str | None:
    try:
        return home.entry(model_id)["status"]
    except (FileNotFoundError, KeyError, ValueError):
        return None


def save_like_an_editor(path: Path, text: str) -> None:
    """Write a temp file and rename it over the manifest, as vim and most editors do."""
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text)
    os.replace(tmp, path)


def http_model(model_id: str, url: str, data: bytes) -> str:
    return f"  {model_id}:\n    source: http\n    url: {url}\n    sha256: {sha(data)}\n"


# -- manifest edits ------------------------------------------------------------------


def test_manifest_edit_downloads_and_bad_manifest_keeps_models(
    home: Home, fileserver: FileServer, daemon: Callable[..., Daemon]
) -> None:
    one, two = payload(3000), payload(5000)[::-1]
    url_one, url_two = fileserver.add("one.bin", one), fileserver.add("two.bin", two)
    home.write_manifest("models:\n" + http_model("one", url_one, one))
    d = daemon()
    d.wait_pass(1)
    assert status_of(home, "one") == "available"

    both = http_model("one", url_one, one) + http_model("two", url_two, two)
    save_like_an_editor(home.manifest, "models:\n" + both)
    wait_for(lambda: status_of(home, "two") == "available", 10, "two to be downloaded")
    assert (home.storage / "http/two/two.bin").read_bytes() == two

    # A broken manifest: reported with its position, the models on disk stay.
    home.manifest.write_text("models:\n  one:\n    source: http\n    url: [oops\n")
    wait_for(lambda: d.health()["manifest"]["error"] is not None, 10, "the manifest error")
    error = d.health()["manifest"]["error"]
    assert f"{home.manifest}:" in error
    assert "manifest invalid" in d.health()["summary"]
    wait_for(lambda: "keeping the last good one" in d.log, 5, "the log line")
    assert f"{home.manifest}:5:1: invalid YAML" in d.log
    assert status_of(home, "one") == status_of(home, "two") == "available"
    assert (home.storage / "http/two/two.bin").read_bytes() == two

    # Fixed again: the error clears.
    save_like_an_editor(home.manifest, "models:\n" + http_model("one", url_one, one))
    wait_for(lambda: d.health()["manifest"]["error"] is None, 10, "the error to clear")
    assert d.stop() == 0


# -- the storage watch ----------------------------------------------------------------


def test_deleted_or_changed_file_is_noticed_and_repaired(
    home: Home, fileserver: FileServer, daemon: Callable[..., Daemon]
) -> None:
    data = payload(4096)
    url = fileserver.add("m.bin", data)
    home.write_manifest("models:\n" + http_model("m", url, data))
    d = daemon()
    d.wait_pass(1)
    target = home.storage / "http/m/m.bin"
    assert target.read_bytes() == data
    fetched = len(gets(fileserver, "m.bin"))

    # Hold the repair back, so the registry can be seen saying what is wrong.
    fileserver.set_fault("m.bin", stall_after=0, stall_seconds=2)
    target.unlink()
    wait_for(lambda: status_of(home, "m") != "available", 5, "the registry to show the loss")
    assert "m: m.bin is missing on disk; the next pass repairs it" in d.log
    wait_for(lambda: target.is_file() and status_of(home, "m") == "available", 10, "the repair")
    fileserver.clear_faults()
    assert target.read_bytes() == data
    assert len(gets(fileserver, "m.bin")) == fetched + 1

    # Same size, other bytes: caught by the hash, not the size.
    target.write_bytes(b"\0" * len(data))
    wait_for(lambda: target.read_bytes() == data, 10, "the changed file to be repaired")
    wait_for(lambda: status_of(home, "m") == "available", 10, "available again")
    assert "m.bin changed on disk (sha256 mismatch)" in d.log

    # Every repair switches a folder in with renameat2: the watch must survive them all.
    for _ in range(3):
        before = len(gets(fileserver, "m.bin"))
        target.unlink()
        wait_for(lambda n=before: len(gets(fileserver, "m.bin")) > n, 10, "another repair")
        wait_for(lambda: target.is_file() and status_of(home, "m") == "available", 10, "whole")
    assert target.read_bytes() == data
    assert d.stop() == 0


def test_custom_folder_is_registered_and_never_deleted(
    home: Home, daemon: Callable[..., Daemon]
) -> None:
    home.write_manifest("models: {}\n")
    d = daemon()
    d.wait_pass(1)
    folder = home.storage / "custom/my-model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "sub/weights.bin").write_bytes(b"w" * 10000)
    wait_for(lambda: status_of(home, "my-model") == "available", 10, "the custom model")
    entry = home.entry("my-model")
    assert entry["source"] == "custom"
    assert entry["size_bytes"] == 10000 + len('{"a": 1}')
    files = {f["path"]: f["sha256"] for f in entry["files"]}
    assert files["sub/weights.bin"] == hashlib.sha256(b"w" * 10000).hexdigest()

    # A pass (prune or not) leaves it alone.
    d.call("POST", "/sync")
    d.wait_pass(2)
    assert (folder / "sub/weights.bin").is_file()

    os.rename(folder, home.root / "elsewhere")
    wait_for(lambda: status_of(home, "my-model") == "deleted", 10, "the removal")
    assert d.stop() == 0


# -- signals, locks, restarts ---------------------------------------------------------


def test_sigterm_mid_download_exits_zero_then_restart_resumes(
    home: Home, fileserver: FileServer, daemon: Callable[..., Daemon]
) -> None:
    size = 24 * 1024 * 1024
    data = payload(size)
    url = fileserver.add("big.bin", data)
    fileserver.set_fault("big.bin", stall_after=size // 2, stall_seconds=60)
    home.write_manifest("models:\n" + http_model("big", url, data))
    d = daemon()
    wait_for(lambda: fileserver.bytes_sent("big.bin") >= size // 2, 20, "half the file sent")
    wait_until_part_settles(home)
    assert status_of(home, "big") == "downloading"

    started = time.monotonic()
    assert d.stop(timeout=15) == 0
    assert time.monotonic() - started < 10
    kept = part_size(home)
    assert kept > 0
    assert status_of(home, "big") == "pending"
    assert not (home.storage / "http/big").exists()

    fileserver.clear_faults()
    d2 = daemon()
    wait_for(lambda: status_of(home, "big") == "available", 30, "the resumed download")
    resumed = gets(fileserver, "big.bin")[-1]
    assert range_start(resumed) == kept and resumed.status == 206
    assert (home.storage / "http/big/big.bin").read_bytes() == data
    assert d2.stop() == 0


def test_second_daemon_is_refused_naming_the_first(
    home: Home, daemon: Callable[..., Daemon]
) -> None:
    home.write_manifest("models: {}\n")
    first = daemon()
    first.url()
    second = daemon()
    assert second.proc.wait(timeout=20) == 1
    assert f"already managed by mmd pid {first.proc.pid}" in second.log
    assert first.proc.poll() is None
    assert first.health()["status"] == "ok"
    assert first.stop() == 0


def test_sigkill_leaves_no_stale_lock(home: Home, daemon: Callable[..., Daemon]) -> None:
    home.write_manifest("models: {}\n")
    first = daemon()
    first.url()
    first.proc.kill()
    first.proc.wait()
    second = daemon()
    assert second.health()["pid"] == second.proc.pid
    assert second.stop() == 0


def test_sighup_reloads_config_and_manifest(
    home: Home, fileserver: FileServer, daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(10)
    data = payload(2000)
    url = fileserver.add("h.bin", data)
    config = home.root / "config.yaml"
    config.write_text("max_concurrent_downloads: 2\n")
    home.write_manifest("models: {}\n")
    d = daemon("--config", str(config), env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    d.wait_pass(1)
    config.write_text("max_concurrent_downloads: 5\nrescan_interval: 2h\n")
    os.kill(d.proc.pid, signal.SIGHUP)
    messages: list[str] = []
    while "READY=1" not in messages[1:] or "RELOADING=1" not in messages:
        messages += notify.recv(4096).decode().split("\n")
    wait_for(
        lambda: "config reloaded: max_concurrent_downloads, rescan_interval changed" in d.log,
        5,
        "the reload",
    )
    notify.close()

    # A bad config on SIGHUP keeps the running one.
    config.write_text("max_concurrent_downloads: lots\n")
    os.kill(d.proc.pid, signal.SIGHUP)
    wait_for(lambda: "config not reloaded" in d.log, 5, "the refusal")
    assert d.proc.poll() is None
    home.manifest.write_text("models:\n" + http_model("h", url, data))
    wait_for(lambda: status_of(home, "h") == "available", 10, "the model")
    assert d.stop() == 0


def test_systemd_notifications(home: Home, daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    address = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(address))
    notify.settimeout(10)
    home.write_manifest("models: {}\n")
    d = daemon(env={"NOTIFY_SOCKET": str(address), "WATCHDOG_USEC": "400000"})
    seen: list[str] = []
    while seen.count("WATCHDOG=1") < 3:
        seen += notify.recv(4096).decode().split("\n")
    ready = seen.index("READY=1")
    # READY only once the API answers and the lock is announced.
    assert d.url().startswith("http://127.0.0.1:")
    assert any(s.startswith("STATUS=0 available, 0 downloading") for s in seen[ready:])
    d.proc.send_signal(signal.SIGTERM)
    rest: list[str] = []
    while "STOPPING=1" not in rest:
        rest += notify.recv(4096).decode().split("\n")
    assert d.proc.wait(timeout=10) == 0
    notify.close()


# -- `mmd sync` next to a daemon, the API's rules -------------------------------------


def test_mmd_sync_asks_the_running_daemon(
    home: Home, fileserver: FileServer, daemon: Callable[..., Daemon], spawn
) -> None:
    data = payload(1500)
    url = fileserver.add("s.bin", data)
    missing = fileserver.url + "/nope.bin"
    home.write_manifest("models:\n" + http_model("s", url, data))
    d = daemon()
    d.wait_pass(1)
    proc = spawn("sync")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"the daemon (pid {d.proc.pid}) holds the storage" in err
    assert "1 model: 0 changed, 0 failed" in out

    home.write_manifest(
        "models:\n" + http_model("s", url, data) + http_model("gone", missing, b"x")
    )
    proc = spawn("sync", "gone")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "FAILED gone:" in out and "404" in out
    assert d.stop() == 0


def test_failing_model_backs_off_between_scheduled_passes(
    home: Home, fileserver: FileServer, daemon: Callable[..., Daemon]
) -> None:
    missing = fileserver.url + "/missing.bin"
    home.write_manifest("models:\n" + http_model("bad", missing, b"x"))
    d = daemon(env={"MMD_SCHEDULE": "interval: 0.3s", "MMD_RETRY_INITIAL": "1h"})
    d.wait_pass(5)
    # Scheduled passes leave it alone after the first failure.
    assert len(fileserver.requests_for("missing.bin")) == 1
    assert status_of(home, "bad") == "error"
    assert "next scheduled retry in" in d.log
    # An explicit request retries at once.
    status, body = d.call("POST", "/sync")
    assert status == 202
    d.wait_pass(body["pass"])
    assert len(fileserver.requests_for("missing.bin")) == 2
    assert d.stop() == 0


def test_api_token_and_host_rules(home: Home, daemon: Callable[..., Daemon]) -> None:
    home.write_manifest("models: {}\n")
    d = daemon(env={"MMD_API_TOKEN": "s3cret-token"})
    assert d.call("GET", "/healthz")[0] == 200  # reading needs no token
    status, body = d.call("POST", "/sync")
    assert status == 401 and body["error"] == "missing or wrong API token"
    assert d.call("POST", "/sync", headers={"Authorization": "Bearer wrong"})[0] == 401
    good = {"Authorization": "Bearer s3cret-token"}
    assert d.call("POST", "/sync", headers=good)[0] == 202
    status, body = d.call("POST", "/sync", body=[1], headers=good)
    assert status == 202  # a body that is not an object asks for a full pass
    status, body = d.call("POST", "/sync", body={"ids": "x"}, headers=good)
    assert status == 400 and "ids" in body["error"]
    # DNS rebinding: a page served as evil.example that resolves to 127.0.0.1.
    status, body = d.call("GET", "/healthz", headers={"Host": "evil.example:8005"})
    assert status == 421 and body["error"] == "unknown Host header"
    assert d.stop() == 0
    assert "s3cret-token" not in d.log


def test_refuses_a_public_address_without_a_token(
    home: Home, daemon: Callable[..., Daemon]
) -> None:
    home.write_manifest("models: {}\n")
    d = daemon(env={"MODEL_API_HOST": "0.0.0.0"})
    assert d.proc.wait(timeout=20) == 2
    assert "api.host 0.0.0.0 is not a loopback address and no API token is set" in d.log


def test_journald_lines_carry_priority_and_no_timestamp(home: Home, tmp_path: Path) -> None:
    home.write_manifest("models:\n  x:\n    source: http\n    url: http://127.0.0.1:9/x\n")
    log_path = tmp_path / "journal.log"
    with open(log_path, "w") as log:
        st = os.fstat(log.fileno())
        env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        env["PYTHONPATH"] = str(ROOT)
        env["MODEL_API_PORT"] = "0"
        proc = subprocess.Popen(
            [sys.executable, "-m", "mmd", "run"], env=env, stderr=log, stdout=subprocess.DEVNULL
        )
    try:
        wait_for(lambda: "running: storage" in log_path.read_text(), 20, "the start line")
        wait_for(lambda: "<3>" in log_path.read_text(), 20, "the failure line")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    lines = log_path.read_text().splitlines()
    assert any(line.startswith("<6>mmd.daemon: mmd ") for line in lines)
    assert any(line.startswith("<3>") and ": x:" in line for line in lines)
    assert not any(line[:4].isdigit() for line in lines)  # journald adds the time


def test_backoff_doubles_with_jitter_and_stays_capped() -> None:
    from mmd.backoff import RetryBackoff

    backoff = RetryBackoff(initial=60, maximum=3600)
    assert 30 <= backoff.delay(1) <= 60
    assert 60 <= backoff.delay(2) <= 120
    assert all(1800 <= backoff.delay(n) <= 3600 for n in (7, 100, 1025, 10**6))
    for _ in range(1100):  # a model broken for months must not overflow the maths
        backoff.failed("m", now=0.0)
    assert backoff.deferred(now=0.0)["m"].startswith("failed 1100 times; next retry in")
    backoff.succeeded("m")
    assert backoff.deferred(now=0.0) == {}


def test_an_organisation_folder_moved_away_is_noticed(
    home: Home, fileserver: FileServer, daemon: Callable[..., Daemon]
) -> None:
    data = payload(3000)
    url = fileserver.add("o.bin", data)
    home.write_manifest("models:\n" + http_model("org/m", url, data))
    d = daemon()
    d.wait_pass(1)
    fetched = len(gets(fileserver, "o.bin"))
    os.rename(home.storage / "http/org", home.root / "moved-org")
    wait_for(lambda: len(gets(fileserver, "o.bin")) > fetched, 10, "the repair download")
    wait_for(lambda: status_of(home, "org/m") == "available", 10, "available again")
    assert (home.storage / "http/org/m/o.bin").read_bytes() == data
    assert "org/m: its folder is missing" in d.log or "org/m: o.bin is missing" in d.log
    assert d.stop() == 0


def test_daemon_waits_for_a_one_off_sync_holding_the_lock(
    home: Home, daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    from mmd.lock import StorageLock

    home.write_manifest("models: {}\n")
    address = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(address))
    notify.settimeout(10)
    held = StorageLock(home.storage)
    held.acquire()  # as `mmd sync` does: a pid, no API address
    d = daemon(env={"NOTIFY_SOCKET": str(address)})
    seen: list[str] = []
    while not any(s.startswith("EXTEND_TIMEOUT_USEC=") for s in seen):
        seen += notify.recv(4096).decode().split("\n")
    assert f"STATUS=waiting for mmd pid {os.getpid()} to release {home.storage}" in seen
    assert "READY=1" not in seen
    assert d.proc.poll() is None
    held.release()
    while "READY=1" not in seen:
        seen += notify.recv(4096).decode().split("\n")
    assert d.health()["pid"] == d.proc.pid
    assert d.stop() == 0
    notify.close()


def test_manifest_edits_act_while_a_download_runs(
    home: Home, fileserver: FileServer, daemon: Callable[..., Daemon]
) -> None:
    size = 16 * 1024 * 1024
    data = payload(size)
    url = fileserver.add("stuck.bin", data)
    fileserver.set_fault("stuck.bin", stall_after=size // 4, stall_seconds=60)
    home.write_manifest("models:\n" + http_model("stuck", url, data))
    d = daemon()
    wait_for(lambda: status_of(home, "stuck") == "downloading", 20, "the download")
    # An error shows at once, not when the stalled pass ends.
    home.manifest.write_text("models:\n  stuck: [\n")
    wait_for(lambda: d.health()["manifest"]["error"] is not None, 5, "the manifest error")
    assert d.health()["passes"]["running"] is not None
    # Asking for the model to go stops its download, and the next pass removes it.
    home.manifest.write_text(
        "models:\n  stuck:\n    source: http\n    url: " + url + "\n    state: absent\n"
    )
    wait_for(lambda: "stuck: download stopped: the manifest changed it" in d.log, 5, "the stop")
    wait_for(lambda: status_of(home, "stuck") == "deleted", 10, "the removal")
    assert not list((home.storage / "cache").rglob("*.part"))
    assert d.stop() == 0


def test_custom_ignores_empty_hidden_and_badly_named_folders(
    home: Home, daemon: Callable[..., Daemon]
) -> None:
    home.write_manifest("models: {}\n")
    d = daemon()
    d.wait_pass(1)
    custom = home.storage / "custom"
    (custom / "empty").mkdir(parents=True)
    (custom / ".hidden").mkdir()
    (custom / ".hidden/w.bin").write_bytes(b"x")
    (custom / "My Model (copy)").mkdir()
    (custom / "My Model (copy)/w.bin").write_bytes(b"x")
    (custom / "good").mkdir()
    (custom / "good/w.bin").write_bytes(b"good")
    wait_for(lambda: status_of(home, "good") == "available", 10, "the good folder")
    wait_for(lambda: "custom/My Model (copy): not registered" in d.log, 5, "the warning")
    models = home.registry()["models"]
    assert set(models) == {"good"}
    assert d.health()["watches"] == {"manifest": True, "storage": True}
    assert d.stop() == 0
