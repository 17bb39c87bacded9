"""The HF-Hub-compatible test server works with the REAL huggingface_hub client."""

from __future__ import annotations

import email.message
import hashlib
import http.client
import os
import pathlib
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

import huggingface_hub
import pytest
from huggingface_hub import HfApi, RepoFile, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.servers.hfhub import (
    HfHubServer,
    git_blob_sha1,
    hf_endpoint,  # noqa: F401
    hfhub,  # noqa: F401
)

ROOT = pathlib.Path(__file__).resolve().parents[1]

CONFIG = b'{"model_type": "gpt2", "n_layer": 2}\n'
WEIGHTS = bytes(range(256)) * 80  # 20480 bytes, LFS (size and *.safetensors)
BIN = b"\x00\x01" * 3000  # 6000 bytes, LFS by pattern (*.bin)
TOKENIZER = b"hello tokenizer\n"  # small: plain git blob
LARGE_TXT = b"a" * 12_000  # LFS by size (>= lfs_threshold)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(path: str | pathlib.Path) -> bytes:
    return pathlib.Path(path).read_bytes()


def _files(root: pathlib.Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.relative_to(root).as_posix().startswith(".cache/")
    }


@pytest.fixture
def hub(hf_endpoint: HfHubServer) -> HfHubServer:  # noqa: F811
    hf_endpoint.create_repo(
        "org/model", pipeline_tag="text-generation", library_name="transformers"
    )
    hf_endpoint.commit(
        "org/model",
        {
            "config.json": CONFIG,
            "model.safetensors": WEIGHTS,
            "pytorch_model.bin": BIN,
            "tokenizer/tokenizer.txt": TOKENIZER,
            "notes.txt": LARGE_TXT,
        },
    )
    return hf_endpoint


def _no_redirect_opener() -> urllib.request.OpenerDirector:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    return urllib.request.build_opener(NoRedirect)


def _head(url: str, headers: dict[str, str] | None = None) -> tuple[int, email.message.Message]:
    req = urllib.request.Request(url, method="HEAD", headers=headers or {})
    try:
        with _no_redirect_opener().open(req, timeout=10) as resp:
            return resp.status, resp.headers
    except urllib.error.HTTPError as err:
        return err.code, err.headers


# ---------------------------------------------------------------------- environment


def test_fixture_points_huggingface_hub_at_the_server(hub: HfHubServer) -> None:
    from huggingface_hub import constants

    assert os.environ["HF_ENDPOINT"] == hub.url
    assert hub.url == constants.ENDPOINT
    assert constants.HF_HUB_DISABLE_XET is True
    assert huggingface_hub.hf_hub_url("org/model", "a b.txt", revision="refs/pr/1") == (
        f"{hub.url}/org/model/resolve/refs%2Fpr%2F1/a%20b.txt"
    )
    assert HfApi().endpoint == hub.url


# ---------------------------------------------------------------------- metadata


def test_model_info_with_files_metadata(hub: HfHubServer) -> None:
    info = HfApi().model_info("org/model", files_metadata=True)
    assert info.sha == hub.resolve("org/model", "main")
    assert info.pipeline_tag == "text-generation"
    assert info.library_name == "transformers"
    assert info.private is False
    assert info.gated is False
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert set(siblings) == {
        "config.json",
        "model.safetensors",
        "pytorch_model.bin",
        "tokenizer/tokenizer.txt",
        "notes.txt",
    }
    cfg = siblings["config.json"]
    assert cfg.size == len(CONFIG)
    assert cfg.lfs is None
    assert cfg.blob_id == git_blob_sha1(CONFIG)
    for name, data in (
        ("model.safetensors", WEIGHTS),
        ("pytorch_model.bin", BIN),
        ("notes.txt", LARGE_TXT),
    ):
        sib = siblings[name]
        assert sib.lfs is not None, name
        assert sib.lfs.sha256 == _sha256(data)
        assert sib.lfs.size == sib.size == len(data)
        pointer = (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{_sha256(data)}\n"
            f"size {len(data)}\n"
        ).encode()
        assert sib.lfs.pointer_size == len(pointer)
        assert sib.blob_id == git_blob_sha1(pointer)

    plain = HfApi().model_info("org/model")  # without blobs=true: names only
    assert {s.rfilename for s in plain.siblings or []} == set(siblings)
    assert all(s.size is None for s in plain.siblings or [])
    req = hub.requests_matching("/api/models/org/model")[0]
    assert req.query.get("blobs") == "true"


