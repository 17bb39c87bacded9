"""A GitHub-compatible server for tests (REST API, release downloads, Git LFS), with fault knobs.

Like ``tests.servers.hfhub`` it runs aiohttp in a daemon thread with its own event loop, on
127.0.0.1 and port 0, and listens on two ports (two origins):

* ``GitHubServer.url`` is both the API host (use it as ``api_url``, like
  ``https://api.github.com``) and the web host (``html_url`` = ``{url}/{owner}/{repo}``, like
  ``https://github.com``: ``browser_download_url`` and the Git LFS endpoint live there);
* ``GitHubServer.cdn_url`` plays ``release-assets.githubusercontent.com`` /
  ``github-cloud.githubusercontent.com`` / ``raw.githubusercontent.com``: the bytes, with
  Range/If-Range (206/416) and the body fault knobs of ``tests.servers.body``. Its URLs are
  signed (``se`` = expiry epoch, ``sig``) and expire after ``cdn_url_ttl`` seconds, like the
  real signed URLs: a client must not hand it the GitHub token (the log shows it if it does).

Typical use::

    def test_release(github: GitHubServer) -> None:
        rel = github.add_release("org", "models", "v1", {"model.gguf": b"x" * 1000})
        sha = github.add_commit("org", "models", ["main"], {"a.txt": b"hi", "w.bin": b"..."},
                                lfs={"w.bin"})
        api = github.url                     # GITHUB_API_URL
        ...
        assert github.bytes_sent("model.gguf") == 1000
        assert all(r.header("Authorization") is None for r in github.requests_matching(
            origin="cdn"))

Standalone (benchmarks)::

    python -m tests.servers.github --port 0 --repo org/name --release-dir DIR --tag v1 \\
        [--commit-dir DIR --ref main --lfs '*.bin'] [--private]
    # prints "READY http://127.0.0.1:<port>", "CDN <cdn url>", "TOKEN <token>"
    # (and "COMMIT <sha>" with --commit-dir), then serves until killed.

Routes on ``url`` (owner and repo names are case-insensitive, as on GitHub). JSON errors are
``{"message": ..., "documentation_url": ..., "status": "<code>"}``.

* ``GET /repos/{o}/{r}``: ``id``, ``name``, ``full_name``, ``owner.login``, ``private``,
  ``visibility``, ``html_url``, ``url``, ``default_branch`` ...
* ``GET /repos/{o}/{r}/releases`` (``per_page``/``page``, ``Link`` rel="next"),
  ``/releases/latest``, ``/releases/tags/{tag}``, ``/releases/{id}``: release objects
  (``id``, ``tag_name``, ``name``, ``draft``, ``prerelease``, ``assets`` ...); each asset has
  ``id``, ``name``, ``size``, ``content_type``, ``state``, ``digest`` (``"sha256:<hex>"`` or
  null), ``url`` (``{url}/repos/{o}/{r}/releases/assets/{id}``) and ``browser_download_url``
  (``{url}/{o}/{r}/releases/download/{tag}/{name}``).
* ``GET /repos/{o}/{r}/releases/assets/{id}``: the asset object, or with
  ``Accept: application/octet-stream`` a ``302`` to the signed CDN URL.
* ``GET /{o}/{r}/releases/download/{tag}/{name}``: ``302`` to the CDN (public repos only: like
  github.com this web URL does not take API tokens, a private repo's asset is ``404`` here).
* ``GET /repos/{o}/{r}/commits/{ref}``: ref = branch, tag, ``heads/X``/``tags/X``/
  ``refs/heads/X``/``refs/tags/X``, full or abbreviated (>= 4 hex, unique) sha. A commit object
  (``sha``, ``commit.tree.sha``, ``commit.message``, ``parents`` ...), or with
  ``Accept: application/vnd.github.sha`` the bare sha as text. Unknown ref: ``422``
  ``No commit found for SHA: <ref>``; a repo without commits: ``409`` ``Git Repository is
  empty.``
* ``GET /repos/{o}/{r}/git/trees/{sha}[?recursive=1]``: sha = a tree (root or sub-tree), a
  commit or a ref. ``{"sha", "url", "truncated": false, "tree": [{"path", "mode", "type":
  "blob"|"tree", "sha", "size" (blobs only), "url"}]}`` in git order (pre-order with
  ``recursive``; any value of ``recursive`` turns it on, as on GitHub). Blob shas are git blob
  ids of the stored blob (the pointer for LFS files, ``size`` = pointer size).
* ``GET /repos/{o}/{r}/git/blobs/{sha}``: ``{"sha", "size", "content" (base64), "encoding"}``
  or the raw bytes with ``Accept: application/vnd.github.raw``.
* ``GET /repos/{o}/{r}/contents/{path}?ref={ref}`` (default: default branch): with
  ``Accept: application/vnd.github.raw`` (also ``.raw+json``, ``.v3.raw``) the raw blob bytes
  (for LFS files the pointer text), ``ETag: "<blob sha>"``; otherwise the content object
  (``type: file``, base64 ``content``, ``sha``, ``download_url`` on the CDN) or, for a
  directory, the list of entries. Unknown path ``404`` ``Not Found``; unknown ref ``404``
  ``No commit found for the ref <ref>``.
* ``POST /{o}/{r}.git/info/lfs/objects/batch`` (needs ``Accept: application/vnd.git-lfs+json``,
  else ``406``; operation ``download``): ``{"transfer": "basic", "objects": [{"oid", "size",
  "authenticated": true, "actions": {"download": {"href", "header", "expires_in",
  "expires_at"}}}]}``; unknown oid: ``{"oid", "size", "error": {"code": 404, "message":
  "Object does not exist"}}``. ``lfs_header_auth`` (default True): the href is signed through
  ``header: {"Authorization": "RemoteAuth <sig>"}``, which the client must send to the CDN;
  False: the signature is in the href's query and ``header`` is absent.

Auth: ``Authorization: Bearer <token>``, ``token <token>`` or ``Basic`` with the token as
password. Private repos are ``404`` without the token (LFS batch: ``401`` with
``LFS-Authenticate``); any other token is ``401`` ``Bad credentials`` on API routes. API
responses carry ``X-RateLimit-Limit/Remaining/Reset/Used/Resource`` and a weak ``ETag``
(``If-None-Match`` gives ``304``). ``rate_limit(n, mode, reset_in)`` makes the next n API
requests (``/repos/...`` only) fail: ``"403"``: primary limit (``X-RateLimit-Remaining: 0``,
``X-RateLimit-Reset``), ``"429"``: secondary limit with ``Retry-After``, ``"403-secondary"``:
the same with status 403 (GitHub uses both).

Faults (``set_fault(glob, **knobs)``, the ``FileServer`` knobs plus ``methods``): the glob
(fnmatch, ``*`` crosses ``/``) is matched against the request path and, for byte-carrying
requests, against the asset name, ``{o}/{r}/{tag}/{name}``, the file path in the repo,
``{o}/{r}/{path}`` and the LFS oid. Early knobs (``require_auth``, ``status_sequence``,
``redirect_to``) act on any route; body knobs on CDN bytes and raw contents/blobs.
"""

from __future__ import annotations

import argparse
import base64
import collections
import dataclasses
import datetime
import fnmatch
import hashlib
import hmac
import json
import logging
import math
import mimetypes
import pathlib
import re
import secrets
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, Literal

import pytest
from aiohttp import web

from tests.servers.body import ALWAYS, Blob, BodyServer, Faults, RequestRecord, http_date
from tests.servers.threaded import exit_on_sigterm

__all__ = [
    "ALWAYS",
    "DEFAULT_TOKEN",
    "GitHubFaults",
    "GitHubRequestRecord",
    "GitHubServer",
    "git_blob_sha1",
    "github",
    "lfs_pointer",
    "main",
]

log = logging.getLogger(__name__)

DEFAULT_TOKEN = "ghp_mmdtesttoken0123456789abcdefghijklmn"
HASH_CHUNK = 8 * 1024 * 1024
_EPOCH = 1_704_067_200  # 2024-01-01T00:00:00Z: dates are _EPOCH + a counter
_AUTHOR = {"name": "GitHub Test", "email": "test@github.invalid"}
_DOCS = "https://docs.github.com/rest"
_RAW_ACCEPT = re.compile(r"application/vnd\.github(?:\.v3)?\.raw(?:\+json)?\b")
_LFS_MEDIA = "application/vnd.git-lfs+json"
_SHA_ACCEPT = "application/vnd.github.sha"
RateLimitMode = Literal["403", "429", "403-secondary"]


