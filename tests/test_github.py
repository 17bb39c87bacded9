"""`source: github` against the GitHub-API-compatible server: releases, refs, LFS, limits."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import pytest

from tests.conftest import Home, Result
from tests.servers.fileserver import FileServer
from tests.servers.github import GitHubServer
from tests.test_sync_http import payload

Mmd = Callable[..., Result]
WEIGHTS = payload(300_000, b"gh")
LABELS = b"cat\ndog\n"
CONFIG = b'{"model_type": "llama"}\n'
BIG = payload(200_000, b"lfs")
ATTRIBUTES = b"# LFS\nweights/*.bin filter=lfs diff=lfs merge=lfs -text\n*.md text\n"
FAKE_POINTER = (
    b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"ab" * 32 + b"\nsize 12345\n"
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest(home: Home, github: GitHubServer, model_id: str, **keys: object) -> None:
    lines = [f"  {model_id}:", "    source: github", f"    api_url: {github.url}"]
    lines += [f"    {k}: {json.dumps(v)}" for k, v in keys.items()]
    home.write_manifest("models:\n" + "\n".join(lines) + "\n")


def on_disk(home: Home, model_id: str) -> dict[str, bytes]:
    root = home.storage / "github" / model_id
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# -- releases ------------------------------------------------------------------------


def test_release_assets_by_tag_verified_by_digest(
    home: Home, mmd: Mmd, github: GitHubServer
) -> None:
    github.add_release("acme", "det", "v1", {"model.onnx": WEIGHTS, "labels.txt": LABELS})
    manifest(home, github, "acme/det", release="v1", assets=["*.onnx", "labels.txt"])
    plan = mmd("plan")
    assert "fetch    acme/det (2 files" in plan.out, plan.err
    result = mmd("sync")
    assert result.code == 0, result.err
    assert on_disk(home, "acme/det") == {"model.onnx": WEIGHTS, "labels.txt": LABELS}
    entry = home.entry("acme/det")
    assert entry["status"] == "available" and entry["version"].startswith("v1@")
    assert {f["path"]: f["sha256"] for f in entry["files"]}["model.onnx"] == sha(WEIGHTS)
    assert entry["metadata"]["release"] == "v1"
    # Same release: nothing to do, no bytes fetched again.
    sent = github.bytes_sent()
    assert mmd("sync").code == 0
    assert github.bytes_sent() == sent


def test_latest_release_and_an_asset_replaced_under_its_tag(
    home: Home, mmd: Mmd, github: GitHubServer
) -> None:
    github.add_release("acme", "det", "v1", {"model.onnx": WEIGHTS})
    github.add_release("acme", "det", "v2", {"model.onnx": WEIGHTS[::-1]})
    manifest(home, github, "acme/det", release="latest")
    assert mmd("sync").code == 0
    assert on_disk(home, "acme/det") == {"model.onnx": WEIGHTS[::-1]}
    first = home.entry("acme/det")["version"]
    github.add_release("acme", "det", "v2", {"model.onnx": WEIGHTS + b"!"})
    result = mmd("sync")
    assert result.code == 0 and "updated" in result.out
    assert on_disk(home, "acme/det") == {"model.onnx": WEIGHTS + b"!"}
    assert home.entry("acme/det")["version"] != first


def test_asset_without_digest_warns_or_uses_the_manifest_sha256(
    home: Home, mmd: Mmd, github: GitHubServer
) -> None:
    github.add_release("acme", "old", "v1", {"w.bin": WEIGHTS}, digest=False)
    manifest(home, github, "acme/old", release="v1")
    plan = mmd("plan")
    assert "no digest for w.bin; only the size will be checked" in plan.err
    manifest(home, github, "acme/old", release="v1", sha256=sha(b"something else"))
    result = mmd("sync")
    assert result.code == 1 and "sha256 mismatch" in result.out
    assert not (home.storage / "github/acme/old").exists()
    manifest(home, github, "acme/old", release="v1", sha256=sha(WEIGHTS))
    result = mmd("sync")
    assert result.code == 0, result.out
    assert on_disk(home, "acme/old") == {"w.bin": WEIGHTS}


def test_private_release_token_goes_to_the_api_only(
    home: Home, mmd: Mmd, github: GitHubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    github.add_release("acme", "secret", "v1", {"w.bin": WEIGHTS}, private=True)
    manifest(home, github, "acme/secret", release="v1")
    result = mmd("sync")
    assert result.code == 1
    assert "repository acme/secret not found on" in result.out
    assert "if it is private, set GITHUB_TOKEN" in result.out
    monkeypatch.setenv("GITHUB_TOKEN", github.token)
    monkeypatch.setenv("GITHUB_API_URL", github.url)  # the API this node trusts
    result = mmd("sync")
    assert result.code == 0, result.out
    assert on_disk(home, "acme/secret") == {"w.bin": WEIGHTS}
    cdn = github.requests_matching(origin="cdn")
    assert cdn and all(github.token not in str(r.headers) for r in cdn)
    api = github.requests_matching(origin="api", kind="api")
    assert any(github.token in (r.header("Authorization") or "") for r in api)
    assert github.token not in home.registry_file.read_text()
    assert github.token not in result.out + result.err


def test_corrupted_asset_bytes_are_caught(home: Home, mmd: Mmd, github: GitHubServer) -> None:
    github.add_release("acme", "det", "v1", {"model.onnx": WEIGHTS})
    github.set_fault("model.onnx", flip_byte=1000)
    manifest(home, github, "acme/det", release="v1")
    result = mmd("sync")
    assert result.code == 1 and "sha256 mismatch" in result.out
    assert not (home.storage / "github/acme/det").exists()
    github.clear_faults()
    assert mmd("sync").code == 0
    assert on_disk(home, "acme/det") == {"model.onnx": WEIGHTS}


# -- files at a ref ------------------------------------------------------------------


def test_files_at_a_branch_with_lfs_then_pinned_commit_makes_no_request(
    home: Home, mmd: Mmd, github: GitHubServer
) -> None:
    files = {
        "config.json": CONFIG,
        "weights/model.bin": BIG,
        "README.md": b"# hi\n",
        ".gitattributes": ATTRIBUTES,
        # Looks like a pointer, but LFS does not track it: it is published as it is in git.
        "docs/pointer-example.txt": FAKE_POINTER,
    }
    commit = github.add_commit("acme", "tok", ["main"], files, lfs=["weights/model.bin"])
    manifest(home, github, "acme/tok", ref="main", files=["*.json", "weights/*", "docs/*"])
    result = mmd("sync")
    assert result.code == 0, result.out + result.err
    assert on_disk(home, "acme/tok") == {
        "config.json": CONFIG,
        "weights/model.bin": BIG,
        "docs/pointer-example.txt": FAKE_POINTER,
    }
    entry = home.entry("acme/tok")
    assert entry["version"] == commit
    assert {f["path"]: f["sha256"] for f in entry["files"]}["weights/model.bin"] == sha(BIG)
    assert entry["metadata"]["lfs_files"] == ["weights/model.bin"]

    # The branch moves: an update, and the unchanged LFS object is not fetched again.
    lfs_before = github.bytes_sent("acme/tok/lfs/*")
    files2 = {**files, "config.json": b'{"model_type": "mistral"}\n'}
    commit2 = github.add_commit("acme", "tok", ["main"], files2, lfs=["weights/model.bin"])
    result = mmd("sync")
    assert result.code == 0 and "updated" in result.out
    assert home.entry("acme/tok")["version"] == commit2
    assert on_disk(home, "acme/tok")["config.json"] == files2["config.json"]
    assert github.bytes_sent("acme/tok/lfs/*") == lfs_before

    # Pinned to the full sha and in storage: not a single request.
    manifest(home, github, "acme/tok", ref=commit2, files=["*.json", "weights/*", "docs/*"])
    assert mmd("sync").code == 0
    github.reset_stats()
    assert mmd("sync").code == 0
    assert github.count() == 0


def test_unknown_repo_tag_ref_and_empty_selection_are_one_line(
    home: Home, mmd: Mmd, github: GitHubServer
) -> None:
    github.add_release("acme", "det", "v1", {"model.onnx": WEIGHTS})
    github.add_commit("acme", "det", ["main"], {"a.txt": b"a"})
    cases = [
        ({"repo": "acme/nope", "release": "v1"}, "repository acme/nope not found on"),
        ({"repo": "acme/nope", "ref": "main"}, "repository acme/nope not found on"),
        ({"release": "v9"}, "no release tagged 'v9' in acme/det"),
        ({"release": "v1", "assets": ["*.gguf"]}, "release v1 of acme/det has no asset matching"),
        ({"ref": "nobranch"}, "no branch, tag or commit 'nobranch' in acme/det"),
        ({"ref": "main", "files": ["*.bin"]}, "matches ['*.bin']"),
    ]
    for keys, message in cases:
        manifest(home, github, "acme/det", **keys)
        result = mmd("sync")
        assert result.code == 1, keys
        failed = [line for line in result.out.splitlines() if line.startswith("FAILED")]
        assert len(failed) == 1 and message in failed[0], (keys, result.out)


def test_manifest_keys_are_checked(home: Home, mmd: Mmd, github: GitHubServer) -> None:
    home.write_manifest(
        "models:\n  a/b:\n    source: github\n    release: v1\n    ref: main\n"
        "  c/d:\n    source: github\n    ref: main\n    assets: ['*']\n"
    )
    result = mmd("validate")
    assert result.code == 1
    assert "give exactly one of `release:` (assets) or `ref:`" in result.err
    assert "`assets:` goes with `release:`" in result.err


@pytest.mark.parametrize("mode", ["403", "429"])
def test_rate_limits_are_waited_out(home: Home, mmd: Mmd, github: GitHubServer, mode: str) -> None:
    github.add_release("acme", "det", "v1", {"model.onnx": WEIGHTS})
    manifest(home, github, "acme/det", release="v1")
    github.rate_limit(1, mode=mode, reset_in=1.0)
    result = mmd("sync")
    assert result.code == 0, result.out
    assert "GitHub rate limit; waiting" in result.err
    assert on_disk(home, "acme/det") == {"model.onnx": WEIGHTS}


def test_token_is_not_forwarded_when_the_api_redirects_elsewhere(
    home: Home,
    mmd: Mmd,
    github: GitHubServer,
    fileserver: FileServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", github.token)
    monkeypatch.setenv("GITHUB_API_URL", github.url)
    # Blobs are cached by content for the process: these bytes are new to it.
    attributes = ATTRIBUTES + b"# redirect test\n"
    github.add_commit(
        "acme", "tok", ["main"], {"config.json": CONFIG, ".gitattributes": attributes}
    )
    # .gitattributes is read by the source itself (urllib), config.json by the core.
    for name, data in ((".gitattributes", attributes), ("config.json", CONFIG)):
        github.set_fault(name, redirect_to=fileserver.add(f"mirror/{name}", data))
    manifest(home, github, "acme/tok", ref="main", files=["config.json"])
    result = mmd("sync")
    assert result.code == 0, result.out
    assert on_disk(home, "acme/tok") == {"config.json": CONFIG}
    for name in (".gitattributes", "config.json"):
        seen = fileserver.requests_for(f"mirror/{name}")
        assert seen and all(r.header("Authorization") is None for r in seen), name


def test_token_only_goes_to_the_configured_api(
    home: Home, mmd: Mmd, github: GitHubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GITHUB_API_URL unset: the node trusts api.github.com. A manifest (or an API
    # request) naming another api_url gets no token.
    monkeypatch.setenv("GITHUB_TOKEN", github.token)
    github.add_release("acme", "det", "v1", {"model.onnx": WEIGHTS})
    manifest(home, github, "acme/det", release="v1")
    result = mmd("sync")
    assert result.code == 0, result.out
    assert github.requests_matching()
    assert all(github.token not in str(r.headers) for r in github.requests_matching())


def test_manifest_sha256_must_agree_with_githubs_digest(
    home: Home, mmd: Mmd, github: GitHubServer
) -> None:
    github.add_release("acme", "det", "v1", {"model.onnx": b"replaced" * 1000})
    manifest(home, github, "acme/det", release="v1", sha256=sha(WEIGHTS))
    result = mmd("sync")
    assert result.code == 1
    assert f"the manifest pins sha256 {sha(WEIGHTS)}, GitHub says" in result.out
    assert not (home.storage / "github/acme/det").exists()


def test_a_long_rate_limit_fails_the_check_with_its_reset_time(
    home: Home, mmd: Mmd, github: GitHubServer
) -> None:
    github.add_release("acme", "det", "v1", {"model.onnx": WEIGHTS})
    manifest(home, github, "acme/det", release="v1")
    github.rate_limit(1, mode="403", reset_in=3600)
    result = mmd("sync")
    assert result.code == 1
    assert "GitHub rate limit until " in result.out
    assert "set GITHUB_TOKEN for a higher limit" in result.out