def test_tree_refs_paths_info_commits(hub: HfHubServer) -> None:
    hub.tree_page_size = 2  # forces the client through the Link: rel="next" pagination
    api = HfApi()
    files = sorted(api.list_repo_files("org/model"))
    assert len(hub.requests_matching("/api/models/org/model/tree/*")) == 3  # 6 entries / 2
    assert files == [
        "config.json",
        "model.safetensors",
        "notes.txt",
        "pytorch_model.bin",
        "tokenizer/tokenizer.txt",
    ]
    tree = list(api.list_repo_tree("org/model", recursive=True))
    by_path = {e.path: e for e in tree}
    assert type(by_path["tokenizer"]).__name__ == "RepoFolder"
    weights = by_path["model.safetensors"]
    assert isinstance(weights, RepoFile)
    assert weights.lfs is not None
    assert weights.lfs.sha256 == _sha256(WEIGHTS)
    top = {e.path for e in api.list_repo_tree("org/model")}
    assert "tokenizer/tokenizer.txt" not in top
    assert "tokenizer" in top
    expanded = list(api.list_repo_tree("org/model", path_in_repo="tokenizer", expand=True))
    assert expanded[0].last_commit is not None

    sha = hub.resolve("org/model")
    hub.tag("org/model", "v1.0", sha)
    refs = api.list_repo_refs("org/model")
    assert [(b.name, b.target_commit) for b in refs.branches] == [("main", sha)]
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1.0", sha)]

    infos = api.get_paths_info("org/model", ["config.json", "tokenizer", "missing.txt"])
    assert {i.path for i in infos} == {"config.json", "tokenizer"}
    assert api.file_exists("org/model", "config.json")
    assert not api.file_exists("org/model", "nope.json")
    assert api.repo_exists("org/model")
    assert not api.repo_exists("org/nope")
    commits = api.list_repo_commits("org/model")
    assert commits[0].commit_id == sha
    assert len(commits) == 2  # the upload and the initial commit


# ---------------------------------------------------------------------- downloads


def test_hf_hub_download_small_and_lfs(hub: HfHubServer, tmp_path: pathlib.Path) -> None:
    assert _read(hf_hub_download("org/model", "config.json")) == CONFIG
    assert _read(hf_hub_download("org/model", "model.safetensors")) == WEIGHTS
    assert _read(hf_hub_download("org/model", "tokenizer/tokenizer.txt")) == TOKENIZER
    local = hf_hub_download("org/model", "notes.txt", local_dir=tmp_path / "out")
    assert _read(local) == LARGE_TXT

    # HEAD on the hub, then GET: small files from the hub itself, LFS files from the CDN origin.
    resolve = hub.requests_matching("/org/model/resolve/main/model.safetensors")
    assert [(r.method, r.status) for r in resolve] == [("HEAD", 302)]
    cdn = hub.requests_matching("model.safetensors", kind="cdn")
    assert [(r.method, r.status, r.origin) for r in cdn] == [("GET", 200, "cdn")]
    small = hub.requests_matching("/org/model/resolve/main/config.json")
    assert [(r.method, r.status) for r in small] == [("HEAD", 200), ("GET", 200)]
    assert hub.bytes_sent("model.safetensors") == len(WEIGHTS)
    assert hub.bytes_sent("org/model/config.json") == len(CONFIG)
    assert hub.bytes_sent("*.txt") == len(TOKENIZER) + len(LARGE_TXT)
    # Plain HTTP only: nothing Xet was ever asked for.
    assert all("xet" not in r.path for r in hub.requests)