# ---------------------------------------------------------------------- git helpers


def git_blob_sha1(data: bytes) -> str:
    """The git blob id of ``data``: ``sha1(b"blob <size>\\0" + data)``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The Git LFS pointer file stored in git for an LFS file."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _hash_file(file: pathlib.Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with file.open("rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _parent_dirs(path: str) -> Iterator[str]:
    parts = path.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


def _git_sort_key(name: str, is_dir: bool) -> bytes:
    return (name + "/" if is_dir else name).encode()


def _check_repo_path(path: str) -> str:
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or "\0" in path
        or any(part in ("", ".", "..") for part in path.split("/"))
    ):
        raise ValueError(f"invalid path in repo: {path!r}")
    return path


# ---------------------------------------------------------------------- data model


@dataclasses.dataclass
class GitHubRequestRecord(RequestRecord):
    """A ``RequestRecord`` plus where it arrived and what it was.

    ``origin`` is ``api`` (the API/web port) or ``cdn``; ``kind`` one of ``api`` (``/repos/...``),
    ``web`` (``browser_download_url``), ``lfs`` (batch), ``cdn-asset``, ``cdn-lfs``,
    ``cdn-raw``, ``other``; ``key`` names the bytes served (see ``bytes_sent``).
    """

    origin: str = "api"
    kind: str = "other"
    query: dict[str, str] = dataclasses.field(default_factory=dict)
    raw_path: str = ""
    key: str | None = None


@dataclasses.dataclass
class GitHubFaults(Faults):
    """``FileServer`` fault knobs plus ``methods`` (only these HTTP methods are affected)."""

    methods: list[str] | None = None


@dataclasses.dataclass
class _Asset:
    id: int
    name: str
    size: int
    sha256: str
    digest: bool
    content_type: str
    created_at: str
    last_modified: str
    owner: str
    repo: str
    tag: str
    data: bytes | None = dataclasses.field(default=None, repr=False)
    file: pathlib.Path | None = None
    download_count: int = 0

    @property
    def etag(self) -> str:
        return '"0x8D' + self.sha256[:13].upper() + '"'


@dataclasses.dataclass
class _Release:
    id: int
    tag: str
    assets: list[_Asset]
    prerelease: bool
    created_at: str
    target_commitish: str
    seq: int


@dataclasses.dataclass(frozen=True)
class _GitBlob:
    """A stored git blob: the content, or for LFS files the pointer (+ the LFS object)."""

    data: bytes = dataclasses.field(repr=False)
    sha: str
    lfs_oid: str | None = None
    lfs_size: int = 0


@dataclasses.dataclass
class _LfsObject:
    oid: str
    size: int
    last_modified: str
    data: bytes | None = dataclasses.field(default=None, repr=False)
    file: pathlib.Path | None = None


@dataclasses.dataclass(frozen=True)
class _Commit:
    sha: str
    tree: str
    parent: str | None
    files: Mapping[str, _GitBlob]
    trees: Mapping[str, str]  # directory ("" = root) -> tree sha
    message: str
    date: str


@dataclasses.dataclass
class _Repo:
    id: int
    owner: str
    name: str
    private: bool
    default_branch: str
    created_at: str
    refs: dict[str, str] = dataclasses.field(default_factory=dict)  # branch/tag -> sha
    tag_names: set[str] = dataclasses.field(default_factory=set)
    commits: dict[str, _Commit] = dataclasses.field(default_factory=dict)
    trees: dict[str, tuple[_Commit, str]] = dataclasses.field(default_factory=dict)
    releases: dict[str, _Release] = dataclasses.field(default_factory=dict)
    latest_tag: str | None = None
    lfs: dict[str, _LfsObject] = dataclasses.field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


@dataclasses.dataclass
class _Ctx:
    request: web.Request
    record: GitHubRequestRecord
    faults: GitHubFaults | None
    auth: Literal["none", "ok", "bad"]
    headers: dict[str, str]  # extra response headers (API: rate limit ...)


_Runner = Callable[[_Ctx], Awaitable[web.StreamResponse]]


@dataclasses.dataclass
class _Route:
    kind: str
    names: list[str]
    run: _Runner
    key: str | None = None


# ---------------------------------------------------------------------- the server


class GitHubServer(BodyServer):
    """Threaded aiohttp GitHub-compatible server with fault knobs. See the module docstring."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cdn_port: int = 0,
        token: str = DEFAULT_TOKEN,
        cdn_url_ttl: float = 300.0,
        lfs_header_auth: bool = True,
        cdn_reject_auth: bool = False,
    ) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self.cdn_port = cdn_port
        self.url = ""
        self.cdn_url = ""
        #: The one token with access to private repos (any other token: 401 Bad credentials).
        self.token = token
        #: Lifetime of the signed CDN URLs handed out (302 Location, LFS hrefs), in seconds.
        self.cdn_url_ttl = cdn_url_ttl
        #: LFS hrefs are signed through an ``Authorization: RemoteAuth`` action header (True)
        #: or a ``sig`` query parameter (False).
        self.lfs_header_auth = lfs_header_auth
        #: The CDN answers 400 to requests carrying another ``Authorization`` than RemoteAuth
        #: (as S3/Azure signed URLs do).
        self.cdn_reject_auth = cdn_reject_auth
        self.requests: list[GitHubRequestRecord] = []
        self._secret = secrets.token_bytes(16)
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._faults: list[tuple[str, GitHubFaults]] = []
        self._key_names: dict[str, tuple[str, ...]] = {}
        self._ids = 1000
        self._clock = 0
        self._limited = 0
        self._limit_mode: RateLimitMode = "403"
        self._limit_reset = 0.0
        self._used = {"ok": 0, "none": 0}
        self._window_reset = int(time.time()) + 3600

    # ------------------------------------------------------------------ lifecycle

    async def _setup(self) -> None:
        ports = await self._serve_app(self._handle, self.host, self.port, self.cdn_port)
        self.port, self.cdn_port = ports
        self.url = f"http://{self.host}:{self.port}"
        self.cdn_url = f"http://{self.host}:{self.cdn_port}"

    # ------------------------------------------------------------------ content

    def add_repo(
        self, owner: str, repo: str, *, private: bool = False, default_branch: str = "main"
    ) -> None:
        """Create ``owner/repo`` (no commit, no release) if it does not exist yet."""
        self._ensure_repo(owner, repo, private=private, default_branch=default_branch)

    def set_private(self, owner: str, repo: str, private: bool = True) -> None:
        r = self._ensure_repo(owner, repo)
        with self._lock:
            r.private = private

    def add_release(
        self,
        owner: str,
        repo: str,
        tag: str,
        assets: Mapping[str, bytes | pathlib.Path],
        *,
        digest: bool = True,
        latest: bool = False,
        private: bool = False,
        prerelease: bool = False,
    ) -> dict[str, Any]:
        """Publish a release of ``tag`` with ``assets`` (name -> bytes, or a file served from
        disk); returns its JSON as the API shows it.

        The repo is created if needed; ``private=True`` makes it private. ``digest=False``:
        the assets' ``digest`` is null (assets uploaded before GitHub computed digests).
        ``latest=True`` pins ``/releases/latest`` to it; otherwise that is the most recently
        added non-prerelease. Adding a tag again replaces that release (new asset ids). No git
        ref is created for ``tag``.
        """
        r = self._ensure_repo(owner, repo, private=private)
        now = http_date(time.time())
        stored: list[_Asset] = []
        for name, value in assets.items():
            if not name or "/" in name:
                raise ValueError(f"invalid asset name: {name!r}")
            if isinstance(value, pathlib.Path):
                size, sha256 = _hash_file(value)
                data, file = None, value.resolve()
            else:
                data, file = bytes(value), None
                size, sha256 = len(data), hashlib.sha256(data).hexdigest()
            content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
            with self._lock:
                asset_id = self._next_id()
                created = _iso(self._tick())
            stored.append(
                _Asset(
                    id=asset_id,
                    name=name,
                    size=size,
                    sha256=sha256,
                    digest=digest,
                    content_type=content_type,
                    created_at=created,
                    last_modified=now,
                    owner=r.owner,
                    repo=r.name,
                    tag=tag,
                    data=data,
                    file=file,
                )
            )
        with self._lock:
            ts = self._tick()
            release = _Release(
                id=self._next_id(),
                tag=tag,
                assets=stored,
                prerelease=prerelease,
                created_at=_iso(ts),
                target_commitish=r.default_branch,
                seq=ts,
            )
            r.releases[tag] = release
            if latest:
                r.latest_tag = tag
            elif r.latest_tag == tag:
                r.latest_tag = None
        return self._release_json(r, release)

    def add_commit(
        self,
        owner: str,
        repo: str,
        refs: Iterable[str],
        files: Mapping[str, bytes | pathlib.Path],
        lfs: Iterable[str] = (),
        *,
        message: str = "",
    ) -> str:
        """Commit the tree ``files`` (the whole tree, not a change) and point ``refs`` at it;
        returns the commit sha (40 hex, a real git commit id over real git tree ids).

        ``refs`` are branch or tag names (``refs/tags/X`` marks a tag, ``refs/heads/X`` or a
        bare name a branch; both resolve by bare name). Paths in ``lfs`` are stored as Git LFS
        pointer blobs, their content served through the LFS batch API and the CDN
        (``pathlib.Path`` values of LFS files are served from disk). The parent is the commit
        the first ref pointed at, if any. The repo is created if needed.
        """
        r = self._ensure_repo(owner, repo)
        lfs_paths = set(lfs)
        unknown = lfs_paths - set(files)
        if unknown:
            raise ValueError(f"lfs paths not in files: {sorted(unknown)}")
        now = http_date(time.time())
        blobs: dict[str, _GitBlob] = {}
        objects: list[_LfsObject] = []
        for path, value in files.items():
            _check_repo_path(path)
            if path in lfs_paths:
                if isinstance(value, pathlib.Path):
                    size, oid = _hash_file(value)
                    obj = _LfsObject(oid, size, now, file=value.resolve())
                else:
                    data = bytes(value)
                    oid = hashlib.sha256(data).hexdigest()
                    obj = _LfsObject(oid, len(data), now, data=data)
                pointer = lfs_pointer(obj.oid, obj.size)
                blobs[path] = _GitBlob(pointer, git_blob_sha1(pointer), obj.oid, obj.size)
                objects.append(obj)
            else:
                data = value.read_bytes() if isinstance(value, pathlib.Path) else bytes(value)
                blobs[path] = _GitBlob(data, git_blob_sha1(data))
        names = [self._ref_name(ref) for ref in refs]
        if not names:
            raise ValueError("add_commit needs at least one ref")
        with self._lock:
            parent = r.refs.get(names[0][0])
            commit = self._make_commit(blobs, parent, message or f"Commit {len(r.commits) + 1}")
            r.commits[commit.sha] = commit
            for directory, tree_sha in commit.trees.items():
                r.trees.setdefault(tree_sha, (commit, directory))
            for name, is_tag in names:
                r.refs[name] = commit.sha
                if is_tag:
                    r.tag_names.add(name)
                else:
                    r.tag_names.discard(name)
            for obj in objects:
                r.lfs.setdefault(obj.oid, obj)
        return commit.sha

    def set_ref(self, owner: str, repo: str, ref: str, commit: str) -> None:
        """Point branch/tag ``ref`` at ``commit`` (any ref or sha the API resolves)."""
        r = self._get_repo(owner, repo)
        name, is_tag = self._ref_name(ref)
        with self._lock:
            found = self._resolve(r, commit)
            if found is None:
                raise KeyError(f"{r.full_name}: unknown commit {commit!r}")
            r.refs[name] = found.sha
            if is_tag:
                r.tag_names.add(name)

    def resolve(self, owner: str, repo: str, ref: str) -> str:
        """The commit sha ``ref`` resolves to (KeyError if none)."""
        r = self._get_repo(owner, repo)
        with self._lock:
            found = self._resolve(r, ref)
        if found is None:
            raise KeyError(f"{r.full_name}: unknown ref {ref!r}")
        return found.sha

    def asset_id(self, owner: str, repo: str, tag: str, name: str) -> int:
        return self._get_asset(owner, repo, tag, name).id

    def asset_api_url(self, owner: str, repo: str, tag: str, name: str) -> str:
        """The asset's ``url`` (API; ``Accept: application/octet-stream`` for the bytes)."""
        a = self._get_asset(owner, repo, tag, name)
        return f"{self.url}/repos/{a.owner}/{a.repo}/releases/assets/{a.id}"

    def browser_download_url(self, owner: str, repo: str, tag: str, name: str) -> str:
        a = self._get_asset(owner, repo, tag, name)
        return self._browser_url(a)

    # ------------------------------------------------------------------ knobs / stats

    def rate_limit(self, n: int, mode: RateLimitMode = "403", reset_in: float = 1.0) -> None:
        """Make the next ``n`` API requests (``/repos/...``) fail with a rate-limit answer.

        ``"403"``: 403 ``API rate limit exceeded ...``, ``X-RateLimit-Remaining: 0`` and
        ``X-RateLimit-Reset`` = ceil(now + reset_in) (epoch seconds). ``"429"``: 429
        ``You have exceeded a secondary rate limit ...`` with ``Retry-After: ceil(reset_in)``.
        ``"403-secondary"``: the same with status 403.
        """
        if mode not in ("403", "429", "403-secondary"):
            raise ValueError(f"unknown rate limit mode: {mode!r}")
        with self._lock:
            self._limited = n
            self._limit_mode = mode
            self._limit_reset = time.time() + reset_in

    def set_fault(self, glob: str, **knobs: Any) -> None:
        """Set fault knobs for ``glob`` (replacing those of the same glob); see the module
        docstring for what it is matched against. Unknown knob: TypeError."""
        faults = GitHubFaults(**knobs)
        with self._lock:
            self._faults = [(g, f) for g, f in self._faults if g != glob]
            self._faults.append((glob, faults))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def bytes_sent(self, glob: str = "*") -> int:
        """Body bytes sent (CDN and raw contents/blobs) for keys or names matching ``glob``.

        Keys: ``{o}/{r}/releases/download/{tag}/{name}`` (assets), ``{o}/{r}/lfs/{oid}`` (LFS
        objects), ``{o}/{r}/raw/{path}`` (contents, blobs, raw CDN); names: the asset name,
        the path in the repo, the oid. Same accuracy as ``FileServer.bytes_sent``.
        """
        with self._lock:
            items = list(self._bytes.items())
            names = dict(self._key_names)
        return sum(
            count
            for key, count in items
            if any(fnmatch.fnmatchcase(n, glob) for n in (key, *names.get(key, ())))
        )

    def requests_matching(
        self,
        glob: str = "*",
        *,
        origin: str | None = None,
        kind: str | None = None,
        method: str | None = None,
    ) -> list[GitHubRequestRecord]:
        """Logged requests whose path or body key (or one of its names) matches ``glob``."""
        with self._lock:
            records = list(self.requests)
            names = dict(self._key_names)
        return [
            r
            for r in records
            if (origin is None or r.origin == origin)
            and (kind is None or r.kind == kind)
            and (method is None or r.method == method.upper())
            and any(
                fnmatch.fnmatchcase(n, glob)
                for n in (r.path, *((r.key, *names.get(r.key, ())) if r.key else ()))
            )
        ]

    def count(
        self,
        glob: str = "*",
        *,
        origin: str | None = None,
        kind: str | None = None,
        method: str | None = None,
    ) -> int:
        """``len(requests_matching(...))``."""
        return len(self.requests_matching(glob, origin=origin, kind=kind, method=method))

    def reset_stats(self) -> None:
        with self._lock:
            self.requests.clear()
            self._bytes.clear()

    # ------------------------------------------------------------------ internals: state

    def _next_id(self) -> int:
        with self._lock:
            self._ids += 1
            return self._ids

    def _tick(self) -> int:
        with self._lock:
            self._clock += 1
            return _EPOCH + self._clock

    def _ensure_repo(
        self, owner: str, repo: str, *, private: bool = False, default_branch: str = "main"
    ) -> _Repo:
        if not owner or not repo or "/" in owner + repo or repo.endswith(".git"):
            raise ValueError(f"invalid repo: {owner!r}/{repo!r}")
        key = (owner.lower(), repo.lower())
        with self._lock:
            r = self._repos.get(key)
            if r is None:
                r = _Repo(
                    id=self._next_id(),
                    owner=owner,
                    name=repo,
                    private=private,
                    default_branch=default_branch,
                    created_at=_iso(self._tick()),
                )
                self._repos[key] = r
            elif private:
                r.private = True
            return r

    def _get_repo(self, owner: str, repo: str) -> _Repo:
        with self._lock:
            r = self._repos.get((owner.lower(), repo.lower()))
        if r is None:
            raise KeyError(f"no repo {owner}/{repo}")
        return r

    def _get_asset(self, owner: str, repo: str, tag: str, name: str) -> _Asset:
        r = self._get_repo(owner, repo)
        with self._lock:
            release = r.releases.get(tag)
            found = [a for a in release.assets if a.name == name] if release else []
        if not found:
            raise KeyError(f"{r.full_name}: no asset {name!r} in release {tag!r}")
        return found[0]

    @staticmethod
    def _ref_name(ref: str) -> tuple[str, bool]:
        if ref.startswith("refs/tags/"):
            return ref[len("refs/tags/") :], True
        if ref.startswith("refs/heads/"):
            return ref[len("refs/heads/") :], False
        if not ref:
            raise ValueError("empty ref")
        return ref, False

    def _make_commit(
        self, files: Mapping[str, _GitBlob], parent: str | None, message: str
    ) -> _Commit:
        trees = _git_trees({p: b.sha for p, b in files.items()})
        ts = self._tick()
        text = f"tree {trees['']}\n"
        if parent:
            text += f"parent {parent}\n"
        person = f"{_AUTHOR['name']} <{_AUTHOR['email']}> {ts} +0000"
        text += f"author {person}\ncommitter {person}\n\n{message}\n"
        raw = text.encode()
        sha = hashlib.sha1(b"commit %d\0" % len(raw) + raw).hexdigest()
        return _Commit(
            sha=sha,
            tree=trees[""],
            parent=parent,
            files=dict(sorted(files.items())),
            trees=trees,
            message=message,
            date=_iso(ts),
        )

    @staticmethod
    def _resolve(r: _Repo, ref: str) -> _Commit | None:
        """Branch/tag (also ``heads/X``, ``tags/X``, ``refs/...``) or full/short (>= 4) sha."""
        for prefix in ("", "refs/heads/", "refs/tags/", "heads/", "tags/"):
            if ref.startswith(prefix) and ref[len(prefix) :] in r.refs:
                return r.commits[r.refs[ref[len(prefix) :]]]
        low = ref.lower()
        if low in r.commits:
            return r.commits[low]
        if 4 <= len(low) < 40 and all(c in "0123456789abcdef" for c in low):
            found = [c for sha, c in r.commits.items() if sha.startswith(low)]
            if len(found) == 1:
                return found[0]
        return None

    def _latest(self, r: _Repo) -> _Release | None:
        if r.latest_tag is not None and r.latest_tag in r.releases:
            return r.releases[r.latest_tag]
        candidates = [rel for rel in r.releases.values() if not rel.prerelease]
        return max(candidates, key=lambda rel: rel.seq) if candidates else None

    # ------------------------------------------------------------------ internals: JSON shapes

    def _user_json(self, login: str) -> dict[str, Any]:
        uid = int(hashlib.sha1(login.lower().encode()).hexdigest()[:6], 16)
        return {
            "login": login,
            "id": uid,
            "node_id": base64.b64encode(f"04:User{uid}".encode()).decode(),
            "url": f"{self.url}/users/{login}",
            "html_url": f"{self.url}/{login}",
            "type": "User",
            "site_admin": False,
        }

    def _repo_json(self, r: _Repo) -> dict[str, Any]:
        api = f"{self.url}/repos/{r.full_name}"
        return {
            "id": r.id,
            "node_id": base64.b64encode(f"010:Repository{r.id}".encode()).decode(),
            "name": r.name,
            "full_name": r.full_name,
            "private": r.private,
            "visibility": "private" if r.private else "public",
            "owner": self._user_json(r.owner),
            "html_url": f"{self.url}/{r.full_name}",
            "description": None,
            "fork": False,
            "url": api,
            "releases_url": api + "/releases{/id}",
            "git_url": f"git://{self.host}:{self.port}/{r.full_name}.git",
            "clone_url": f"{self.url}/{r.full_name}.git",
            "created_at": r.created_at,
            "updated_at": r.created_at,
            "pushed_at": r.created_at,
            "size": 0,
            "archived": False,
            "disabled": False,
            "default_branch": r.default_branch,
        }

    def _browser_url(self, a: _Asset) -> str:
        tag = urllib.parse.quote(a.tag, safe="")
        return f"{self.url}/{a.owner}/{a.repo}/releases/download/{tag}/" + urllib.parse.quote(
            a.name
        )

    def _asset_json(self, a: _Asset) -> dict[str, Any]:
        return {
            "url": f"{self.url}/repos/{a.owner}/{a.repo}/releases/assets/{a.id}",
            "id": a.id,
            "node_id": base64.b64encode(f"RA_{a.id}".encode()).decode(),
            "name": a.name,
            "label": "",
            "uploader": self._user_json(a.owner),
            "content_type": a.content_type,
            "state": "uploaded",
            "size": a.size,
            "digest": f"sha256:{a.sha256}" if a.digest else None,
            "download_count": a.download_count,
            "created_at": a.created_at,
            "updated_at": a.created_at,
            "browser_download_url": self._browser_url(a),
        }

    def _release_json(self, r: _Repo, rel: _Release) -> dict[str, Any]:
        api = f"{self.url}/repos/{r.full_name}/releases/{rel.id}"
        tag = urllib.parse.quote(rel.tag, safe="")
        return {
            "url": api,
            "assets_url": api + "/assets",
            "upload_url": f"{self.url}/repos/{r.full_name}/releases/{rel.id}/assets"
            + "{?name,label}",
            "html_url": f"{self.url}/{r.full_name}/releases/tag/{tag}",
            "id": rel.id,
            "author": self._user_json(r.owner),
            "node_id": base64.b64encode(f"RE_{rel.id}".encode()).decode(),
            "tag_name": rel.tag,
            "target_commitish": rel.target_commitish,
            "name": rel.tag,
            "draft": False,
            "immutable": False,
            "prerelease": rel.prerelease,
            "created_at": rel.created_at,
            "published_at": rel.created_at,
            "assets": [self._asset_json(a) for a in rel.assets],
            "tarball_url": f"{self.url}/repos/{r.full_name}/tarball/{tag}",
            "zipball_url": f"{self.url}/repos/{r.full_name}/zipball/{tag}",
            "body": "",
        }

    def _commit_json(self, r: _Repo, c: _Commit) -> dict[str, Any]:
        api = f"{self.url}/repos/{r.full_name}"
        person = {**_AUTHOR, "date": c.date}
        parents = [c.parent] if c.parent else []
        return {
            "sha": c.sha,
            "node_id": base64.b64encode(f"C_{c.sha}".encode()).decode(),
            "commit": {
                "author": person,
                "committer": person,
                "message": c.message,
                "tree": {"sha": c.tree, "url": f"{api}/git/trees/{c.tree}"},
                "url": f"{api}/git/commits/{c.sha}",
                "comment_count": 0,
                "verification": {"verified": False, "reason": "unsigned", "signature": None},
            },
            "url": f"{api}/commits/{c.sha}",
            "html_url": f"{self.url}/{r.full_name}/commit/{c.sha}",
            "author": None,
            "committer": None,
            "parents": [
                {
                    "sha": p,
                    "url": f"{api}/commits/{p}",
                    "html_url": f"{self.url}/{r.full_name}/commit/{p}",
                }
                for p in parents
            ],
            "stats": {"total": 0, "additions": 0, "deletions": 0},
            "files": [],
        }

    def _tree_entries(
        self, r: _Repo, commit: _Commit, directory: str, recursive: bool
    ) -> list[dict[str, Any]]:
        api = f"{self.url}/repos/{r.full_name}/git"
        children: dict[str, list[tuple[str, bool]]] = collections.defaultdict(list)
        for d in commit.trees:
            if d:
                parent, _, name = d.rpartition("/")
                children[parent].append((name, True))
        for path in commit.files:
            parent, _, name = path.rpartition("/")
            children[parent].append((name, False))
        base = directory + "/" if directory else ""
        out: list[dict[str, Any]] = []

        def walk(d: str) -> None:
            for name, is_dir in sorted(children[d], key=lambda e: _git_sort_key(*e)):
                full = f"{d}/{name}" if d else name
                rel = full[len(base) :]
                if is_dir:
                    sha = commit.trees[full]
                    out.append(
                        {
                            "path": rel,
                            "mode": "040000",
                            "type": "tree",
                            "sha": sha,
                            "url": f"{api}/trees/{sha}",
                        }
                    )
                    if recursive:
                        walk(full)
                else:
                    blob = commit.files[full]
                    out.append(
                        {
                            "path": rel,
                            "mode": "100644",
                            "type": "blob",
                            "sha": blob.sha,
                            "size": len(blob.data),
                            "url": f"{api}/blobs/{blob.sha}",
                        }
                    )

        walk(directory)
        return out

    def _content_json(
        self, r: _Repo, commit: _Commit, ref: str, path: str, *, content: bool
    ) -> dict[str, Any]:
        api = f"{self.url}/repos/{r.full_name}"
        quoted = urllib.parse.quote(path)
        is_dir = path in commit.trees
        sha = commit.trees[path] if is_dir else commit.files[path].sha
        git_url = f"{api}/git/{'trees' if is_dir else 'blobs'}/{sha}"
        html_url = f"{self.url}/{r.full_name}/{'tree' if is_dir else 'blob'}/{ref}/{quoted}"
        self_url = f"{api}/contents/{quoted}?ref={urllib.parse.quote(ref, safe='')}"
        data: dict[str, Any] = {
            "type": "dir" if is_dir else "file",
            "size": 0 if is_dir else len(commit.files[path].data),
            "name": path.rsplit("/", 1)[-1],
            "path": path,
            "sha": sha,
            "url": self_url,
            "git_url": git_url,
            "html_url": html_url,
            "download_url": None if is_dir else self._raw_url(r, ref, path),
            "_links": {"self": self_url, "git": git_url, "html": html_url},
        }
        if content and not is_dir:
            encoded = base64.b64encode(commit.files[path].data).decode()
            data["encoding"] = "base64"
            data["content"] = "".join(
                encoded[i : i + 60] + "\n" for i in range(0, len(encoded), 60)
            )
        return data

    # ------------------------------------------------------------------ internals: signing

    def _sign(self, path: str, expires: int) -> str:
        msg = f"{path}\n{expires}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()[:40]

    def _signed(self, path: str, extra: Mapping[str, str] | None = None) -> str:
        expires = math.ceil(time.time() + self.cdn_url_ttl)
        query = {"se": str(expires), "sig": self._sign(path, expires), **(extra or {})}
        return f"{self.cdn_url}{path}?{urllib.parse.urlencode(query)}"

    def _cdn_asset_url(self, r: _Repo, a: _Asset) -> str:
        path = f"/github-production-release-asset/{r.id}/{a.id}"
        return self._signed(
            path,
            {
                "rscd": f"attachment; filename={a.name}",
                "rsct": "application/octet-stream",
            },
        )

    def _raw_url(self, r: _Repo, ref: str, path: str) -> str:
        url = f"{self.cdn_url}/raw/{r.full_name}/{urllib.parse.quote(ref)}/"
        url += urllib.parse.quote(path)
        if r.private:
            url += "?token=" + self._sign(f"/raw/{r.full_name}", 0)
        return url

    def _check_signature(self, request: web.Request, path: str) -> str | None:
        """None if the CDN request is correctly signed and not expired, else the reason."""
        query = request.query
        sig = query.get("sig")
        auth = request.headers.get("Authorization", "")
        if sig is None and auth.startswith("RemoteAuth "):
            sig = auth[len("RemoteAuth ") :].strip()
        try:
            expires = int(query.get("se", ""))
        except ValueError:
            return "Signature fields not well formed."
        if sig is None or not hmac.compare_digest(sig, self._sign(path, expires)):
            return "Signature did not match."
        if time.time() > expires:
            return "Signed expiry time has passed."
        return None

    # ------------------------------------------------------------------ internals: dispatch

    @staticmethod
    def _token(request: web.Request) -> str | None:
        value = request.headers.get("Authorization")
        if value is None:
            return None
        scheme, _, cred = value.strip().partition(" ")
        if scheme.lower() in ("bearer", "token"):
            return cred.strip()
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(cred.strip(), validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                return ""
            return decoded.partition(":")[2]
        return value.strip()

    def _auth_state(self, request: web.Request) -> Literal["none", "ok", "bad"]:
        token = self._token(request)
        if token is None:
            return "none"
        return "ok" if token and hmac.compare_digest(token, self.token) else "bad"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = request.rel_url.raw_path
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        origin = "cdn" if sockname is not None and sockname[1] == self.cdn_port else "api"
        record = GitHubRequestRecord(
            method=request.method,
            path=request.path,
            headers=dict(request.headers),
            range=request.headers.get("Range"),
            origin=origin,
            query=dict(request.query),
            raw_path=raw,
        )
        with self._lock:
            self.requests.append(record)
        try:
            segs = [urllib.parse.unquote(s) for s in raw.split("/")[1:]]
            route = self._route_cdn(request, segs) if origin == "cdn" else self._route(segs)
            record.kind = route.kind
            record.key = route.key
            if route.key is not None:
                with self._lock:
                    known = self._key_names.get(route.key, ())
                    extra = tuple(n for n in route.names[1:] if n not in known)
                    self._key_names[route.key] = known + extra
            ctx = _Ctx(request, record, None, self._auth_state(request), {})
            if route.kind == "api":
                ctx.headers = self._api_headers(ctx)
                if ctx.auth == "bad":
                    return self._error(ctx, 401, "Bad credentials")
                limited = self._rate_limited(ctx)
                if limited is not None:
                    return limited
            ctx.faults = self._find_faults(route.names, request.method)
            injected = self._early_fault(request, ctx.faults)
            if injected is not None:
                status, headers = injected
                if "Location" in headers:
                    return self._plain(ctx, status, "", headers)
                return self._error(ctx, status, f"injected {status}", headers)
            return await route.run(ctx)
        except ConnectionError:
            return web.Response(status=499)

    def _find_faults(self, names: list[str], method: str) -> GitHubFaults | None:
        with self._lock:
            faults = list(self._faults)
        for glob, fault in faults:
            if fault.methods is not None and method.upper() not in {
                m.upper() for m in fault.methods
            }:
                continue
            if any(fnmatch.fnmatchcase(name, glob) for name in names):
                return fault
        return None

    def _api_headers(self, ctx: _Ctx) -> dict[str, str]:
        state = "ok" if ctx.auth == "ok" else "none"
        limit = 5000 if state == "ok" else 60
        with self._lock:
            self._used[state] += 1
            used = self._used[state]
        return {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(max(0, limit - used)),
            "X-RateLimit-Reset": str(self._window_reset),
            "X-RateLimit-Used": str(used),
            "X-RateLimit-Resource": "core",
            "X-GitHub-Api-Version-Selected": "2022-11-28",
            "X-GitHub-Request-Id": secrets.token_hex(8).upper(),
        }

    def _rate_limited(self, ctx: _Ctx) -> web.StreamResponse | None:
        with self._lock:
            if self._limited <= 0:
                return None
            self._limited -= 1
            mode, reset_at = self._limit_mode, self._limit_reset
        wait = max(0.0, reset_at - time.time())
        if mode == "403":
            ctx.headers["X-RateLimit-Remaining"] = "0"
            ctx.headers["X-RateLimit-Used"] = ctx.headers["X-RateLimit-Limit"]
            ctx.headers["X-RateLimit-Reset"] = str(math.ceil(reset_at))
            peer = ctx.request.remote or "127.0.0.1"
            message = (
                f"API rate limit exceeded for {peer}. (But here's the good news: Authenticated "
                "requests get a higher rate limit. Check out the documentation for more details.)"
            )
            return self._error(
                ctx,
                403,
                message,
                doc=f"{_DOCS}/overview/rate-limits-for-the-rest-api",
            )
        message = (
            "You have exceeded a secondary rate limit. Please wait a few minutes before you try "
            "again. If you reach out to GitHub Support for help, please include the request ID."
        )
        return self._error(
            ctx,
            429 if mode == "429" else 403,
            message,
            {"Retry-After": str(math.ceil(wait))},
            doc=f"{_DOCS}/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits",
        )

    def _route(self, segs: list[str]) -> _Route:
        path = "/" + "/".join(segs)
        if len(segs) >= 3 and segs[0] == "repos" and segs[1] and segs[2]:
            return self._route_api(segs[1], segs[2], segs[3:], path)
        if len(segs) == 6 and segs[2:4] == ["releases", "download"]:
            owner, repo, tag, name = segs[0], segs[1], segs[4], segs[5]
            return _Route(
                "web", [path], lambda ctx: self._web_download(ctx, owner, repo, tag, name)
            )
        if (
            len(segs) == 6
            and segs[1].endswith(".git")
            and len(segs[1]) > 4
            and segs[2:] == ["info", "lfs", "objects", "batch"]
        ):
            owner, repo = segs[0], segs[1][:-4]
            return _Route("lfs", [path], lambda ctx: self._lfs_batch(ctx, owner, repo))

        async def not_found(ctx: _Ctx) -> web.StreamResponse:
            return self._error(ctx, 404, "Not Found")

        return _Route("other", [path], not_found)

    # ------------------------------------------------------------------ responses

    def _json(
        self,
        ctx: _Ctx,
        status: int,
        data: Any,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        body = json.dumps(data)
        all_headers = {**ctx.headers, **(headers or {})}
        if status == 200:
            etag = 'W/"' + hashlib.sha256(body.encode()).hexdigest()[:40] + '"'
            all_headers["ETag"] = etag
            if ctx.request.headers.get("If-None-Match", "").strip() == etag:
                ctx.record.status = 304
                return web.Response(status=304, headers=all_headers)
        ctx.record.status = status
        return web.Response(
            status=status, text=body, content_type="application/json", headers=all_headers
        )

    def _error(
        self,
        ctx: _Ctx,
        status: int,
        message: str,
        headers: Mapping[str, str] | None = None,
        *,
        doc: str = _DOCS,
    ) -> web.Response:
        data = {"message": message, "documentation_url": doc, "status": str(status)}
        return self._json(ctx, status, data, headers)

    def _plain(
        self, ctx: _Ctx, status: int, text: str, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        ctx.record.status = status
        return web.Response(status=status, text=text, headers={**ctx.headers, **(headers or {})})

    def _cdn_error(self, ctx: _Ctx, status: int, code: str, message: str) -> web.Response:
        ctx.record.status = status
        body = (
            '<?xml version="1.0" encoding="utf-8"?>'
            f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
        )
        return web.Response(status=status, text=body, content_type="application/xml")

    def _canonical(self, owner: str, repo: str) -> str:
        """``owner/repo`` as created (names are case-insensitive), or as given if unknown."""
        with self._lock:
            r = self._repos.get((owner.lower(), repo.lower()))
        return r.full_name if r is not None else f"{owner}/{repo}"

    def _visible_repo(self, ctx: _Ctx, owner: str, repo: str) -> _Repo | None:
        with self._lock:
            r = self._repos.get((owner.lower(), repo.lower()))
        if r is None or (r.private and ctx.auth != "ok"):
            return None
        return r

    async def _raw_bytes(
        self, ctx: _Ctx, data: bytes, key: str, headers: Mapping[str, str]
    ) -> web.StreamResponse:
        """200 with ``data`` (Range ignored, as the API does), through the body knobs."""
        request = ctx.request
        resp = web.StreamResponse(status=200, headers={**ctx.headers, **headers})
        resp.content_length = len(data)
        ctx.record.status = 200
        await resp.prepare(request)
        if request.method == "HEAD":
            await resp.write_eof()
            return resp
        flip = ctx.faults.flip_byte if ctx.faults is not None else None
        return await self._stream_body(
            request, resp, ctx.record, Blob(data), key, 0, len(data), ctx.faults, flip
        )

    # ------------------------------------------------------------------ API routes

    def _route_api(self, owner: str, repo: str, rest: list[str], path: str) -> _Route:
        names = [path]
        key: str | None = None
        if rest[:1] == ["contents"] and len(rest) > 1:
            full = self._canonical(owner, repo)
            file_path = "/".join(rest[1:]).strip("/")
            key = f"{full}/raw/{file_path}"
            names += [file_path, f"{full}/{file_path}"]

        async def run(ctx: _Ctx) -> web.StreamResponse:
            r = self._visible_repo(ctx, owner, repo)
            if r is None:
                return self._error(ctx, 404, "Not Found")
            if ctx.request.method not in ("GET", "HEAD"):
                return self._error(ctx, 404, "Not Found")
            if not rest:
                return self._json(ctx, 200, self._repo_json(r))
            head, tail = rest[0], rest[1:]
            if head == "releases":
                return self._releases(ctx, r, tail)
            if head == "commits" and tail:
                return self._commit(ctx, r, "/".join(tail))
            if head == "git" and len(tail) >= 2 and tail[0] == "trees":
                return self._tree(ctx, r, "/".join(tail[1:]))
            if head == "git" and len(tail) == 2 and tail[0] == "blobs":
                return await self._blob(ctx, r, tail[1])
            if head == "contents":
                return await self._contents(ctx, r, "/".join(tail).strip("/"))
            return self._error(ctx, 404, "Not Found")

        return _Route("api", names, run, key)

    def _releases(self, ctx: _Ctx, r: _Repo, tail: list[str]) -> web.StreamResponse:
        with self._lock:
            releases = sorted(r.releases.values(), key=lambda rel: rel.seq, reverse=True)
            latest = self._latest(r)
        if not tail:
            query = ctx.request.query
            try:
                per_page = min(100, max(1, int(query.get("per_page", "30"))))
                page = max(1, int(query.get("page", "1")))
            except ValueError:
                per_page, page = 30, 1
            chunk = releases[(page - 1) * per_page : page * per_page]
            headers = {}
            if page * per_page < len(releases):
                nxt = urllib.parse.urlencode({"per_page": per_page, "page": page + 1})
                headers["Link"] = f'<{self.url}/repos/{r.full_name}/releases?{nxt}>; rel="next"'
            return self._json(ctx, 200, [self._release_json(r, rel) for rel in chunk], headers)
        found: _Release | None = None
        if tail == ["latest"]:
            found = latest
        elif tail[0] == "tags" and len(tail) >= 2:
            found = r.releases.get("/".join(tail[1:]))
        elif tail[0] == "assets" and len(tail) == 2:
            return self._asset(ctx, r, tail[1])
        elif len(tail) == 1 and tail[0].isdigit():
            found = next((rel for rel in releases if rel.id == int(tail[0])), None)
        if found is None:
            return self._error(ctx, 404, "Not Found")
        return self._json(ctx, 200, self._release_json(r, found))

    def _find_asset(self, r: _Repo, asset_id: int) -> _Asset | None:
        with self._lock:
            for rel in r.releases.values():
                for a in rel.assets:
                    if a.id == asset_id:
                        return a
        return None

    def _asset(self, ctx: _Ctx, r: _Repo, asset_id: str) -> web.StreamResponse:
        a = self._find_asset(r, int(asset_id)) if asset_id.isdigit() else None
        if a is None:
            return self._error(ctx, 404, "Not Found")
        if "application/octet-stream" in ctx.request.headers.get("Accept", ""):
            return self._plain(ctx, 302, "", {"Location": self._cdn_asset_url(r, a)})
        return self._json(ctx, 200, self._asset_json(a))

    def _commit(self, ctx: _Ctx, r: _Repo, ref: str) -> web.StreamResponse:
        with self._lock:
            empty = not r.commits
            commit = self._resolve(r, ref)
        if empty:
            return self._error(ctx, 409, "Git Repository is empty.")
        if commit is None:
            return self._error(
                ctx, 422, f"No commit found for SHA: {ref}", doc=f"{_DOCS}/commits/commits"
            )
        if _SHA_ACCEPT in ctx.request.headers.get("Accept", ""):
            return self._plain(ctx, 200, commit.sha, {"ETag": f'"{commit.sha}"'})
        return self._json(ctx, 200, self._commit_json(r, commit))

    def _tree(self, ctx: _Ctx, r: _Repo, sha: str) -> web.StreamResponse:
        with self._lock:
            located = r.trees.get(sha.lower())
            if located is None:
                commit = self._resolve(r, sha)
                located = (commit, "") if commit is not None else None
        if located is None:
            return self._error(ctx, 404, "Not Found", doc=f"{_DOCS}/git/trees#get-a-tree")
        commit, directory = located
        recursive = "recursive" in ctx.request.query
        tree_sha = commit.trees[directory]
        data = {
            "sha": tree_sha,
            "url": f"{self.url}/repos/{r.full_name}/git/trees/{tree_sha}",
            "tree": self._tree_entries(r, commit, directory, recursive),
            "truncated": False,
        }
        return self._json(ctx, 200, data)

    def _find_blob(self, r: _Repo, sha: str) -> _GitBlob | None:
        with self._lock:
            for commit in r.commits.values():
                for blob in commit.files.values():
                    if blob.sha == sha:
                        return blob
        return None

    async def _blob(self, ctx: _Ctx, r: _Repo, sha: str) -> web.StreamResponse:
        blob = self._find_blob(r, sha.lower())
        if blob is None:
            return self._error(ctx, 404, "Not Found", doc=f"{_DOCS}/git/blobs#get-a-blob")
        if _RAW_ACCEPT.search(ctx.request.headers.get("Accept", "")):
            headers = {"ETag": f'"{blob.sha}"', "Content-Type": "application/vnd.github.raw"}
            return await self._raw_bytes(ctx, blob.data, f"{r.full_name}/blobs/{sha}", headers)
        data = {
            "sha": blob.sha,
            "node_id": base64.b64encode(f"B_{blob.sha}".encode()).decode(),
            "size": len(blob.data),
            "url": f"{self.url}/repos/{r.full_name}/git/blobs/{blob.sha}",
            "content": base64.b64encode(blob.data).decode(),
            "encoding": "base64",
        }
        return self._json(ctx, 200, data)

    async def _contents(self, ctx: _Ctx, r: _Repo, path: str) -> web.StreamResponse:
        ref = ctx.request.query.get("ref") or r.default_branch
        with self._lock:
            commit = self._resolve(r, ref)
        if commit is None:
            return self._error(
                ctx, 404, f"No commit found for the ref {ref}", doc=f"{_DOCS}/repos/contents"
            )
        doc = f"{_DOCS}/repos/contents#get-repository-content"
        if path and path not in commit.files and path not in commit.trees:
            return self._error(ctx, 404, "Not Found", doc=doc)
        if path in commit.files:
            blob = commit.files[path]
            if _RAW_ACCEPT.search(ctx.request.headers.get("Accept", "")):
                headers = {"ETag": f'"{blob.sha}"', "Content-Type": "application/vnd.github.raw"}
                key = ctx.record.key or f"{r.full_name}/raw/{path}"
                return await self._raw_bytes(ctx, blob.data, key, headers)
            return self._json(ctx, 200, self._content_json(r, commit, ref, path, content=True))
        entries = self._tree_entries(r, commit, path, recursive=False)
        base = path + "/" if path else ""
        listing = [
            self._content_json(r, commit, ref, base + e["path"], content=False) for e in entries
        ]
        return self._json(ctx, 200, listing)

    # ------------------------------------------------------------------ web and LFS routes

    async def _web_download(
        self, ctx: _Ctx, owner: str, repo: str, tag: str, name: str
    ) -> web.StreamResponse:
        with self._lock:
            r = self._repos.get((owner.lower(), repo.lower()))
            release = r.releases.get(tag) if r is not None else None
            found = [a for a in release.assets if a.name == name] if release else []
        # github.com takes no API token here: private repos' assets are 404 (use the API url).
        if r is None or r.private or not found or ctx.request.method not in ("GET", "HEAD"):
            return self._plain(ctx, 404, "Not Found")
        return self._plain(ctx, 302, "", {"Location": self._cdn_asset_url(r, found[0])})

    async def _lfs_batch(self, ctx: _Ctx, owner: str, repo: str) -> web.StreamResponse:
        request = ctx.request
        if request.method != "POST":
            return self._error(ctx, 404, "Not Found")
        if _LFS_MEDIA not in request.headers.get("Accept", ""):
            return self._json(
                ctx,
                406,
                {"message": "Not Acceptable", "documentation_url": "https://support.github.com"},
            )
        with self._lock:
            r = self._repos.get((owner.lower(), repo.lower()))
        if ctx.auth == "bad" or (r is not None and r.private and ctx.auth == "none"):
            return self._lfs_json(
                ctx,
                401,
                {"message": "Bad credentials" if ctx.auth == "bad" else "Credentials needed"},
                {"LFS-Authenticate": 'Basic realm="GitHub"'},
            )
        if r is None or (r.private and ctx.auth != "ok"):
            return self._lfs_json(ctx, 404, {"message": "Repository not found"})
        try:
            body = json.loads(await request.read())
            operation = body["operation"]
            wanted = [(str(o["oid"]), int(o.get("size", 0))) for o in body["objects"]]
        except (ValueError, KeyError, TypeError):
            return self._lfs_json(ctx, 422, {"message": "Unprocessable Entity"})
        if operation != "download":
            return self._lfs_json(ctx, 403, {"message": "Must have push access to repository"})
        objects = []
        ttl = int(self.cdn_url_ttl)
        for oid, size in wanted:
            with self._lock:
                obj = r.lfs.get(oid)
            if obj is None:
                objects.append(
                    {
                        "oid": oid,
                        "size": size,
                        "error": {"code": 404, "message": "Object does not exist"},
                    }
                )
                continue
            path = f"/lfs/{r.id}/{oid}"
            expires = math.ceil(time.time() + self.cdn_url_ttl)
            sig = self._sign(path, expires)
            action: dict[str, Any] = {
                "expires_in": ttl,
                "expires_at": _iso(expires),
            }
            if self.lfs_header_auth:
                action["href"] = f"{self.cdn_url}{path}?se={expires}"
                action["header"] = {"Authorization": f"RemoteAuth {sig}"}
            else:
                action["href"] = f"{self.cdn_url}{path}?se={expires}&sig={sig}"
            objects.append(
                {
                    "oid": oid,
                    "size": obj.size,
                    "authenticated": True,
                    "actions": {"download": action},
                }
            )
        return self._lfs_json(ctx, 200, {"transfer": "basic", "objects": objects})

    def _lfs_json(
        self, ctx: _Ctx, status: int, data: Any, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        ctx.record.status = status
        return web.Response(
            status=status,
            body=json.dumps(data).encode(),
            headers={"Content-Type": _LFS_MEDIA, **(headers or {})},
        )

    # ------------------------------------------------------------------ CDN routes

    def _route_cdn(self, request: web.Request, segs: list[str]) -> _Route:
        path = request.path
        if len(segs) == 3 and segs[0] == "github-production-release-asset":
            return self._route_cdn_asset(segs[1], segs[2], path)
        if len(segs) == 3 and segs[0] == "lfs":
            return self._route_cdn_lfs(segs[1], segs[2], path)
        if len(segs) >= 5 and segs[0] == "raw":
            return self._route_cdn_raw(segs[1], segs[2], segs[3], "/".join(segs[4:]), path)

        async def not_found(ctx: _Ctx) -> web.StreamResponse:
            return self._cdn_error(ctx, 404, "ResourceNotFound", "The resource does not exist.")

        return _Route("other", [path], not_found)

    def _repo_by_id(self, repo_id: str) -> _Repo | None:
        with self._lock:
            return next((r for r in self._repos.values() if str(r.id) == repo_id), None)

    def _cdn_common(self, ctx: _Ctx, path: str) -> web.StreamResponse | None:
        """Method, Authorization and signature checks of the signed CDN routes."""
        request = ctx.request
        if request.method not in ("GET", "HEAD"):
            ctx.record.status = 405
            return web.Response(status=405, text="Method Not Allowed", headers={"Allow": "GET"})
        auth = request.headers.get("Authorization")
        if self.cdn_reject_auth and auth is not None and not auth.startswith("RemoteAuth "):
            return self._cdn_error(
                ctx,
                400,
                "InvalidAuthenticationInfo",
                "Only one auth mechanism allowed; only the sig query parameter or the "
                "Authorization header should be specified",
            )
        reason = self._check_signature(request, path)
        if reason is not None:
            return self._cdn_error(ctx, 403, "AuthenticationFailed", reason)
        return None

    def _route_cdn_asset(self, repo_id: str, asset_id: str, path: str) -> _Route:
        r = self._repo_by_id(repo_id)
        a = self._find_asset(r, int(asset_id)) if r is not None and asset_id.isdigit() else None
        names = [path]
        key: str | None = None
        if a is not None:
            key = f"{a.owner}/{a.repo}/releases/download/{a.tag}/{a.name}"
            names += [a.name, f"{a.owner}/{a.repo}/{a.tag}/{a.name}"]

        async def run(ctx: _Ctx) -> web.StreamResponse:
            refused = self._cdn_common(ctx, path)
            if refused is not None:
                return refused
            if a is None or key is None:
                return self._cdn_error(
                    ctx, 404, "BlobNotFound", "The specified blob does not exist."
                )
            if ctx.request.method == "GET":
                with self._lock:
                    a.download_count += 1
            headers = {
                "Accept-Ranges": "bytes",
                "ETag": a.etag,
                "Last-Modified": a.last_modified,
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f"attachment; filename={a.name}",
                "x-ms-blob-type": "BlockBlob",
            }
            return await self._serve_body(
                ctx.request,
                ctx.record,
                a,
                key,
                size=a.size,
                headers=headers,
                faults=ctx.faults,
                unsatisfiable_text="The range specified is invalid for the current size.",
                sendfile=True,
            )

        return _Route("cdn-asset", names, run, key)

    def _route_cdn_lfs(self, repo_id: str, oid: str, path: str) -> _Route:
        r = self._repo_by_id(repo_id)
        with self._lock:
            obj = r.lfs.get(oid) if r is not None else None
            paths = sorted(
                {
                    p
                    for c in (r.commits.values() if r is not None else ())
                    for p, b in c.files.items()
                    if b.lfs_oid == oid
                }
            )
        names = [path]
        key: str | None = None
        if r is not None and obj is not None:
            key = f"{r.full_name}/lfs/{oid}"
            names += [oid, *paths, *(f"{r.full_name}/{p}" for p in paths)]

        async def run(ctx: _Ctx) -> web.StreamResponse:
            refused = self._cdn_common(ctx, path)
            if refused is not None:
                return refused
            if obj is None or key is None:
                return self._cdn_error(ctx, 404, "NoSuchKey", "The specified key does not exist.")
            headers = {
                "Accept-Ranges": "bytes",
                "ETag": f'"{oid[:32]}"',
                "Last-Modified": obj.last_modified,
                "Content-Type": "application/octet-stream",
            }
            return await self._serve_body(
                ctx.request,
                ctx.record,
                obj,
                key,
                size=obj.size,
                headers=headers,
                faults=ctx.faults,
                unsatisfiable_text="The requested range is not satisfiable",
                sendfile=True,
            )

        return _Route("cdn-lfs", names, run, key)

    def _route_cdn_raw(self, owner: str, repo: str, ref: str, file_path: str, path: str) -> _Route:
        full = self._canonical(owner, repo)
        key = f"{full}/raw/{file_path}"
        names = [path, file_path, f"{full}/{file_path}"]

        async def run(ctx: _Ctx) -> web.StreamResponse:
            with self._lock:
                r = self._repos.get((owner.lower(), repo.lower()))
                commit = self._resolve(r, ref) if r is not None else None
            if r is not None and r.private:
                expected = self._sign(f"/raw/{r.full_name}", 0)
                if not hmac.compare_digest(ctx.request.query.get("token", ""), expected):
                    r = None
            blob = commit.files.get(file_path) if commit is not None else None
            if r is None or blob is None:
                ctx.record.status = 404
                return web.Response(status=404, text="404: Not Found")
            headers = {
                "Accept-Ranges": "bytes",
                "ETag": f'"{blob.sha}"',
                "Last-Modified": http_date(_EPOCH),
                "Content-Type": "text/plain; charset=utf-8",
            }
            return await self._serve_body(
                ctx.request,
                ctx.record,
                Blob(blob.data),
                key,
                size=len(blob.data),
                headers=headers,
                faults=ctx.faults,
                unsatisfiable_text="416: Range Not Satisfiable",
            )

        return _Route("cdn-raw", names, run, key)


def _git_trees(files: Mapping[str, str]) -> dict[str, str]:
    """Git tree id of every directory ("" is the root), from path -> blob sha1."""
    dirs: set[str] = {""}
    for path in files:
        dirs.update(_parent_dirs(path))
    entries: dict[str, dict[str, tuple[bool, str]]] = collections.defaultdict(dict)
    for path, sha in files.items():
        parent, _, name = path.rpartition("/")
        entries[parent][name] = (False, sha)
    ids: dict[str, str] = {}
    for directory in sorted(dirs, key=lambda d: d.count("/") + 1 if d else 0, reverse=True):
        items = entries[directory]
        body = b"".join(
            (b"40000 " if is_dir else b"100644 ") + name.encode() + b"\0" + bytes.fromhex(oid)
            for name, (is_dir, oid) in sorted(
                items.items(), key=lambda item: _git_sort_key(item[0], item[1][0])
            )
        )
        ids[directory] = hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()
        if directory:
            parent, _, name = directory.rpartition("/")
            entries[parent][name] = (True, ids[directory])
    return ids


# ---------------------------------------------------------------------- pytest fixture


@pytest.fixture
def github() -> Iterator[GitHubServer]:
    """A started GitHubServer (token ``DEFAULT_TOKEN``), stopped after the test."""
    with GitHubServer() as server:
        yield server


# ---------------------------------------------------------------------- standalone mode


def _files_below(root: pathlib.Path) -> dict[str, pathlib.Path]:
    return {
        p.relative_to(root).as_posix(): p
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] not in (".git", ".cache")
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.servers.github")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cdn-port", type=int, default=0)
    parser.add_argument("--token", default=DEFAULT_TOKEN)
    parser.add_argument("--repo", default="org/models", help="OWNER/NAME")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--release-dir", type=pathlib.Path, help="its files become assets")
    parser.add_argument("--tag", default="v1")
    parser.add_argument("--commit-dir", type=pathlib.Path, help="its tree becomes a commit")
    parser.add_argument("--ref", action="append", help="refs of the commit (default: main)")
    parser.add_argument("--lfs", action="append", default=[], help="glob of LFS paths")
    parser.add_argument("--cdn-url-ttl", type=float, default=300.0)
    args = parser.parse_args(argv)
    owner, sep, name = args.repo.partition("/")
    if not sep:
        parser.error(f"--repo must be OWNER/NAME: {args.repo}")
    for d in (args.release_dir, args.commit_dir):
        if d is not None and not d.is_dir():
            parser.error(f"not a directory: {d}")

    exit_on_sigterm()
    server = GitHubServer(
        host=args.host,
        port=args.port,
        cdn_port=args.cdn_port,
        token=args.token,
        cdn_url_ttl=args.cdn_url_ttl,
    )
    server.add_repo(owner, name, private=args.private)
    if args.release_dir is not None:
        assets = {p.name: p for p in sorted(args.release_dir.iterdir()) if p.is_file()}
        server.add_release(owner, name, args.tag, assets)
    lines = []
    if args.commit_dir is not None:
        files = _files_below(args.commit_dir)
        lfs = {p for p in files if any(fnmatch.fnmatchcase(p, g) for g in args.lfs)}
        sha = server.add_commit(owner, name, args.ref or ["main"], files, lfs)
        lines.append(f"COMMIT {sha}\n")

    def announce() -> str:
        return "".join(
            [f"READY {server.url}\n", f"CDN {server.cdn_url}\n", f"TOKEN {server.token}\n", *lines]
        )

    server.serve_until_killed(announce)
    return 0


if __name__ == "__main__":
    sys.exit(main())
