"""`source: huggingface` against the HF-Hub-compatible server, with the real client."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from tests.conftest import ROOT, Home, Result
from tests.servers.hfhub import HfHubServer, git_blob_sha1
from tests.test_processes import part_size, wait_for, wait_until_part_settles
from tests.test_sync_http import payload

Mmd = Callable[..., Result]
TOKEN = "hf_test_token"
CONFIG = b'{"model_type": "gpt2", "n_layer": 2}\n'
TOKENIZER = b'{"vocab": ["a", "b"]}\n'


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def repo_with_weights(hub: HfHubServer, repo: str = "org/tiny", **kw) -> tuple[str, dict]:
    hub.create_repo(repo, pipeline_tag="text-generation", library_name="transformers", **kw)
    files = {
        "config.json": CONFIG,
        "tokenizer.json": TOKENIZER,
        "model-00001-of-00002.safetensors": payload(300_000, b"s1"),
        "model-00002-of-00002.safetensors": payload(200_000, b"s2"),
        "pytorch_model.bin": payload(100_000, b"pt"),
        "README.md": b"# tiny\n",
    }
    commit = hub.commit(repo, files, repo_type=kw.get("repo_type", "model"))
    return commit, files


def on_disk(home: Home, model_id: str, source: str = "huggingface") -> dict[str, bytes]:
    root = home.storage / source / model_id
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_pinned_commit_then_zero_requests(home: Home, mmd: Mmd, hf_endpoint: HfHubServer):
    commit, files = repo_with_weights(hf_endpoint)
    home.write_manifest(
        f"""
        models:
          org/tiny:
            revision: {commit}
            include: ["*.json", "*.safetensors"]
        """
    )
    plan = mmd("plan")
    assert plan.code == 0, plan.err
    assert "fetch    org/tiny (4 files, 488.3 KiB): not in storage" in plan.out
    assert mmd("sync").code == 0
    wanted = {k: v for k, v in files.items() if k.endswith((".json", ".safetensors"))}
    assert on_disk(home, "org/tiny") == wanted
    entry = home.entry("org/tiny")
    assert entry["version"] == commit
    assert entry["model_type"] == "text-generation"  # from the hub's pipeline tag
    assert entry["metadata"] == {
        "repo": "org/tiny",
        "repo_type": "model",
        "revision": commit,
        "pipeline_tag": "text-generation",
        "library_name": "transformers",
    }
    by_path = {f["path"]: f["sha256"] for f in entry["files"]}
    assert by_path == {k: sha(v) for k, v in wanted.items()}

    hf_endpoint.reset_stats()
    again = mmd("sync")
    assert again.code == 0
    assert hf_endpoint.requests == []
    assert "up to date" in mmd("plan").out and hf_endpoint.requests == []


def test_branch_that_moves_updates_and_reuses_unchanged_files(
    home: Home, mmd: Mmd, hf_endpoint: HfHubServer
):
    first, files = repo_with_weights(hf_endpoint)
    home.write_manifest("models:\n  org/tiny:\n    type: text-generation\n")
    assert mmd("sync").code == 0
    assert home.entry("org/tiny")["version"] == first

    hf_endpoint.reset_stats()
    assert mmd("sync").code == 0
    infos = [r for r in hf_endpoint.requests if r.kind == "api"]
    assert len(hf_endpoint.requests) == len(infos) == 1  # one metadata request, no bytes

    new_weights = payload(300_000, b"s1-v2")
    second = hf_endpoint.commit(
        "org/tiny", {"model-00001-of-00002.safetensors": new_weights, "config.json": b"{}\n"}
    )
    hf_endpoint.reset_stats()
    plan = mmd("plan")
    assert "update   org/tiny (6 files" in plan.out and f"{first} -> {second}" in plan.out
    assert mmd("sync").code == 0
    expected = {**files, "model-00001-of-00002.safetensors": new_weights, "config.json": b"{}\n"}
    assert on_disk(home, "org/tiny") == expected
    assert home.entry("org/tiny")["version"] == second
    assert hf_endpoint.bytes_sent("model-00001-of-00002.safetensors") == len(new_weights)
    assert hf_endpoint.bytes_sent("config.json") == 3
    for unchanged in ("model-00002-of-00002.safetensors", "pytorch_model.bin", "tokenizer.json"):
        assert hf_endpoint.bytes_sent(unchanged) == 0, unchanged


def test_include_exclude_and_plan(home: Home, mmd: Mmd, hf_endpoint: HfHubServer):
    repo_with_weights(hf_endpoint)
    home.write_manifest(
        "models:\n  org/tiny:\n    exclude: ['*.bin', '*.md']\n    include: ['*.json', 'model-*']\n"
    )
    assert mmd("sync").code == 0
    assert sorted(on_disk(home, "org/tiny")) == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "tokenizer.json",
    ]
    assert hf_endpoint.bytes_sent("pytorch_model.bin") == 0
    home.write_manifest("models:\n  org/tiny:\n    include: ['*.gguf']\n")
    result = mmd("sync")
    assert result.code == 1
    assert "no files in org/tiny@main match include/exclude" in home.entry("org/tiny")["error"]


def test_private_repo_needs_the_token_which_never_leaks(
    home: Home, mmd: Mmd, hf_endpoint: HfHubServer, monkeypatch
):
    repo_with_weights(hf_endpoint, "org/secret", private=True)
    home.write_manifest("models:\n  org/secret: {}\n")
    denied = mmd("sync")
    assert denied.code == 1
    error = home.entry("org/secret")["error"]
    assert error == (
        f"model repo org/secret not found at {hf_endpoint.url}, or it is private and no "
        "token with access was given (set HF_TOKEN)"
    )

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    allowed = mmd("sync", "-v")
    assert allowed.code == 0, allowed.err
    assert home.entry("org/secret")["status"] == "available"
    cdn = [r for r in hf_endpoint.requests if r.origin == "cdn"]
    assert cdn and all(r.header("Authorization") is None for r in cdn)
    seen = allowed.out + allowed.err + denied.out + denied.err + home.registry_file.read_text()
    seen += mmd("show", "org/secret", "--json").out + mmd("list").out
    assert TOKEN not in seen


def test_gated_repo_says_how_to_get_access(
    home: Home, mmd: Mmd, hf_endpoint: HfHubServer, monkeypatch
):
    repo_with_weights(hf_endpoint, "org/gated", gated="manual")
    home.write_manifest("models:\n  org/gated: {}\n")
    assert mmd("sync").code == 1
    assert home.entry("org/gated")["error"] == (
        f"org/gated is gated: accept the licence at {hf_endpoint.url}/org/gated and set HF_TOKEN"
    )
    assert hf_endpoint.bytes_sent("*.safetensors") == 0
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert mmd("sync").code == 0
    assert home.entry("org/gated")["status"] == "available"


def test_missing_repo_and_revision(home: Home, mmd: Mmd, hf_endpoint: HfHubServer):
    repo_with_weights(hf_endpoint)
    home.write_manifest("models:\n  org/nope: {}\n  org/tiny:\n    revision: v9.9\n")
    result = mmd("sync")
    assert result.code == 1
    assert "model repo org/nope not found" in home.entry("org/nope")["error"]
    assert home.entry("org/tiny")["error"] == "revision 'v9.9' not found in org/tiny"
    assert "FAILED org/nope" in result.out and "FAILED org/tiny" in result.out


def test_rate_limited_metadata_is_retried_after_retry_after(
    home: Home, mmd: Mmd, hf_endpoint: HfHubServer
):
    repo_with_weights(hf_endpoint)
    hf_endpoint.set_fault("/api/models/*", status_sequence=[429, 429], retry_after="1")
    home.write_manifest("models:\n  org/tiny: {}\n")
    started = time.monotonic()
    assert mmd("sync").code == 0
    assert time.monotonic() - started >= 1.9
    statuses = [r.status for r in hf_endpoint.requests if r.kind == "api"]
    assert statuses == [429, 429, 200]


def test_corrupted_lfs_and_small_files_never_reach_the_model_folder(
    home: Home, mmd: Mmd, hf_endpoint: HfHubServer
):
    _, files = repo_with_weights(hf_endpoint)
    hf_endpoint.set_fault("model-00002-of-00002.safetensors", flip_byte=7)
    hf_endpoint.set_fault("tokenizer.json", flip_byte=3)
    home.write_manifest("models:\n  org/tiny: {}\n")
    result = mmd("sync")
    assert result.code == 1
    error = home.entry("org/tiny")["error"]
    assert "mismatch" in error
    assert not (home.storage / "huggingface/org/tiny").exists()

    # Each corruption is named with expected and actual digests.
    bad_token = bytearray(TOKENIZER)
    bad_token[3] ^= 0xFF
    hf_endpoint.clear_faults()
    hf_endpoint.set_fault("tokenizer.json", flip_byte=3)
    assert mmd("sync").code == 1
    assert home.entry("org/tiny")["error"] == (
        f"tokenizer.json: git blob sha1 mismatch: expected {git_blob_sha1(TOKENIZER)}, "
        f"got {git_blob_sha1(bytes(bad_token))}"
    )
    hf_endpoint.clear_faults()
    assert mmd("sync").code == 0
    assert on_disk(home, "org/tiny") == files


def test_dataset_repo(home: Home, mmd: Mmd, hf_endpoint: HfHubServer):
    hf_endpoint.create_repo("org/data", repo_type="dataset")
    rows = b"a,b\n1,2\n"
    commit = hf_endpoint.commit("org/data", {"train.csv": rows}, repo_type="dataset")
    home.write_manifest(
        "models:\n  data:\n    repo: org/data\n    repo_type: dataset\n    type: other\n"
    )
    assert mmd("sync").code == 0
    assert on_disk(home, "data") == {"train.csv": rows}
    entry = home.entry("data")
    assert entry["version"] == commit and entry["metadata"]["repo_type"] == "dataset"


def test_offline(home: Home, mmd: Mmd, hf_endpoint: HfHubServer, monkeypatch):
    repo_with_weights(hf_endpoint)
    home.write_manifest("models:\n  org/tiny: {}\n  org/other: {}\n")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = mmd("sync")
    assert result.code == 1
    assert home.entry("org/tiny")["error"].startswith("HF_HUB_OFFLINE is set: cannot resolve")
    assert hf_endpoint.requests == []

    home.write_manifest("models:\n  org/tiny: {}\n")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert mmd("sync").code == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf_endpoint.reset_stats()
    offline = mmd("sync")
    assert offline.code == 0
    assert "offline, keeping" in mmd("plan").out
    assert hf_endpoint.requests == []


def test_sigkill_mid_lfs_file_then_resume(home: Home, hf_endpoint: HfHubServer, spawn):
    hf_endpoint.create_repo("org/big")
    big = payload(24 * 1024 * 1024, b"big")
    commit = hf_endpoint.commit("org/big", {"model.safetensors": big, "config.json": CONFIG})
    half = len(big) // 2
    hf_endpoint.set_fault("model.safetensors", stall_after=half, stall_seconds=60)
    home.write_manifest(f"models:\n  org/big:\n    revision: {commit}\n")

    proc = spawn("sync")
    wait_for(lambda: hf_endpoint.bytes_sent("model.safetensors") >= half, what="half sent")
    wait_for(lambda: part_size(home) >= half - 8 * 1024 * 1024, what="half on disk")
    wait_until_part_settles(home)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    kept = part_size(home)
    assert kept > 0

    hf_endpoint.clear_faults()
    proc = spawn("sync")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    cdn = [
        r
        for r in hf_endpoint.requests_matching("model.safetensors", method="GET")
        if r.origin == "cdn"
    ]
    assert cdn[-1].range == f"bytes={kept}-"
    assert hf_endpoint.bytes_sent("model.safetensors") < 1.2 * len(big)
    assert on_disk(home, "org/big") == {"model.safetensors": big, "config.json": CONFIG}
    assert json.loads(home.registry_file.read_text())["models"]["org/big"]["version"] == commit


def test_pinned_noop_pass_loads_neither_huggingface_hub_nor_aiohttp(
    home: Home, mmd: Mmd, hf_endpoint: HfHubServer
):
    commit, _ = repo_with_weights(hf_endpoint)
    home.write_manifest(f"models:\n  org/tiny:\n    revision: {commit}\n")
    assert mmd("sync").code == 0
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mmd", "sync"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "mmd.cli" in imported  # the import log was read
    assert not {"huggingface_hub", "aiohttp"} & imported


def _kill_mid_file(home: Home, hub: HfHubServer, spawn, glob: str, after: int) -> None:
    hub.set_fault(glob, stall_after=after, stall_seconds=60)
    proc = spawn("sync")
    wait_for(lambda: hub.bytes_sent(glob) >= after, what="the stall point")
    wait_until_part_settles(home)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    hub.clear_faults()


def test_branch_moving_mid_download_keeps_finished_files(
    home: Home, hf_endpoint: HfHubServer, spawn
):
    hf_endpoint.create_repo("org/m")
    big, small = payload(8_000_000, b"big"), payload(200_000, b"small")
    hf_endpoint.commit("org/m", {"big.safetensors": big, "small.safetensors": small})
    home.write_manifest("models:\n  org/m: {}\n")
    _kill_mid_file(home, hf_endpoint, spawn, "big.safetensors", 3_000_000)
    assert hf_endpoint.bytes_sent("small.safetensors") == len(small)

    second = hf_endpoint.commit("org/m", {"README.md": b"# moved\n"})
    hf_endpoint.reset_stats()
    proc = spawn("sync")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert hf_endpoint.bytes_sent("small.safetensors") == 0  # finished: reused, verified
    # Half there: the new version's stage adopts the bytes and resumes with a Range.
    assert 0 < hf_endpoint.bytes_sent("big.safetensors") <= len(big) - 3_000_000
    cdn = hf_endpoint.requests_matching("big.safetensors", method="GET")
    assert cdn[-1].range is not None and cdn[-1].range != "bytes=0-"
    assert on_disk(home, "org/m") == {
        "big.safetensors": big,
        "small.safetensors": small,
        "README.md": b"# moved\n",
    }
    assert home.entry("org/m")["version"] == second
    assert list((home.storage / "cache/staging").rglob("*")) == []  # old stage gone too


def test_selection_change_after_interrupt_switches_in_exactly_the_selection(
    home: Home, mmd: Mmd, hf_endpoint: HfHubServer, spawn
):
    hf_endpoint.create_repo("org/m")
    big = payload(8_000_000, b"big")
    commit = hf_endpoint.commit(
        "org/m", {"big.safetensors": big, "small.safetensors": b"s" * 20_000, "config.json": CONFIG}
    )
    home.write_manifest(f"models:\n  org/m:\n    revision: {commit}\n")
    _kill_mid_file(home, hf_endpoint, spawn, "big.safetensors", 3_000_000)

    home.write_manifest(f"models:\n  org/m:\n    revision: {commit}\n    include: ['*.json']\n")
    assert mmd("sync").code == 0
    assert on_disk(home, "org/m") == {"config.json": CONFIG}
    assert [f["path"] for f in home.entry("org/m")["files"]] == ["config.json"]
    assert mmd("verify").code == 0


def test_offline_after_a_failed_check_keeps_the_model(
    home: Home, mmd: Mmd, hf_endpoint: HfHubServer, monkeypatch
):
    repo_with_weights(hf_endpoint)
    home.write_manifest("models:\n  org/tiny: {}\n")
    assert mmd("sync").code == 0
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the hub is unreachable
    assert mmd("sync").code == 1
    entry = home.entry("org/tiny")
    assert entry["status"] == "available" and entry["error"].startswith("check failed: cannot")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = mmd("sync")
    assert result.code == 0
    assert "offline, keeping" in mmd("plan").out


def test_spelling_a_default_differently_does_not_restage(
    home: Home, mmd: Mmd, hf_endpoint: HfHubServer
):
    commit, _ = repo_with_weights(hf_endpoint)
    home.write_manifest("models:\n  org/tiny:\n    include: '*.json'\n")
    assert mmd("sync").code == 0
    home.write_manifest(f"models:\n  org/tiny:\n    include: ['*.json']\n    revision: {commit}\n")
    assert "nothing  org/tiny: up to date" in mmd("plan").out