def test_resolve_headers_as_the_hub(hub: HfHubServer) -> None:
    sha = hub.resolve("org/model")
    status, headers = _head(f"{hub.url}/org/model/resolve/main/model.safetensors")
    assert status == 302
    assert headers["X-Repo-Commit"] == sha
    assert headers["X-Linked-Etag"] == f'"{_sha256(WEIGHTS)}"'
    assert headers["X-Linked-Size"] == str(len(WEIGHTS))
    location = headers["Location"]
    assert location.startswith(f"{hub.cdn_url}/cdn/lfs/{_sha256(WEIGHTS)}?")
    assert not any(k.lower().startswith("x-xet") for k in headers)
    assert "Link" not in headers

    status, headers = _head(f"{hub.url}/org/model/resolve/{sha}/config.json")
    assert status == 200
    assert headers["ETag"] == f'"{git_blob_sha1(CONFIG)}"'
    assert headers["X-Repo-Commit"] == sha
    assert headers["Content-Length"] == str(len(CONFIG))

    status, headers = _head(location)
    assert status == 200
    assert headers["ETag"] == f'"{_sha256(WEIGHTS)}"'
    assert headers["Content-Length"] == str(len(WEIGHTS))
    assert 'filename="model.safetensors";' in headers["Content-Disposition"]

    # Range / If-Range on the CDN and on small files.
    req = urllib.request.Request(location, headers={"Range": "bytes=100-199"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes 100-199/{len(WEIGHTS)}"
        assert resp.read() == WEIGHTS[100:200]
    req = urllib.request.Request(
        location, headers={"Range": "bytes=100-", "If-Range": '"something-else"'}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
        assert resp.read() == WEIGHTS
    small_url = f"{hub.url}/org/model/resolve/main/config.json"
    req = urllib.request.Request(
        small_url, headers={"Range": "bytes=-5", "If-Range": f'"{git_blob_sha1(CONFIG)}"'}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 206
        assert resp.read() == CONFIG[-5:]


def test_snapshot_download_with_patterns(hub: HfHubServer, tmp_path: pathlib.Path) -> None:
    everything = snapshot_download("org/model", local_dir=tmp_path / "all")
    assert _files(pathlib.Path(everything)) == {
        "config.json": CONFIG,
        "model.safetensors": WEIGHTS,
        "pytorch_model.bin": BIN,
        "tokenizer/tokenizer.txt": TOKENIZER,
        "notes.txt": LARGE_TXT,
    }
    # snapshot_download: repo info (no blobs), then the tree at the commit, then per file HEAD+GET.
    first = hub.requests[0]
    assert first.path == "/api/models/org/model/revision/main"
    assert "blobs" not in first.query
    tree = hub.requests[1]
    assert tree.path == f"/api/models/org/model/tree/{hub.resolve('org/model')}"
    assert tree.query == {"recursive": "true", "expand": "false"}

    hub.reset_stats()
    only = snapshot_download(
        "org/model",
        local_dir=tmp_path / "some",
        allow_patterns=["*.json", "*.safetensors"],
        cache_dir=tmp_path / "fresh-cache",
    )
    assert set(_files(pathlib.Path(only))) == {"config.json", "model.safetensors"}
    ignored = snapshot_download(
        "org/model",
        local_dir=tmp_path / "ignored",
        ignore_patterns=["*.bin", "tokenizer/*"],
        cache_dir=tmp_path / "fresh-cache-2",
    )
    assert set(_files(pathlib.Path(ignored))) == {
        "config.json",
        "model.safetensors",
        "notes.txt",
    }
    assert hub.bytes_sent("*.bin") == 0
    assert hub.bytes_sent("tokenizer/*") == 0


def test_revisions_branch_tag_commit_and_moved_branch(hub: HfHubServer) -> None:
    v1 = hub.resolve("org/model")
    hub.tag("org/model", "v1", v1)
    v2 = hub.commit("org/model", {"config.json": b'{"v": 2}'}, delete=["notes.txt"])
    assert v2 != v1
    api = HfApi()
    assert api.model_info("org/model").sha == v2  # the branch moved
    assert api.model_info("org/model", revision="v1").sha == v1
    assert api.model_info("org/model", revision=v1).sha == v1
    assert api.model_info("org/model", revision=v1[:10]).sha == v1
    assert _read(hf_hub_download("org/model", "config.json")) == b'{"v": 2}'
    assert _read(hf_hub_download("org/model", "config.json", revision="v1")) == CONFIG
    assert _read(hf_hub_download("org/model", "config.json", revision=v1)) == CONFIG
    # Files not mentioned in a commit are kept; deleted ones are gone.
    assert _read(hf_hub_download("org/model", "model.safetensors", revision=v2)) == WEIGHTS
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("org/model", "notes.txt", revision="main")
    assert _read(hf_hub_download("org/model", "notes.txt", revision="v1")) == LARGE_TXT

    # A revision with "/" is URL-encoded by the client.
    pr = hub.commit("org/model", {"config.json": b"pr"}, branch="refs/pr/1")
    assert api.model_info("org/model", revision="refs/pr/1").sha == pr
    assert _read(hf_hub_download("org/model", "config.json", revision="refs/pr/1")) == b"pr"
    raw = [r.raw_path for r in hub.requests_matching("*config.json", kind="resolve")]
    assert "/org/model/resolve/refs%2Fpr%2F1/config.json" in raw
    refs = api.list_repo_refs("org/model", include_pull_requests=True)
    assert [p.target_commit for p in refs.pull_requests or []] == [pr]

    # Force-moving a branch back.
    hub.set_branch("org/model", "main", v1)
    assert api.model_info("org/model").sha == v1


def test_path_values_are_served_from_disk(hf_endpoint: HfHubServer, tmp_path: pathlib.Path) -> None:  # noqa: F811
    hub = hf_endpoint
    shard = tmp_path / "shard.safetensors"
    shard.write_bytes(os.urandom(300_000))
    small = tmp_path / "small.json"
    small.write_bytes(b'{"x": 1}')
    hub.create_repo("org/disk")
    hub.commit("org/disk", {"model.safetensors": shard, "config.json": small})
    info = HfApi().model_info("org/disk", files_metadata=True)
    sib = {s.rfilename: s for s in info.siblings or []}
    assert sib["model.safetensors"].lfs is not None
    assert sib["model.safetensors"].lfs.sha256 == _sha256(shard.read_bytes())
    assert sib["config.json"].blob_id == git_blob_sha1(b'{"x": 1}')
    assert _read(hf_hub_download("org/disk", "model.safetensors")) == shard.read_bytes()
    assert _read(hf_hub_download("org/disk", "config.json")) == b'{"x": 1}'
    assert hub.bytes_sent("model.safetensors") == 300_000


# ---------------------------------------------------------------------- access and errors


def test_private_repo_with_and_without_token(
    hf_endpoint: HfHubServer,  # noqa: F811
    tmp_path: pathlib.Path,
) -> None:
    hub = hf_endpoint
    hub.cdn_reject_auth = True  # like S3 signed URLs: the client must not send the token there
    hub.create_repo("org/private", private=True)
    hub.commit("org/private", {"config.json": CONFIG, "model.safetensors": WEIGHTS})
    api = HfApi()
    with pytest.raises(RepositoryNotFoundError) as err:
        api.model_info("org/private")
    assert err.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/private", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("org/private", local_dir=tmp_path / "nope")
    # A token the hub never gave out: 401 "Invalid credentials", not RepositoryNotFoundError.
    with pytest.raises(HfHubHTTPError) as bogus:
        api.model_info("org/private", token="hf_bogus")
    assert not isinstance(bogus.value, RepositoryNotFoundError)
    assert bogus.value.response.status_code == 401
    # A valid token without access to this repo: 404 RepoNotFound.
    hub.set_access("org/private", tokens=["hf_owner"])
    with pytest.raises(RepositoryNotFoundError) as err:
        api.model_info("org/private", token=hub.token)
    assert err.value.response.status_code == 404

    hub.reset_stats()
    assert api.model_info("org/private", token="hf_owner").private is True
    path = hf_hub_download("org/private", "model.safetensors", token="hf_owner")
    assert _read(path) == WEIGHTS
    hub_side = [r for r in hub.requests if r.origin == "hub"]
    assert all(r.header("Authorization") == "Bearer hf_owner" for r in hub_side)
    cdn = [r for r in hub.requests if r.kind == "cdn"]
    assert cdn
    assert all(r.header("Authorization") is None for r in cdn)


def test_gated_repo(hf_endpoint: HfHubServer) -> None:  # noqa: F811
    hub = hf_endpoint
    hub.create_repo("org/gated", gated=True)
    hub.commit("org/gated", {"config.json": CONFIG})
    info = HfApi().model_info("org/gated")  # metadata is public, like on the hub
    assert info.gated == "auto"
    with pytest.raises(GatedRepoError) as err:
        hf_hub_download("org/gated", "config.json")
    assert err.value.response.status_code == 401
    hub.set_access("org/gated", tokens=["hf_accepted"])
    with pytest.raises(GatedRepoError) as err:
        hf_hub_download("org/gated", "config.json", token=hub.token)
    assert err.value.response.status_code == 403
    assert err.value.response.headers["X-Error-Code"] == "GatedRepo"
    assert _read(hf_hub_download("org/gated", "config.json", token="hf_accepted")) == CONFIG


def test_not_found_errors(hub: HfHubServer) -> None:
    api = HfApi()
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/missing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/missing", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        api.dataset_info("org/model")  # a model, not a dataset
    with pytest.raises(RevisionNotFoundError):
        api.model_info("org/model", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("org/model", "config.json", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("org/model", "config.json", revision="f" * 40)
    with pytest.raises(RemoteEntryNotFoundError) as err:
        hf_hub_download("org/model", "missing.json")
    assert isinstance(err.value, EntryNotFoundError)
    assert err.value.response.headers["X-Repo-Commit"] == hub.resolve("org/model")
    status, headers = _head(f"{hub.url}/org/missing/resolve/main/x")
    assert (status, headers["X-Error-Code"]) == (401, "RepoNotFound")


def test_dataset_repo(hf_endpoint: HfHubServer, tmp_path: pathlib.Path) -> None:  # noqa: F811
    hub = hf_endpoint
    hub.create_repo("org/data", repo_type="dataset")
    parquet = b"PAR1" + b"\x00" * 100
    sha = hub.commit(
        "org/data",
        {"data/train.parquet": parquet, "README.md": b"# data\n"},
        repo_type="dataset",
    )
    api = HfApi()
    info = api.dataset_info("org/data", files_metadata=True)
    assert info.sha == sha
    sib = {s.rfilename: s for s in info.siblings or []}
    assert sib["data/train.parquet"].lfs is not None  # *.parquet is LFS
    assert sib["README.md"].lfs is None
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/data")
    path = hf_hub_download("org/data", "data/train.parquet", repo_type="dataset")
    assert _read(path) == parquet
    out = snapshot_download("org/data", repo_type="dataset", local_dir=tmp_path / "d")
    assert _files(pathlib.Path(out)) == {"data/train.parquet": parquet, "README.md": b"# data\n"}
    assert hub.requests_matching("/datasets/org/data/resolve/*")
    assert hub.bytes_sent("datasets/org/data/*") == len(parquet) + len(b"# data\n")


# ---------------------------------------------------------------------- faults


def test_429_then_success(hub: HfHubServer) -> None:
    hub.set_fault("config.json", status_sequence=[429], retry_after="0")
    assert _read(hf_hub_download("org/model", "config.json")) == CONFIG
    statuses = [(r.method, r.status) for r in hub.requests_matching("*config.json")]
    assert statuses[0] == ("HEAD", 429)
    assert statuses[1:] == [("HEAD", 200), ("GET", 200)]
    assert hub.requests_matching("*config.json")[0].status == 429


def test_429_on_api_is_not_retried_by_model_info(hub: HfHubServer) -> None:
    hub.set_fault("/api/models/*", status_sequence=[429], retry_after="7")
    with pytest.raises(HfHubHTTPError) as err:
        HfApi().model_info("org/model")
    assert err.value.response.status_code == 429
    assert err.value.response.headers["Retry-After"] == "7"
    assert HfApi().model_info("org/model").sha == hub.resolve("org/model")


def test_cut_and_resume_with_a_plain_client(hub: HfHubServer) -> None:
    hub.set_fault("model.safetensors", cut_after=1000, methods=["GET"])
    url = f"{hub.url}/org/model/resolve/main/model.safetensors"
    with urllib.request.urlopen(url, timeout=10) as resp:  # follows the 302 to the CDN
        assert resp.status == 200
        cdn_url = resp.url
        with pytest.raises(http.client.IncompleteRead) as err:
            resp.read()
    got = err.value.partial
    assert got == WEIGHTS[:1000]
    assert hub.bytes_sent("model.safetensors") == 1000
    assert cdn_url.startswith(hub.cdn_url)
    req = urllib.request.Request(
        cdn_url, headers={"Range": f"bytes={len(got)}-", "If-Range": f'"{_sha256(WEIGHTS)}"'}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 206
        rest = resp.read()
    assert got + rest == WEIGHTS
    assert hub.bytes_sent("model.safetensors") == len(WEIGHTS)


async def test_plain_aiohttp_client_cut_resume_and_no_token_at_cdn(hub: HfHubServer) -> None:
    import aiohttp

    hub.set_fault("model.safetensors", cut_after=4096, methods=["GET"])
    hub.gzip_small_files = True
    url = f"{hub.url}/org/model/resolve/main/model.safetensors"
    headers = {"Authorization": f"Bearer {hub.token}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=headers) as resp:  # 302 followed to the CDN
            assert resp.status == 200
            assert resp.headers["ETag"] == f'"{_sha256(WEIGHTS)}"'
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        async with session.get(url, headers={**headers, "Range": "bytes=4096-"}) as resp:
            assert resp.status == 206
            rest = await resp.read()
        small = f"{hub.url}/org/model/resolve/main/config.json"
        async with session.get(small, headers=headers) as resp:
            assert resp.headers["Content-Encoding"] == "gzip"  # aiohttp decompresses it
            assert "Content-Length" not in resp.headers
            assert await resp.read() == CONFIG
    assert rest == WEIGHTS[4096:]
    assert hub.bytes_sent("model.safetensors") == len(WEIGHTS)
    cdn = hub.requests_matching("model.safetensors", kind="cdn")
    assert len(cdn) == 2
    assert all(r.header("Authorization") is None for r in cdn)  # aiohttp drops it cross-origin


def test_corrupted_bytes_are_visible(hub: HfHubServer) -> None:
    hub.set_fault("config.json", flip_byte=3)
    hub.set_fault("*.safetensors", flip_byte=10_000)
    with urllib.request.urlopen(f"{hub.url}/org/model/resolve/main/config.json") as resp:
        small = resp.read()
    assert len(small) == len(CONFIG)
    assert small != CONFIG
    assert git_blob_sha1(small) != git_blob_sha1(CONFIG)
    # huggingface_hub itself verifies nothing: it stores the corrupted LFS file as is.
    data = _read(hf_hub_download("org/model", "model.safetensors"))
    assert len(data) == len(WEIGHTS)
    assert _sha256(data) != _sha256(WEIGHTS)
    hub.clear_faults()
    with urllib.request.urlopen(f"{hub.url}/org/model/resolve/main/config.json") as resp:
        assert resp.read() == CONFIG


# ---------------------------------------------------------------------- hub variants


def test_cdn_on_the_same_origin_and_small_file_redirects(
    hub: HfHubServer, tmp_path: pathlib.Path
) -> None:
    hub.cdn_mode = "path"
    hub.small_file_redirect = True
    hub.gzip_small_files = True
    out = snapshot_download("org/model", local_dir=tmp_path / "o", token=hub.token)
    assert _files(pathlib.Path(out))["config.json"] == CONFIG
    assert _files(pathlib.Path(out))["model.safetensors"] == WEIGHTS
    # Same origin: the client follows the HEAD redirect and keeps the token.
    cdn = [r for r in hub.requests if r.kind == "cdn"]
    assert {r.origin for r in cdn} == {"hub"}
    assert {r.method for r in cdn} == {"HEAD", "GET"}
    assert all(r.header("Authorization") == f"Bearer {hub.token}" for r in cdn)
    cached = hub.requests_matching("/api/resolve-cache/models/org/model/*config.json")
    assert [r.method for r in cached] == ["HEAD", "GET"]
    assert cached[1].header("Accept-Encoding") is not None
    assert "gzip" in (cached[1].header("Accept-Encoding") or "")


def test_standalone_mode(tmp_path: pathlib.Path) -> None:
    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    (repo / "config.json").write_bytes(CONFIG)
    (repo / "sub" / "model.safetensors").write_bytes(WEIGHTS)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.servers.hfhub",
            "--port",
            "0",
            "--repo-dir",
            str(repo),
            "--repo-id",
            "org/bench",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline().split()
        commit = proc.stdout.readline().split()
        assert ready[0] == "READY"
        assert commit[0] == "COMMIT"
        url = ready[1]
        with urllib.request.urlopen(f"{url}/api/models/org/bench?blobs=true", timeout=10) as r:
            import json

            info = json.load(r)
        assert info["sha"] == commit[1]
        sib = {s["rfilename"]: s for s in info["siblings"]}
        assert sib["sub/model.safetensors"]["lfs"]["sha256"] == _sha256(WEIGHTS)
        assert sib["config.json"]["blobId"] == git_blob_sha1(CONFIG)
        with urllib.request.urlopen(f"{url}/org/bench/resolve/main/sub/model.safetensors") as r:
            assert r.read() == WEIGHTS
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0


def test_server_without_fixture_env_parses_hub_urls() -> None:
    with HfHubServer() as server:
        server.create_repo("solo")  # a one-part repo id, like "gpt2"
        server.commit("solo", {"a.txt": b"a"})
        quoted = urllib.parse.quote("refs/heads/main", safe="")
        with urllib.request.urlopen(f"{server.url}/solo/resolve/{quoted}/a.txt") as resp:
            assert resp.read() == b"a"
        with urllib.request.urlopen(f"{server.url}/api/models/solo/revision/main") as resp:
            assert b'"a.txt"' in resp.read()
