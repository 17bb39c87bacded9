"""The GitHub-compatible test server answers with the real API's shapes (plain HTTP clients)."""

from __future__ import annotations

import base64
import email.message
import hashlib
import json
import math
import os
import pathlib
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest

from tests.servers.github import GitHubServer, git_blob_sha1, github, lfs_pointer  # noqa: F401

ROOT = pathlib.Path(__file__).resolve().parents[1]

MODEL = bytes(range(256)) * 64  # 16384 bytes
CONFIG = b'{"model_type": "llama"}\n'
README = b"# models\n"
WEIGHTS = b"\x01\x02\x03" * 5000  # 15000 bytes, stored with LFS


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _get(
    url: str,
    headers: dict[str, str] | None = None,
    *,
    method: str = "GET",
    data: bytes | None = None,
) -> tuple[int, email.message.Message, bytes]:
    """One request, redirects not followed, errors returned like successes."""
    req = urllib.request.Request(url, headers=headers or {}, method=method, data=data)
    try:
        with _OPENER.open(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def _json(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    status, _, body = _get(url, headers)
    return status, json.loads(body)


@pytest.fixture
def gh(github: GitHubServer) -> GitHubServer:  # noqa: F811
    github.add_release("org", "models", "v1", {"model.gguf": MODEL, "config.json": CONFIG})
    github.add_release("org", "models", "v0", {"old.bin": b"old"}, digest=False)
    return github


@pytest.fixture
def repo(github: GitHubServer) -> tuple[GitHubServer, str]:  # noqa: F811
    sha = github.add_commit(
        "org",
        "code",
        ["main", "refs/tags/v2"],
        {"README.md": README, "cfg/config.json": CONFIG, "weights/w.bin": WEIGHTS},
        lfs={"weights/w.bin"},
    )
    return github, sha


# ---------------------------------------------------------------------- repos and releases


def test_repo_json(gh: GitHubServer) -> None:
    status, data = _json(f"{gh.url}/repos/org/models")
    assert status == 200
    assert data["full_name"] == "org/models"
    assert data["html_url"] == f"{gh.url}/org/models"
    assert data["private"] is False
    assert data["default_branch"] == "main"
    assert data["owner"]["login"] == "org"
    # Names are case-insensitive, as on GitHub.
    assert _json(f"{gh.url}/repos/ORG/Models")[1]["id"] == data["id"]


def test_release_by_tag_and_latest(gh: GitHubServer) -> None:
    status, rel = _json(f"{gh.url}/repos/org/models/releases/tags/v1")
    assert status == 200
    assert rel["tag_name"] == "v1"
    assert isinstance(rel["id"], int)
    assets = {a["name"]: a for a in rel["assets"]}
    model = assets["model.gguf"]
    assert model["size"] == len(MODEL)
    assert model["digest"] == f"sha256:{_sha256(MODEL)}"
    assert model["state"] == "uploaded"
    assert model["url"] == f"{gh.url}/repos/org/models/releases/assets/{model['id']}"
    assert model["browser_download_url"] == f"{gh.url}/org/models/releases/download/v1/model.gguf"
    assert model["id"] == gh.asset_id("org", "models", "v1", "model.gguf")
    # The latest is the most recently added one unless a release is pinned.
    assert _json(f"{gh.url}/repos/org/models/releases/latest")[1]["tag_name"] == "v0"
    gh.add_release("org", "models", "v2", {"a": b"a"}, latest=True)
    gh.add_release("org", "models", "v3-rc", {"a": b"a"})
    assert _json(f"{gh.url}/repos/org/models/releases/latest")[1]["tag_name"] == "v2"
    old = _json(f"{gh.url}/repos/org/models/releases/tags/v0")[1]
    assert old["assets"][0]["digest"] is None
    listing = _json(f"{gh.url}/repos/org/models/releases?per_page=2")
    assert [r["tag_name"] for r in listing[1]] == ["v3-rc", "v2"]
    by_id = _json(f"{gh.url}/repos/org/models/releases/{rel['id']}")[1]
    assert by_id["tag_name"] == "v1"


def test_not_found_shapes(gh: GitHubServer) -> None:
    for path in (
        "/repos/org/nope",
        "/repos/org/models/releases/tags/v9",
        "/repos/org/models/releases/assets/999999",
        "/repos/nobody/x/releases/latest",
    ):
        status, data = _json(gh.url + path)
        assert status == 404, path
        assert data["message"] == "Not Found"
        assert "documentation_url" in data
    gh.add_repo("org", "empty")  # a repo without releases has no latest one
    assert _json(f"{gh.url}/repos/org/empty/releases/latest")[0] == 404


def test_asset_api_302_to_cdn_and_bytes(gh: GitHubServer) -> None:
    url = gh.asset_api_url("org", "models", "v1", "model.gguf")
    token = {"Authorization": f"Bearer {gh.token}"}
    status, _, body = _get(url, token)
    assert status == 200
    assert json.loads(body)["name"] == "model.gguf"
    status, headers, _ = _get(url, {**token, "Accept": "application/octet-stream"})
    assert status == 302
    location = headers["Location"]
    assert location.startswith(gh.cdn_url + "/")
    assert gh.cdn_url != gh.url
    status, headers, body = _get(location)  # a client must not send the token here
    assert status == 200
    assert body == MODEL
    assert headers["Content-Length"] == str(len(MODEL))
    assert headers["Accept-Ranges"] == "bytes"
    assert gh.bytes_sent("model.gguf") == len(MODEL)
    assert gh.count(origin="cdn") == 1
    cdn = gh.requests_matching("model.gguf", origin="cdn", kind="cdn-asset")
    assert len(cdn) == 1 and cdn[0].header("Authorization") is None
    api = gh.requests_matching(origin="api")
    assert all(r.header("Authorization") == f"Bearer {gh.token}" for r in api)


def test_browser_download_url_and_cdn_ranges(gh: GitHubServer) -> None:
    url = gh.browser_download_url("org", "models", "v1", "model.gguf")
    status, headers, _ = _get(url)
    assert status == 302
    location = headers["Location"]
    assert location.startswith(gh.cdn_url)
    status, headers, body = _get(location, {"Range": "bytes=100-"})
    assert status == 206
    assert body == MODEL[100:]
    assert headers["Content-Range"] == f"bytes 100-{len(MODEL) - 1}/{len(MODEL)}"
    etag = headers["ETag"]
    status, _, body = _get(location, {"Range": "bytes=0-9", "If-Range": etag})
    assert (status, body) == (206, MODEL[:10])
    status, _, body = _get(location, {"Range": "bytes=0-9", "If-Range": '"other"'})
    assert (status, body) == (200, MODEL)
    status, headers, _ = _get(location, {"Range": f"bytes={len(MODEL)}-"})
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{len(MODEL)}"


def test_cdn_urls_are_signed_and_expire(gh: GitHubServer) -> None:
    url = gh.browser_download_url("org", "models", "v1", "config.json")
    location = _get(url)[1]["Location"]
    parts = urllib.parse.urlsplit(location)
    query = dict(urllib.parse.parse_qsl(parts.query))
    query["sig"] = "0" * 40
    forged = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
    assert _get(forged)[0] == 403
    gh.cdn_url_ttl = -5  # URLs handed out from now on are already expired
    expired = _get(url)[1]["Location"]
    status, _, body = _get(expired)
    assert status == 403
    assert b"AuthenticationFailed" in body
    assert _get(location)[2] == CONFIG  # the older one is still valid
    gh.cdn_reject_auth = True
    assert _get(location, {"Authorization": f"token {gh.token}"})[0] == 400


def test_private_repo_needs_the_token(gh: GitHubServer) -> None:
    gh.add_release("org", "secret", "v1", {"m.bin": MODEL}, private=True)
    url = f"{gh.url}/repos/org/secret/releases/tags/v1"
    assert _json(url)[0] == 404
    for scheme in ("Bearer", "token"):
        status, rel = _json(url, {"Authorization": f"{scheme} {gh.token}"})
        assert status == 200
    basic = base64.b64encode(f"x-access-token:{gh.token}".encode()).decode()
    assert _json(url, {"Authorization": f"Basic {basic}"})[0] == 200
    status, data = _json(url, {"Authorization": "Bearer ghp_wrong"})
    assert (status, data["message"]) == (401, "Bad credentials")
    # Even for public repos, a wrong token is refused.
    assert _json(f"{gh.url}/repos/org/models", {"Authorization": "token nope"})[0] == 401
    asset = rel["assets"][0]
    # browser_download_url takes no API token: a private repo's asset is 404 there.
    auth = {"Authorization": f"Bearer {gh.token}"}
    assert _get(asset["browser_download_url"], auth)[0] == 404
    status, headers, _ = _get(asset["url"], {**auth, "Accept": "application/octet-stream"})
    assert status == 302
    assert _get(headers["Location"])[2] == MODEL
    assert _get(asset["url"], {"Accept": "application/octet-stream"})[0] == 404
    gh.set_private("org", "secret", False)
    assert _json(url)[0] == 200


def test_rate_limit_headers_and_modes(gh: GitHubServer) -> None:
    url = f"{gh.url}/repos/org/models"
    status, headers, _ = _get(url)
    assert status == 200
    assert headers["X-RateLimit-Limit"] == "60"
    assert int(headers["X-RateLimit-Remaining"]) < 60
    assert headers["X-RateLimit-Resource"] == "core"
    authed = _get(url, {"Authorization": f"Bearer {gh.token}"})[1]
    assert authed["X-RateLimit-Limit"] == "5000"

    gh.rate_limit(2, reset_in=3.0)
    before = time.time()
    for _ in range(2):
        status, headers, body = _get(url)
        assert status == 403
        assert headers["X-RateLimit-Remaining"] == "0"
        reset = int(headers["X-RateLimit-Reset"])
        assert before + 2 <= reset <= math.ceil(before + 3.0) + 1
        assert "Retry-After" not in headers
        assert json.loads(body)["message"].startswith("API rate limit exceeded")
    assert _get(url)[0] == 200

    gh.rate_limit(1, mode="429", reset_in=2.0)
    status, headers, body = _get(url)
    assert status == 429
    assert headers["Retry-After"] == "2"
    assert "secondary rate limit" in json.loads(body)["message"]
    gh.rate_limit(1, mode="403-secondary", reset_in=0)
    status, headers, _ = _get(url)
    assert (status, headers["Retry-After"]) == (403, "0")
    assert _get(url)[0] == 200
    # The web host and the CDN are not API requests.
    gh.rate_limit(5)
    location = _get(gh.browser_download_url("org", "models", "v1", "config.json"))[1]["Location"]
    assert _get(location)[0] == 200


def test_conditional_requests(gh: GitHubServer) -> None:
    url = f"{gh.url}/repos/org/models/releases/tags/v1"
    status, headers, _ = _get(url)
    assert status == 200
    etag = headers["ETag"]
    assert etag.startswith('W/"')
    assert _get(url, {"If-None-Match": etag})[0] == 304


# ---------------------------------------------------------------------- commits, trees, contents


def test_commits_resolve_refs(repo: tuple[GitHubServer, str]) -> None:
    gh, sha = repo
    assert len(sha) == 40
    for ref in ("main", "v2", "heads/main", "refs/tags/v2", sha, sha[:7], sha.upper()):
        status, data = _json(f"{gh.url}/repos/org/code/commits/{ref}")
        assert (status, data["sha"]) == (200, sha), ref
    assert (
        data["commit"]["tree"]["sha"] == _json(f"{gh.url}/repos/org/code/git/trees/main")[1]["sha"]
    )
    status, data = _json(f"{gh.url}/repos/org/code/commits/nope")
    assert status == 422
    assert data["message"] == "No commit found for SHA: nope"
    status, _, body = _get(
        f"{gh.url}/repos/org/code/commits/main", {"Accept": "application/vnd.github.sha"}
    )
    assert (status, body.decode()) == (200, sha)
    # A second commit on main: main moves, the tag stays, parents link them.
    sha2 = gh.add_commit("org", "code", ["main"], {"README.md": b"v2\n"})
    assert _json(f"{gh.url}/repos/org/code/commits/main")[1]["parents"][0]["sha"] == sha
    assert gh.resolve("org", "code", "main") == sha2
    assert gh.resolve("org", "code", "v2") == sha
    gh.add_repo("org", "void")
    assert _json(f"{gh.url}/repos/org/void/commits/main")[0] == 409


def test_tree_recursive_and_lfs_pointer(repo: tuple[GitHubServer, str]) -> None:
    gh, sha = repo
    status, tree = _json(f"{gh.url}/repos/org/code/git/trees/{sha}?recursive=1")
    assert status == 200
    assert tree["truncated"] is False
    entries = {e["path"]: e for e in tree["tree"]}
    assert [e["path"] for e in tree["tree"]] == [
        "README.md",
        "cfg",
        "cfg/config.json",
        "weights",
        "weights/w.bin",
    ]
    assert entries["cfg"]["type"] == "tree" and entries["cfg"]["mode"] == "040000"
    assert "size" not in entries["cfg"]
    assert entries["README.md"] == {
        "path": "README.md",
        "mode": "100644",
        "type": "blob",
        "sha": git_blob_sha1(README),
        "size": len(README),
        "url": f"{gh.url}/repos/org/code/git/blobs/{git_blob_sha1(README)}",
    }
    pointer = lfs_pointer(_sha256(WEIGHTS), len(WEIGHTS))
    assert entries["weights/w.bin"]["sha"] == git_blob_sha1(pointer)
    assert entries["weights/w.bin"]["size"] == len(pointer)
    flat = _json(f"{gh.url}/repos/org/code/git/trees/{sha}")[1]
    assert [e["path"] for e in flat["tree"]] == ["README.md", "cfg", "weights"]
    sub = _json(f"{gh.url}/repos/org/code/git/trees/{entries['cfg']['sha']}")[1]
    assert [e["path"] for e in sub["tree"]] == ["config.json"]
    assert _json(f"{gh.url}/repos/org/code/git/trees/{'0' * 40}")[0] == 404


def test_contents_raw_and_json(repo: tuple[GitHubServer, str]) -> None:
    gh, sha = repo
    raw = {"Accept": "application/vnd.github.raw"}
    url = f"{gh.url}/repos/org/code/contents/cfg/config.json?ref={sha}"
    status, headers, body = _get(url, raw)
    assert (status, body) == (200, CONFIG)
    assert headers["ETag"] == f'"{git_blob_sha1(CONFIG)}"'
    lfs_url = f"{gh.url}/repos/org/code/contents/weights/w.bin?ref={sha}"
    assert _get(lfs_url, raw)[2] == lfs_pointer(_sha256(WEIGHTS), len(WEIGHTS))
    assert _get(lfs_url, {"Accept": "application/vnd.github.raw+json"})[0] == 200
    status, data = _json(url)
    assert data["type"] == "file" and data["encoding"] == "base64"
    assert base64.b64decode(data["content"]) == CONFIG
    assert data["sha"] == git_blob_sha1(CONFIG)
    assert _get(data["download_url"])[2] == CONFIG  # raw host on the CDN origin
    listing = _json(f"{gh.url}/repos/org/code/contents/?ref=main")[1]
    assert [(e["name"], e["type"]) for e in listing] == [
        ("README.md", "file"),
        ("cfg", "dir"),
        ("weights", "dir"),
    ]
    assert _get(f"{gh.url}/repos/org/code/contents/nope.txt?ref={sha}", raw)[0] == 404
    status, data = _json(f"{gh.url}/repos/org/code/contents/README.md?ref=nope")
    assert (status, data["message"]) == (404, "No commit found for the ref nope")
    assert gh.bytes_sent("cfg/config.json") == 2 * len(CONFIG)


# ---------------------------------------------------------------------- Git LFS


def _batch(
    gh: GitHubServer, objects: list[dict[str, Any]], headers: dict[str, str] | None = None
) -> tuple[int, email.message.Message, bytes]:
    body = json.dumps({"operation": "download", "transfers": ["basic"], "objects": objects})
    return _get(
        f"{gh.url}/org/code.git/info/lfs/objects/batch",
        {
            "Accept": "application/vnd.git-lfs+json",
            "Content-Type": "application/vnd.git-lfs+json",
            **(headers or {}),
        },
        method="POST",
        data=body.encode(),
    )


def test_lfs_batch_and_download(repo: tuple[GitHubServer, str]) -> None:
    gh, _ = repo
    oid = _sha256(WEIGHTS)
    html_url = _json(f"{gh.url}/repos/org/code")[1]["html_url"]
    assert (
        f"{html_url}.git/info/lfs/objects/batch" == f"{gh.url}/org/code.git/info/lfs/objects/batch"
    )
    status, headers, body = _batch(
        gh, [{"oid": oid, "size": len(WEIGHTS)}, {"oid": "ab" * 32, "size": 1}]
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/vnd.git-lfs+json")
    data = json.loads(body)
    found, missing = data["objects"]
    assert missing["error"] == {"code": 404, "message": "Object does not exist"}
    download = found["actions"]["download"]
    assert found["size"] == len(WEIGHTS)
    assert download["href"].startswith(gh.cdn_url)
    assert _get(download["href"])[0] == 403  # the action header is required
    status, _, got = _get(download["href"], download["header"])
    assert (status, got) == (200, WEIGHTS)
    status, _, part = _get(download["href"], {**download["header"], "Range": "bytes=10-19"})
    assert (status, part) == (206, WEIGHTS[10:20])
    assert gh.bytes_sent("weights/w.bin") == len(WEIGHTS) + 10
    assert gh.bytes_sent(oid) == len(WEIGHTS) + 10
    gh.lfs_header_auth = False
    href = json.loads(_batch(gh, [{"oid": oid, "size": len(WEIGHTS)}])[2])["objects"][0]
    assert "header" not in href["actions"]["download"]
    assert _get(href["actions"]["download"]["href"])[2] == WEIGHTS
    # Without the LFS media type GitHub answers 406.
    status, _, _ = _get(
        f"{gh.url}/org/code.git/info/lfs/objects/batch",
        {"Content-Type": "application/json"},
        method="POST",
        data=b'{"operation": "download", "objects": []}',
    )
    assert status == 406


def test_lfs_private_repo(repo: tuple[GitHubServer, str]) -> None:
    gh, _ = repo
    gh.set_private("org", "code")
    obj = [{"oid": _sha256(WEIGHTS), "size": len(WEIGHTS)}]
    status, headers, _ = _batch(gh, obj)
    assert status == 401
    assert headers["LFS-Authenticate"].startswith("Basic")
    basic = base64.b64encode(f"x-access-token:{gh.token}".encode()).decode()
    status, _, body = _batch(gh, obj, {"Authorization": f"Basic {basic}"})
    assert status == 200
    action = json.loads(body)["objects"][0]["actions"]["download"]
    assert _get(action["href"], action["header"])[2] == WEIGHTS
    cdn = gh.requests_matching(origin="cdn")
    assert all(gh.token not in (r.header("Authorization") or "") for r in cdn)


# ---------------------------------------------------------------------- faults


def test_cut_and_status_faults(gh: GitHubServer) -> None:
    gh.set_fault("model.gguf", cut_after=1000)
    gh.set_fault("/repos/org/models/releases/tags/*", status_sequence=[502, 200])
    assert _get(f"{gh.url}/repos/org/models/releases/tags/v1")[0] == 502
    assert _get(f"{gh.url}/repos/org/models/releases/tags/v1")[0] == 200
    location = _get(gh.browser_download_url("org", "models", "v1", "model.gguf"))[1]["Location"]
    req = urllib.request.Request(location)
    with urllib.request.urlopen(req, timeout=10) as resp:
        got = resp.read(1000)
        with pytest.raises(Exception):  # noqa: B017 - http.client.IncompleteRead
            resp.read()
    assert got == MODEL[:1000]
    status, _, rest = _get(location, {"Range": "bytes=1000-"})
    assert (status, rest) == (206, MODEL[1000:])
    assert gh.bytes_sent("org/models/v1/model.gguf") == len(MODEL)
    gh.clear_faults()
    gh.set_fault("config.json", flip_byte=0, methods=["GET"])
    location = _get(gh.browser_download_url("org", "models", "v1", "config.json"))[1]["Location"]
    body = _get(location)[2]
    assert body != CONFIG and body[1:] == CONFIG[1:]


async def test_aiohttp_client_follows_to_cdn_without_the_token(gh: GitHubServer) -> None:
    import aiohttp

    gh.set_fault("model.gguf", cut_after=4096)
    url = gh.asset_api_url("org", "models", "v1", "model.gguf")
    headers = {"Authorization": f"Bearer {gh.token}", "Accept": "application/octet-stream"}
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=headers) as resp:  # 302 followed to the CDN
            assert resp.status == 200
            assert str(resp.url).startswith(gh.cdn_url)
            etag = resp.headers["ETag"]
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        resume = {**headers, "Range": "bytes=4096-", "If-Range": etag}
        async with session.get(url, headers=resume) as resp:
            assert resp.status == 206
            rest = await resp.read()
    assert rest == MODEL[4096:]
    assert gh.bytes_sent("model.gguf") == len(MODEL)
    cdn = gh.requests_matching("model.gguf", origin="cdn")
    assert len(cdn) == 2
    assert all(r.header("Authorization") is None for r in cdn)  # dropped cross-origin
    assert gh.count(kind="api") == 2


# ---------------------------------------------------------------------- standalone mode


def test_standalone_mode(tmp_path: pathlib.Path) -> None:
    (tmp_path / "rel").mkdir()
    (tmp_path / "rel" / "model.gguf").write_bytes(MODEL)
    (tmp_path / "src" / "w").mkdir(parents=True)
    (tmp_path / "src" / "README.md").write_bytes(README)
    (tmp_path / "src" / "w" / "big.bin").write_bytes(WEIGHTS)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.servers.github",
            "--port",
            "0",
            "--repo",
            "org/bench",
            "--release-dir",
            str(tmp_path / "rel"),
            "--tag",
            "v1",
            "--commit-dir",
            str(tmp_path / "src"),
            "--lfs",
            "*.bin",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = dict(proc.stdout.readline().split(" ", 1) for _ in range(4))
        url = lines["READY"].strip()
        assert url.startswith("http://127.0.0.1:")
        assert lines["CDN"].strip() != url
        rel = _json(f"{url}/repos/org/bench/releases/tags/v1")[1]
        asset = rel["assets"][0]
        assert asset["digest"] == f"sha256:{_sha256(MODEL)}"
        location = _get(asset["browser_download_url"])[1]["Location"]
        assert _get(location)[2] == MODEL
        commit = _json(f"{url}/repos/org/bench/commits/main")[1]
        assert commit["sha"] == lines["COMMIT"].strip()
        tree = _json(f"{url}/repos/org/bench/git/trees/main?recursive=1")[1]
        sizes = {e["path"]: e.get("size") for e in tree["tree"]}
        assert sizes["w/big.bin"] == len(lfs_pointer(_sha256(WEIGHTS), len(WEIGHTS)))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0
