"""An HF-Hub-compatible server for tests, with fault-injection knobs.

The real ``huggingface_hub`` client (2.4.0) works against it when ``HF_ENDPOINT`` points at
``HfHubServer.url`` (use the ``hf_endpoint`` fixture in-process: some of the client's constants
are read at import time, see below). Like ``tests.servers.fileserver``, it runs aiohttp in a
daemon thread with its own event loop, on 127.0.0.1 and port 0.

Typical use::

    def test_download(hf_endpoint: HfHubServer) -> None:
        hub = hf_endpoint
        hub.create_repo("org/model", pipeline_tag="text-generation")
        sha = hub.commit("org/model", {"config.json": b"{}", "model.safetensors": b"x" * 20_000})
        path = huggingface_hub.hf_hub_download("org/model", "model.safetensors", revision=sha)
        assert hub.bytes_sent("model.safetensors") == 20_000

Standalone (used by benchmarks)::

    python -m tests.servers.hfhub --port 0 --repo-dir DIR --repo-id org/name
    # prints "READY http://127.0.0.1:<port>" then "COMMIT <sha>", serves until killed.

What is served (what huggingface_hub 2.4.0 asks for; ``{type}s`` is ``models`` or ``datasets``):

* ``GET /api/{type}s/{repo}`` and ``/api/{type}s/{repo}/revision/{rev}`` (``?blobs=true`` is
  ``files_metadata=True``): ``sha``, ``siblings`` (``rfilename``; with blobs also ``size``,
  ``blobId`` and ``lfs: {sha256, size, pointerSize}``), ``private``, ``gated``, ``pipeline_tag``,
  ``library_name`` ...
* ``GET /api/{type}s/{repo}/tree/{rev}[/{path}]?recursive=&expand=`` (paginated with a
  ``Link: <...>; rel="next"`` header, ``tree_page_size`` entries per page), ``POST .../paths-info/
  {rev}``, ``GET .../refs``, ``GET .../commits/{rev}``, ``GET /api/whoami-v2``,
  ``GET /api/agent-harnesses`` (empty registry).
* ``HEAD``/``GET /[datasets/]{repo}/resolve/{rev}/{path}``: small (git) files are answered
  directly (``ETag: "<git blob sha1>"``, ``X-Repo-Commit``, Range/If-Range, 206); LFS files get a
  ``302`` whose ``Location`` is ``{cdn_url}/cdn/lfs/<sha256>?...`` with ``X-Repo-Commit``,
  ``X-Linked-Etag: "<sha256>"`` and ``X-Linked-Size``. The "CDN" listens on a second port of the
  same server (another origin, like the real hub's CDN): the client does not follow the HEAD
  redirect and drops ``Authorization`` for the GET. ``cdn_mode="path"`` puts it on the hub's own
  origin instead (the client then follows the HEAD redirect; the CDN answer carries
  ``X-Repo-Commit`` so that still works).
* Revisions: branch, tag, full or abbreviated (>= 7) commit sha, ``refs/heads/X``,
  ``refs/tags/X``; the client URL-encodes ``/`` in revisions (``refs%2Fpr%2F1``), the raw path is
  parsed so that works, and so does an unencoded ``refs/pr/1``.
* Never any Xet header (``X-Xet-*``, ``Link: rel=xet-auth``) nor ``xetHash``: the client stays on
  plain HTTP.

Errors, as the real hub (``X-Error-Code`` / ``X-Error-Message`` headers + ``{"error": ...}``):

* unknown repo, or a private repo without an allowed token: ``401`` if no ``Authorization``
  header, ``404`` if one was sent; ``X-Error-Code: RepoNotFound``.
* a token the server does not know (neither ``token`` nor one given to ``set_access``): ``401``
  ``Invalid credentials in Authorization header`` on every route (``reject_unknown_tokens``).
* gated repo: metadata routes are public (like the hub); ``resolve`` without an allowed token is
  ``401`` (no token) or ``403`` (token not on the list), ``X-Error-Code: GatedRepo``.
* ``404`` ``RevisionNotFound`` ("Invalid rev id: ..."), ``404`` ``EntryNotFound`` (with
  ``X-Repo-Commit``).

Faults (``set_fault(glob, **knobs)``): the glob (fnmatch, ``*`` crosses ``/``) is matched against
the request path (decoded, e.g. ``/api/models/org/name/revision/main``,
``/org/name/resolve/main/a.bin``, ``/cdn/lfs/<sha256>``) and, for file requests (resolve and CDN),
against the file's path in the repo (``a.bin``) and its key ``[datasets/]org/name/a.bin``. The
first fault set (in insertion order) that matches applies; ``methods=["GET"]`` restricts it. Knobs
are those of ``FileServer`` (``status_sequence`` + ``retry_after``, ``redirect_to`` +
``redirect_times``, ``require_auth``, ``cut_after``/``cut_times``, ``stall_after``/
``stall_seconds``/``stall_times``, ``ignore_range``, ``ignore_if_range``, ``flip_byte``)
applied in the same order;
the body knobs only act on responses carrying file bytes (a small file's resolve GET, a CDN GET).

huggingface_hub reads ``HF_ENDPOINT`` (and ``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_DISABLE_XET``,
telemetry, implicit token, ...) once, at import time, into ``huggingface_hub.constants``; setting
the variables later has no effect in an already importing process. The ``hf_endpoint`` fixture
therefore sets the environment (for subprocesses) *and* monkeypatches the constants (plus
``utils._http._HUB_ORIGINS``) for this process; both are undone after the test.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import dataclasses
import datetime
import fnmatch
import gzip
import hashlib
import json
import logging
import pathlib
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
    "DEFAULT_LFS_PATTERNS",
    "HfHubServer",
    "HubFaults",
    "HubFile",
    "HubRequestRecord",
    "hf_endpoint",
    "hfhub",
    "main",
]

log = logging.getLogger(__name__)

#: Files whose base name matches one of these are stored with LFS whatever their size.
DEFAULT_LFS_PATTERNS: tuple[str, ...] = (
    "*.safetensors",
    "*.bin",
    "*.gguf",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.onnx",
    "*.h5",
    "*.msgpack",
    "*.parquet",
    "*.arrow",
)

HASH_CHUNK = 8 * 1024 * 1024
_EPOCH = 1_704_067_200  # 2024-01-01T00:00:00Z: commit dates are _EPOCH + a counter
_AUTHOR = "HF Test <test@hf.invalid>"
_INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
_API_SUFFIXES = frozenset({"revision", "tree", "paths-info", "refs", "commits"})

RepoType = Literal["model", "dataset"]
_TYPE_PLURAL: dict[str, str] = {"model": "models", "dataset": "datasets"}
_PLURAL_TYPE: dict[str, str] = {v: k for k, v in _TYPE_PLURAL.items()}


# ---------------------------------------------------------------------- data model


@dataclasses.dataclass
class HubRequestRecord(RequestRecord):
    """A ``RequestRecord`` with the hub-specific parts.

    ``kind`` is one of ``api``, ``resolve``, ``resolve-cache``, ``cdn``, ``other``; for file
    requests ``file`` is the file key (``[datasets/]org/name/path``) and ``repo_file`` the path
    in the repo; ``origin`` is ``hub`` or ``cdn`` (the port the request arrived on).
    """

    query: dict[str, str] = dataclasses.field(default_factory=dict)
    raw_path: str = ""
    kind: str = "other"
    file: str | None = None
    repo_file: str | None = None
    origin: str = "hub"


@dataclasses.dataclass
class HubFaults(Faults):
    """``FileServer`` fault knobs plus ``methods`` (only these HTTP methods are affected)."""

    methods: list[str] | None = None


@dataclasses.dataclass(frozen=True)
class HubFile:
    """One stored file version (content-addressed).

    ``blob_id`` is what the API shows as ``blobId``/``oid``: the git blob sha1 of the content for
    small files, of the LFS pointer for LFS files. ``etag`` is the (unquoted) ETag the resolve
    endpoint gives: the sha256 for LFS files, the git blob sha1 otherwise.
    """

    size: int
    sha256: str
    git_sha1: str | None  # sha1(b"blob <size>\0" + data); None for LFS files read from disk
    blob_id: str
    lfs: bool
    pointer_size: int
    data: bytes | None = dataclasses.field(default=None, repr=False)
    file: pathlib.Path | None = None
    last_modified: str = ""

    @property
    def etag(self) -> str:
        if self.lfs:
            return self.sha256
        assert self.git_sha1 is not None
        return self.git_sha1


@dataclasses.dataclass(frozen=True)
class _Commit:
    sha: str
    parent: str | None
    files: Mapping[str, HubFile]
    tree: str
    title: str
    message: str
    date: str  # ISO 8601


@dataclasses.dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    gated: str | Literal[False]
    pipeline_tag: str | None
    library_name: str | None
    created_at: str
    branches: dict[str, str] = dataclasses.field(default_factory=dict)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    commits: dict[str, _Commit] = dataclasses.field(default_factory=dict)
    tokens: set[str] | None = None  # None: the server's default token


_Runner = Callable[
    [web.Request, HubRequestRecord, "HubFaults | None"], Awaitable[web.StreamResponse]
]


@dataclasses.dataclass
class _Route:
    kind: str
    names: list[str]
    run: _Runner
    file_key: str | None = None
    repo_file: str | None = None


def _simple(fn: Callable[[HubRequestRecord], web.StreamResponse]) -> _Runner:
    """A route runner that needs neither the request nor the faults."""

    async def run(
        _request: web.Request, record: HubRequestRecord, _faults: HubFaults | None
    ) -> web.StreamResponse:
        return fn(record)

    return run


# ---------------------------------------------------------------------- git helpers


def _iso(ts: float) -> str:
    dt = datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def git_blob_sha1(data: bytes) -> str:
    """The git blob id of ``data``: ``sha1(b"blob <size>\\0" + data)``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file stored in git for an LFS file."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def _git_tree(files: Mapping[str, HubFile]) -> tuple[str, dict[str, str]]:
    """Git tree id of the root, and of every directory ("" is the root)."""
    children: dict[str, dict[str, tuple[bool, str]]] = collections.defaultdict(dict)
    dirs: set[str] = {""}
    for path in files:
        parts = path.split("/")
        for i in range(1, len(parts)):
            dirs.add("/".join(parts[:i]))
    ids: dict[str, str] = {}
    # Deepest directories first so that parents can use their children's ids.
    for directory in sorted(dirs, key=lambda d: (d.count("/") + 1) if d else 0, reverse=True):
        prefix = directory + "/" if directory else ""
        entries = children[directory]
        for path, info in files.items():
            if path.startswith(prefix) and "/" not in path[len(prefix) :]:
                entries[path[len(prefix) :]] = (False, info.blob_id)
        for sub in dirs:
            if (
                sub
                and sub.startswith(prefix)
                and "/" not in sub[len(prefix) :]
                and sub != directory
            ):
                entries[sub[len(prefix) :]] = (True, ids[sub])

        def sort_key(item: tuple[str, tuple[bool, str]]) -> bytes:
            name, (is_dir, _) = item
            return (name + "/" if is_dir else name).encode()

        body = b"".join(
            (b"40000 " if is_dir else b"100644 ") + name.encode() + b"\0" + bytes.fromhex(oid)
            for name, (is_dir, oid) in sorted(entries.items(), key=sort_key)
        )
        ids[directory] = hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()
    return ids[""], ids


def _git_commit(tree: str, parent: str | None, ts: int, message: str) -> str:
    text = f"tree {tree}\n"
    if parent:
        text += f"parent {parent}\n"
    text += f"author {_AUTHOR} {ts} +0000\ncommitter {_AUTHOR} {ts} +0000\n\n{message}\n"
    raw = text.encode()
    return hashlib.sha1(b"commit %d\0" % len(raw) + raw).hexdigest()


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


def _check_repo_id(repo_id: str) -> str:
    parts = repo_id.split("/")
    if not 1 <= len(parts) <= 2 or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid repo id: {repo_id!r}")
    return repo_id


def _bearer(request: web.Request) -> str | None:
    value = request.headers.get("Authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else value.strip()


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes", "on")


# ---------------------------------------------------------------------- the server


class HfHubServer(BodyServer):
    """Threaded aiohttp HF-Hub-compatible server with fault knobs. See the module docstring."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cdn_port: int = 0,
        token: str | None = "hf_test_token",
        lfs_threshold: int = 10_000,
        lfs_patterns: Iterable[str] = DEFAULT_LFS_PATTERNS,
        cdn_mode: Literal["origin", "path"] = "origin",
        tree_page_size: int = 1000,
        reject_unknown_tokens: bool = True,
        small_file_redirect: bool = False,
        gzip_small_files: bool = False,
        cdn_reject_auth: bool = False,
    ) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self.cdn_port = cdn_port
        self.url = ""
        self.cdn_url = ""
        #: A token with access to every private/gated repo without ``set_access`` tokens.
        self.token = token
        #: Files of at least this many bytes are stored with LFS.
        self.lfs_threshold = lfs_threshold
        #: Base-name globs of files stored with LFS whatever their size.
        self.lfs_patterns: tuple[str, ...] = tuple(lfs_patterns)
        #: "origin": the CDN is another port (another origin); "path": same origin as the hub.
        self.cdn_mode: Literal["origin", "path"] = cdn_mode
        #: Entries per page of the tree listing (the hub: 1000; 50 with expand=True).
        self.tree_page_size = tree_page_size
        #: Answer 401 "Invalid credentials in Authorization header" to tokens nobody gave out.
        self.reject_unknown_tokens = reject_unknown_tokens
        #: Answer small files' resolve with a 307 to /api/resolve-cache/... (as the hub does now).
        self.small_file_redirect = small_file_redirect
        #: gzip small files' GET bodies when the client accepts it (no Content-Length, chunked).
        self.gzip_small_files = gzip_small_files
        #: The CDN answers 400 to requests carrying Authorization (as S3 signed URLs do).
        self.cdn_reject_auth = cdn_reject_auth
        self.requests: list[HubRequestRecord] = []
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lfs: dict[str, HubFile] = {}
        self._hash_cache: dict[tuple[str, int, int], tuple[str, str | None]] = {}
        self._faults: list[tuple[str, HubFaults]] = []
        self._clock = 0

    # ------------------------------------------------------------------ lifecycle

    async def _setup(self) -> None:
        ports = await self._serve_app(self._handle, self.host, self.port, self.cdn_port)
        self.port, self.cdn_port = ports
        self.url = f"http://{self.host}:{self.port}"
        self.cdn_url = f"http://{self.host}:{self.cdn_port}"

    # ------------------------------------------------------------------ content

    def create_repo(
        self,
        repo_id: str,
        *,
        repo_type: RepoType = "model",
        private: bool = False,
        gated: bool | Literal["auto", "manual"] = False,
        pipeline_tag: str | None = None,
        library_name: str | None = None,
    ) -> None:
        """Create an empty repo: branch ``main`` at an initial commit without files.

        (The real hub's initial commit holds a ``.gitattributes``; commit one if you want it.)
        ``gated=True`` means ``"auto"``.
        """
        _check_repo_id(repo_id)
        key = self._key(repo_type, repo_id)
        gated_value: str | Literal[False] = "auto" if gated is True else gated
        with self._lock:
            if key in self._repos:
                raise ValueError(f"{repo_type} repo {repo_id!r} already exists")
            ts = self._tick()
            repo = _Repo(
                repo_type=repo_type,
                repo_id=repo_id,
                private=private,
                gated=gated_value,
                pipeline_tag=pipeline_tag,
                library_name=library_name,
                created_at=_iso(ts),
            )
            initial = self._make_commit({}, None, "initial commit", ts)
            repo.commits[initial.sha] = initial
            repo.branches["main"] = initial.sha
            self._repos[key] = repo

    def commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes | pathlib.Path],
        *,
        branch: str = "main",
        repo_type: RepoType = "model",
        delete: Iterable[str] = (),
        message: str = "",
    ) -> str:
        """Commit ``files`` on ``branch`` and return the new commit sha.

        Files not mentioned are kept from the branch's previous commit (a new branch starts
        from ``main``). ``pathlib.Path`` values are served from disk (streamed, never loaded
        in memory); their sha256 is computed once, streamed, and cached by (path, size, mtime);
        the file must not change afterwards. ``delete`` lists paths to remove.
        """
        repo = self._repo(repo_type, repo_id)
        stored = self._store_files(files)
        with self._lock:
            parent = repo.branches.get(branch) or repo.branches.get("main")
            tree: dict[str, HubFile] = dict(repo.commits[parent].files) if parent else {}
            for path in delete:
                if path not in tree:
                    raise ValueError(f"cannot delete {path!r}: not in {repo_id}@{branch}")
                del tree[path]
            tree.update(stored)
            title = message or (f"Upload {len(stored)} files" if stored else "Update")
            new = self._make_commit(tree, parent, title, self._tick())
            repo.commits[new.sha] = new
            repo.branches[branch] = new.sha
            for info in stored.values():
                if info.lfs:
                    self._lfs.setdefault(info.sha256, info)
        return new.sha

    def tag(self, repo_id: str, tag: str, commit: str, *, repo_type: RepoType = "model") -> None:
        """Point ``tag`` at ``commit`` (any revision the hub would resolve)."""
        self._set_ref(repo_type, repo_id, "tags", tag, commit)

    def set_branch(
        self, repo_id: str, branch: str, commit: str, *, repo_type: RepoType = "model"
    ) -> None:
        """Point ``branch`` at ``commit`` (create or force-move it, e.g. a rollback)."""
        self._set_ref(repo_type, repo_id, "branches", branch, commit)

    def set_access(
        self, repo_id: str, *, tokens: Iterable[str], repo_type: RepoType = "model"
    ) -> None:
        """Tokens allowed on a private/gated repo (instead of ``self.token``)."""
        repo = self._repo(repo_type, repo_id)
        with self._lock:
            repo.tokens = set(tokens)

    def set_private(self, repo_id: str, private: bool, *, repo_type: RepoType = "model") -> None:
        repo = self._repo(repo_type, repo_id)
        with self._lock:
            repo.private = private

    def resolve(
        self, repo_id: str, revision: str = "main", *, repo_type: RepoType = "model"
    ) -> str:
        """The commit sha ``revision`` resolves to (KeyError if it does not)."""
        repo = self._repo(repo_type, repo_id)
        with self._lock:
            commit = self._resolve_revision(repo, revision)
        if commit is None:
            raise KeyError(f"{repo_id}: unknown revision {revision!r}")
        return commit.sha

    def files(
        self, repo_id: str, revision: str = "main", *, repo_type: RepoType = "model"
    ) -> dict[str, HubFile]:
        """The files of ``repo_id`` at ``revision`` (path -> HubFile)."""
        repo = self._repo(repo_type, repo_id)
        with self._lock:
            commit = self._resolve_revision(repo, revision)
        if commit is None:
            raise KeyError(f"{repo_id}: unknown revision {revision!r}")
        return dict(commit.files)

    def is_lfs(self, path: str, size: int) -> bool:
        name = path.rsplit("/", 1)[-1]
        return size >= self.lfs_threshold or any(
            fnmatch.fnmatchcase(name, pattern) for pattern in self.lfs_patterns
        )

    # ------------------------------------------------------------------ faults / stats

    def set_fault(self, path_glob: str, **knobs: Any) -> None:
        """Set the fault knobs of ``path_glob`` (replacing previous ones for the same glob).

        Unknown knob: TypeError. See the module docstring for what the glob is matched against.
        """
        faults = HubFaults(**knobs)
        with self._lock:
            self._faults = [(g, f) for g, f in self._faults if g != path_glob]
            self._faults.append((path_glob, faults))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def bytes_sent(self, filename_glob: str) -> int:
        """File body bytes sent for files matching ``filename_glob`` (resolve + CDN, all repos).

        The glob is matched against the path in the repo and against the key
        ``[datasets/]org/name/path``. Same accuracy as ``FileServer.bytes_sent``.
        """
        with self._lock:
            items = list(self._bytes.items())
        total = 0
        for key, count in items:
            in_repo = key.split("\0", 1)[-1]
            full = key.replace("\0", "/")
            if fnmatch.fnmatchcase(in_repo, filename_glob) or fnmatch.fnmatchcase(
                full, filename_glob
            ):
                total += count
        return total

    def reset_stats(self) -> None:
        with self._lock:
            self.requests.clear()
            self._bytes.clear()

    def requests_matching(
        self, glob: str = "*", *, method: str | None = None, kind: str | None = None
    ) -> list[HubRequestRecord]:
        """Requests whose decoded path, file key or path in the repo matches ``glob``."""
        with self._lock:
            records = list(self.requests)
        return [
            r
            for r in records
            if (method is None or r.method == method)
            and (kind is None or r.kind == kind)
            and any(
                name is not None and fnmatch.fnmatchcase(name, glob)
                for name in (r.path, r.file, r.repo_file)
            )
        ]

    # ------------------------------------------------------------------ internals: state

    @staticmethod
    def _key(repo_type: str, repo_id: str) -> tuple[str, str]:
        if repo_type not in _TYPE_PLURAL:
            raise ValueError(f"unsupported repo type: {repo_type!r}")
        return repo_type, repo_id

    def _repo(self, repo_type: str, repo_id: str) -> _Repo:
        with self._lock:
            repo = self._repos.get(self._key(repo_type, repo_id))
        if repo is None:
            raise KeyError(f"no {repo_type} repo {repo_id!r}; call create_repo() first")
        return repo

    def _tick(self) -> int:
        with self._lock:
            self._clock += 1
            return _EPOCH + self._clock

    def _make_commit(
        self, files: Mapping[str, HubFile], parent: str | None, title: str, ts: int
    ) -> _Commit:
        tree, _ = _git_tree(files)
        return _Commit(
            sha=_git_commit(tree, parent, ts, title),
            parent=parent,
            files=dict(sorted(files.items())),
            tree=tree,
            title=title,
            message="",
            date=_iso(ts),
        )

    def _set_ref(self, repo_type: str, repo_id: str, kind: str, name: str, target: str) -> None:
        repo = self._repo(repo_type, repo_id)
        with self._lock:
            commit = self._resolve_revision(repo, target)
            if commit is None:
                raise KeyError(f"{repo_id}: unknown revision {target!r}")
            getattr(repo, kind)[name] = commit.sha

    def _store_files(self, files: Mapping[str, bytes | pathlib.Path]) -> dict[str, HubFile]:
        now = http_date(time.time())
        result: dict[str, HubFile] = {}
        disk: dict[str, pathlib.Path] = {}
        for path, value in files.items():
            _check_repo_path(path)
            if isinstance(value, pathlib.Path):
                disk[path] = value
                continue
            data = bytes(value)
            sha256 = hashlib.sha256(data).hexdigest()
            git_sha1 = git_blob_sha1(data)
            result[path] = self._file_info(path, len(data), sha256, git_sha1, now, data=data)
        if disk:
            with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(disk))) as pool:
                hashed = dict(zip(disk, pool.map(self._hash_path, disk.items()), strict=True))
            for path, (size, digest, maybe_sha1) in hashed.items():
                result[path] = self._file_info(
                    path, size, digest, maybe_sha1, now, file=disk[path].resolve()
                )
        return result

    def _file_info(
        self,
        path: str,
        size: int,
        sha256: str,
        git_sha1: str | None,
        last_modified: str,
        *,
        data: bytes | None = None,
        file: pathlib.Path | None = None,
    ) -> HubFile:
        lfs = self.is_lfs(path, size)
        if lfs:
            with self._lock:
                known = self._lfs.get(sha256)
            if known is not None:  # same content: serve the already stored copy
                return known
            pointer = lfs_pointer(sha256, size)
            return HubFile(
                size=size,
                sha256=sha256,
                git_sha1=git_sha1,
                blob_id=git_blob_sha1(pointer),
                lfs=True,
                pointer_size=len(pointer),
                data=data,
                file=file,
                last_modified=last_modified,
            )
        assert git_sha1 is not None
        return HubFile(
            size=size,
            sha256=sha256,
            git_sha1=git_sha1,
            blob_id=git_sha1,
            lfs=False,
            pointer_size=0,
            data=data,
            file=file,
            last_modified=last_modified,
        )

    def _hash_path(self, item: tuple[str, pathlib.Path]) -> tuple[int, str, str | None]:
        path, file = item
        st = file.stat()
        cache_key = (str(file.resolve()), st.st_size, st.st_mtime_ns)
        with self._lock:
            cached = self._hash_cache.get(cache_key)
        if cached is not None and (cached[1] is not None or self.is_lfs(path, st.st_size)):
            return st.st_size, cached[0], cached[1]
        want_git = not self.is_lfs(path, st.st_size)
        sha256 = hashlib.sha256()
        sha1 = hashlib.sha1(b"blob %d\0" % st.st_size) if want_git else None
        buf = bytearray(HASH_CHUNK)
        view = memoryview(buf)
        size = 0
        with file.open("rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                sha256.update(view[:n])
                if sha1 is not None:
                    sha1.update(view[:n])
                size += n
        if size != st.st_size:
            raise RuntimeError(f"{file} changed while hashing it")
        result = (sha256.hexdigest(), sha1.hexdigest() if sha1 is not None else None)
        with self._lock:
            self._hash_cache[cache_key] = result
        return size, result[0], result[1]

    def _resolve_revision(self, repo: _Repo, revision: str) -> _Commit | None:
        """Branch, tag, refs/heads/X, refs/tags/X, full or abbreviated (>= 7 hex) commit sha."""
        name = revision
        if name in repo.branches:
            return repo.commits[repo.branches[name]]
        if name in repo.tags:
            return repo.commits[repo.tags[name]]
        if name.startswith("refs/heads/") and name[11:] in repo.branches:
            return repo.commits[repo.branches[name[11:]]]
        if name.startswith("refs/tags/") and name[10:] in repo.tags:
            return repo.commits[repo.tags[name[10:]]]
        lowered = name.lower()
        if lowered in repo.commits:
            return repo.commits[lowered]
        if 7 <= len(lowered) < 40 and all(c in "0123456789abcdef" for c in lowered):
            found = [c for sha, c in repo.commits.items() if sha.startswith(lowered)]
            if len(found) == 1:
                return found[0]
        return None

    def _known_tokens(self) -> set[str]:
        tokens = {self.token} if self.token else set()
        for repo in self._repos.values():
            if repo.tokens:
                tokens |= repo.tokens
        return tokens

    def _allowed(self, repo: _Repo, token: str | None) -> bool:
        if token is None:
            return False
        allowed = (
            repo.tokens if repo.tokens is not None else ({self.token} if self.token else set())
        )
        return token in allowed

    # ------------------------------------------------------------------ internals: routing

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = request.rel_url.raw_path
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        origin = "cdn" if sockname is not None and sockname[1] == self.cdn_port else "hub"
        record = HubRequestRecord(
            method=request.method,
            path=request.path,
            headers=dict(request.headers),
            range=request.headers.get("Range"),
            query=dict(request.query),
            raw_path=raw,
            origin=origin,
        )
        with self._lock:
            self.requests.append(record)
        try:
            route = self._route(request, raw)
            record.kind = route.kind
            record.file = route.file_key
            record.repo_file = route.repo_file
            faults = self._find_faults(route.names, request.method)
            early = self._early_faults(request, record, faults)
            if early is not None:
                return early
            return await route.run(request, record, faults)
        except ConnectionError:
            return web.Response(status=499)

    def _find_faults(self, names: list[str], method: str) -> HubFaults | None:
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

    def _early_faults(
        self, request: web.Request, record: HubRequestRecord, faults: HubFaults | None
    ) -> web.StreamResponse | None:
        injected = self._early_fault(request, faults)
        if injected is None:
            return None
        status, headers = injected
        if "Location" in headers:  # redirect_to
            return self._plain(record, status, "", headers=headers)
        return self._json(record, status, {"error": f"injected {status}"}, headers=headers)

    def _route(self, request: web.Request, raw: str) -> _Route:
        segs = [urllib.parse.unquote(s) for s in raw.split("/")[1:]]
        path = request.path
        method = request.method
        simple = _simple
        if segs[:2] == ["api", "agent-harnesses"]:
            body: dict[str, Any] = {"standardEnvVars": [], "harnesses": {}}
            return _Route("api", [path], simple(lambda rec: self._json(rec, 200, body)))
        if segs[:2] == ["api", "whoami-v2"]:
            return _Route("api", [path], simple(lambda rec: self._whoami(request, rec)))
        if segs[:2] == ["api", "resolve-cache"] and len(segs) >= 6 and segs[2] in _PLURAL_TYPE:
            return self._route_resolve_cache(segs[2:], path)
        if len(segs) >= 3 and segs[0] == "api" and segs[1] in _PLURAL_TYPE:
            return self._route_api(request, _PLURAL_TYPE[segs[1]], segs[2:], path)
        if len(segs) >= 3 and segs[0] == "cdn" and segs[1] == "lfs":
            return self._route_cdn(request, segs[2], path)
        if segs and segs[0] != "api":
            repo_type = "model"
            rest = segs
            if rest[0] == "datasets":
                repo_type = "dataset"
                rest = rest[1:]
            for n in (2, 1):
                if len(rest) > n + 1 and rest[n] == "resolve" and method in ("GET", "HEAD"):
                    return self._route_resolve(repo_type, rest[:n], rest[n + 1 :], path)
        return _Route(
            "other",
            [path],
            simple(lambda rec: self._json(rec, 404, {"error": "Sorry, we can't find the page."})),
        )

    def _split_revision(self, rest: list[str]) -> tuple[str, list[str]]:
        """First revision in ``rest`` (``refs/pr/1`` may come unencoded) and what follows."""
        if len(rest) >= 3 and rest[0] == "refs" and rest[1] in ("pr", "heads", "tags", "convert"):
            return "/".join(rest[:3]), rest[3:]
        return rest[0], rest[1:]

    def _find_repo(self, repo_type: str, segs: list[str]) -> tuple[str, list[str]]:
        """Split ``org/name/...`` or ``name/...`` into the repo id and the rest."""
        with self._lock:
            if len(segs) >= 2 and (repo_type, "/".join(segs[:2])) in self._repos:
                return "/".join(segs[:2]), segs[2:]
            if (repo_type, segs[0]) in self._repos:
                return segs[0], segs[1:]
        if len(segs) >= 2 and segs[1] not in _API_SUFFIXES:
            return "/".join(segs[:2]), segs[2:]
        return segs[0], segs[1:]

    # ------------------------------------------------------------------ API routes

    def _route_api(
        self, request: web.Request, repo_type: str, segs: list[str], path: str
    ) -> _Route:
        repo_id, rest = self._find_repo(repo_type, segs)
        method = request.method

        async def run(
            req: web.Request, rec: HubRequestRecord, _faults: HubFaults | None
        ) -> web.StreamResponse:
            repo, denied = self._access(req, rec, repo_type, repo_id, download=False)
            if denied is not None:
                return denied
            assert repo is not None
            if not rest and method == "GET":
                return self._info(req, rec, repo, "main")
            if rest and rest[0] == "revision" and len(rest) >= 2 and method == "GET":
                revision, _ = self._split_revision(rest[1:])
                return self._info(req, rec, repo, revision)
            if rest and rest[0] == "tree" and len(rest) >= 2 and method == "GET":
                revision, sub = self._split_revision(rest[1:])
                return self._tree(req, rec, repo, revision, "/".join(sub))
            if rest and rest[0] == "paths-info" and len(rest) >= 2 and method == "POST":
                revision, _ = self._split_revision(rest[1:])
                form = await req.post()
                paths = [str(p) for p in form.getall("paths", [])]
                return self._paths_info(
                    rec, repo, revision, paths, _truthy(str(form.get("expand")))
                )
            if rest == ["refs"] and method == "GET":
                return self._refs(req, rec, repo)
            if rest and rest[0] == "commits" and len(rest) >= 2 and method == "GET":
                revision, _ = self._split_revision(rest[1:])
                return self._commits(rec, repo, revision)
            return self._json(rec, 404, {"error": "Sorry, we can't find the page."})

        return _Route("api", [path], run)

    def _access(
        self,
        request: web.Request,
        record: HubRequestRecord,
        repo_type: str,
        repo_id: str,
        *,
        download: bool,
    ) -> tuple[_Repo | None, web.StreamResponse | None]:
        token = _bearer(request)
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            known = self._known_tokens()
        if token is not None and self.reject_unknown_tokens and token not in known:
            return None, self._error(record, 401, None, _INVALID_CREDENTIALS)
        not_found_status = 401 if token is None else 404
        if repo is None or (repo.private and not self._allowed(repo, token)):
            return None, self._error(
                record, not_found_status, "RepoNotFound", "Repository not found"
            )
        if download and repo.gated and not self._allowed(repo, token):
            kind = "model" if repo_type == "model" else repo_type
            if token is None:
                message = (
                    f"Access to {kind} {repo_id} is restricted. You must have access to it and be "
                    "authenticated to access it. Please log in."
                )
                return None, self._error(record, 401, "GatedRepo", message)
            message = (
                f"Access to {kind} {repo_id} is restricted and you are not in the authorized "
                f"list. Visit {self.url}/{self._url_prefix(repo)}{repo_id} to ask for access."
            )
            return None, self._error(record, 403, "GatedRepo", message)
        return repo, None

    @staticmethod
    def _url_prefix(repo: _Repo) -> str:
        return "datasets/" if repo.repo_type == "dataset" else ""

    def _revision_or_error(
        self, record: HubRequestRecord, repo: _Repo, revision: str, *, exact: bool = False
    ) -> tuple[_Commit | None, web.StreamResponse | None]:
        """``exact``: ``revision`` must be a full commit sha (no branch, tag, abbreviation)."""
        with self._lock:
            commit = repo.commits.get(revision) if exact else self._resolve_revision(repo, revision)
        if commit is None:
            return None, self._error(record, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit, None

    def _info(
        self, request: web.Request, record: HubRequestRecord, repo: _Repo, revision: str
    ) -> web.StreamResponse:
        commit, error = self._revision_or_error(record, repo, revision)
        if error is not None:
            return error
        assert commit is not None
        blobs = _truthy(request.query.get("blobs"))
        siblings = []
        for path, info in commit.files.items():
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling["blobId"] = info.blob_id
                sibling["size"] = info.size
                if info.lfs:
                    sibling["lfs"] = {
                        "sha256": info.sha256,
                        "size": info.size,
                        "pointerSize": info.pointer_size,
                    }
            siblings.append(sibling)
        author = repo.repo_id.split("/")[0] if "/" in repo.repo_id else None
        data: dict[str, Any] = {
            "_id": hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": author,
            "sha": commit.sha,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": repo.gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(f.size for f in commit.files.values()),
        }
        if repo.repo_type == "model":
            data["modelId"] = repo.repo_id
            data["spaces"] = []
            if repo.pipeline_tag is not None:
                data["pipeline_tag"] = repo.pipeline_tag
                data["tags"].append(repo.pipeline_tag)
            if repo.library_name is not None:
                data["library_name"] = repo.library_name
                data["tags"].append(repo.library_name)
        else:
            data["description"] = ""
            data["citation"] = ""
            data["paperswithcode_id"] = None
        return self._json(record, 200, data)

    def _tree_entries(
        self, repo: _Repo, commit: _Commit, prefix: str, recursive: bool, expand: bool
    ) -> list[dict[str, Any]] | None:
        """Entries below ``prefix`` ("" = root); None if ``prefix`` is not a directory."""
        _, dir_ids = _git_tree(commit.files)
        if prefix and prefix not in dir_ids:
            return None
        base = prefix + "/" if prefix else ""
        entries: list[dict[str, Any]] = []
        for directory, oid in dir_ids.items():
            if not directory or not directory.startswith(base):
                continue
            if not recursive and "/" in directory[len(base) :]:
                continue
            entries.append(self._dir_entry(repo, commit, directory, oid, expand))
        for path, info in commit.files.items():
            if not path.startswith(base) or (not recursive and "/" in path[len(base) :]):
                continue
            entries.append(self._file_entry(repo, commit, path, info, expand))
        entries.sort(key=lambda e: e["path"])
        return entries

    def _file_entry(
        self, repo: _Repo, commit: _Commit, path: str, info: HubFile, expand: bool
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "type": "file",
            "oid": info.blob_id,
            "size": info.size,
            "path": path,
        }
        if info.lfs:
            entry["lfs"] = {"oid": info.sha256, "size": info.size, "pointerSize": info.pointer_size}
        if expand:
            entry["lastCommit"] = self._last_commit(repo, commit, lambda c: c.files.get(path))
            entry["securityFileStatus"] = {
                "status": "safe",
                "avScan": {"virusFound": False, "virusNames": None},
                "pickleImportScan": None,
            }
        return entry

    def _dir_entry(
        self, repo: _Repo, commit: _Commit, path: str, oid: str, expand: bool
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "directory", "oid": oid, "size": 0, "path": path}
        if expand:
            entry["lastCommit"] = self._last_commit(
                repo, commit, lambda c: _git_tree(c.files)[1].get(path)
            )
        return entry

    @staticmethod
    def _last_commit(
        repo: _Repo, commit: _Commit, identity: Callable[[_Commit], object]
    ) -> dict[str, str]:
        """The oldest ancestor commit since which ``identity`` has not changed."""
        current = commit
        value = identity(commit)
        while current.parent is not None:
            parent = repo.commits[current.parent]
            if identity(parent) != value:
                break
            current = parent
        return {"id": current.sha, "title": current.title, "date": current.date}

    def _tree(
        self,
        request: web.Request,
        record: HubRequestRecord,
        repo: _Repo,
        revision: str,
        sub: str,
    ) -> web.StreamResponse:
        commit, error = self._revision_or_error(record, repo, revision)
        if error is not None:
            return error
        assert commit is not None
        recursive = _truthy(request.query.get("recursive"))
        expand = _truthy(request.query.get("expand"))
        entries = self._tree_entries(repo, commit, sub.strip("/"), recursive, expand)
        if entries is None:
            return self._error(record, 404, "EntryNotFound", f"{sub} does not exist on {revision}")
        page_size = max(1, self.tree_page_size if not expand else min(50, self.tree_page_size))
        try:
            cursor = int(request.query.get("cursor", "0"))
        except ValueError:
            cursor = 0
        page = entries[cursor : cursor + page_size]
        headers: dict[str, str] = {}
        if cursor + page_size < len(entries):
            query = dict(request.query)
            query["cursor"] = str(cursor + page_size)
            base = self.url if record.origin == "hub" else self.cdn_url
            next_url = f"{base}{request.rel_url.raw_path}?{urllib.parse.urlencode(query)}"
            headers["Link"] = f'<{next_url}>; rel="next"'
        return self._json(record, 200, page, headers=headers)

    def _paths_info(
        self,
        record: HubRequestRecord,
        repo: _Repo,
        revision: str,
        paths: list[str],
        expand: bool,
    ) -> web.StreamResponse:
        commit, error = self._revision_or_error(record, repo, revision)
        if error is not None:
            return error
        assert commit is not None
        _, dir_ids = _git_tree(commit.files)
        result: list[dict[str, Any]] = []
        for raw_path in paths:
            p = raw_path.strip("/")
            if p in commit.files:
                result.append(self._file_entry(repo, commit, p, commit.files[p], expand))
            elif p and p in dir_ids:
                result.append(self._dir_entry(repo, commit, p, dir_ids[p], expand))
        return self._json(record, 200, result)

    def _refs(
        self, request: web.Request, record: HubRequestRecord, repo: _Repo
    ) -> web.StreamResponse:
        with self._lock:
            branches = dict(repo.branches)
            tags = dict(repo.tags)
        include_prs = _truthy(request.query.get("include_prs"))

        def ref(name: str, full: str, target: str) -> dict[str, str]:
            return {"name": name, "ref": full, "targetCommit": target}

        data: dict[str, Any] = {
            "branches": [
                ref(n, f"refs/heads/{n}", t)
                for n, t in sorted(branches.items())
                if not n.startswith("refs/")
            ],
            "converts": [],
            "tags": [ref(n, f"refs/tags/{n}", t) for n, t in sorted(tags.items())],
        }
        if include_prs:
            data["pullRequests"] = [
                ref(n, n, t) for n, t in sorted(branches.items()) if n.startswith("refs/pr/")
            ]
        return self._json(record, 200, data)

    def _commits(self, record: HubRequestRecord, repo: _Repo, revision: str) -> web.StreamResponse:
        commit, error = self._revision_or_error(record, repo, revision)
        if error is not None:
            return error
        items: list[dict[str, Any]] = []
        current: _Commit | None = commit
        while current is not None:
            items.append(
                {
                    "id": current.sha,
                    "title": current.title,
                    "message": current.message,
                    "authors": [{"user": "hf-test", "avatar": ""}],
                    "date": current.date,
                }
            )
            current = repo.commits[current.parent] if current.parent else None
        return self._json(record, 200, items)

    def _whoami(self, request: web.Request, record: HubRequestRecord) -> web.StreamResponse:
        token = _bearer(request)
        with self._lock:
            known = self._known_tokens()
        if token is None or token not in known:
            message = _INVALID_CREDENTIALS if token is not None else "Invalid username or password."
            return self._error(record, 401, None, message)
        return self._json(
            record,
            200,
            {
                "type": "user",
                "id": "0" * 24,
                "name": "hf-test",
                "fullname": "HF Test",
                "email": None,
                "emailVerified": False,
                "isPro": False,
                "canPay": False,
                "periodEnd": None,
                "avatarUrl": "",
                "orgs": [],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": "test", "role": "read"},
                },
            },
        )

    # ------------------------------------------------------------------ resolve / CDN routes

    def _file_key(self, repo_type: str, repo_id: str, path: str) -> str:
        prefix = "datasets/" if repo_type == "dataset" else ""
        return f"{prefix}{repo_id}\0{path}"

    def _route_resolve(
        self, repo_type: str, repo_segs: list[str], rest: list[str], path: str
    ) -> _Route:
        revision, file_parts = self._split_revision(rest)
        repo_id, file_path = "/".join(repo_segs), "/".join(file_parts)
        return self._route_file("resolve", repo_type, repo_id, revision, file_path, path)

    def _route_resolve_cache(self, segs: list[str], path: str) -> _Route:
        repo_type = _PLURAL_TYPE[segs[0]]
        rest = segs[1:]
        # rest = org/name/<sha>/path... or name/<sha>/path...
        split = 2 if len(rest) >= 4 and len(rest[2]) == 40 else 1
        repo_id = "/".join(rest[:split])
        sha = rest[split] if len(rest) > split else ""
        file_path = "/".join(rest[split + 1 :])
        return self._route_file("resolve-cache", repo_type, repo_id, sha, file_path, path)

    def _route_file(
        self, kind: str, repo_type: str, repo_id: str, revision: str, file_path: str, path: str
    ) -> _Route:
        """A small file's bytes, or (``resolve`` only) a redirect: LFS to the CDN, and small
        files to ``resolve-cache`` if ``small_file_redirect``. ``resolve-cache`` takes only a
        full commit sha and no LFS file."""
        key = self._file_key(repo_type, repo_id, file_path)
        cache = kind == "resolve-cache"

        async def run(
            req: web.Request, rec: HubRequestRecord, faults: HubFaults | None
        ) -> web.StreamResponse:
            repo, denied = self._access(req, rec, repo_type, repo_id, download=True)
            if denied is not None:
                return denied
            assert repo is not None
            commit, error = self._revision_or_error(rec, repo, revision, exact=cache)
            if error is not None:
                return error
            assert commit is not None
            info = commit.files.get(file_path)
            if info is None or (cache and info.lfs):
                return self._error(
                    rec,
                    404,
                    "EntryNotFound",
                    "Entry not found",
                    headers={"X-Repo-Commit": commit.sha},
                )
            common = {"X-Repo-Commit": commit.sha, "Accept-Ranges": "bytes"}
            if not cache and info.lfs:
                return self._lfs_redirect(rec, repo, commit, file_path, info, common)
            if not cache and self.small_file_redirect:
                location = (
                    f"/api/resolve-cache/{_TYPE_PLURAL[repo_type]}/{repo_id}/{commit.sha}/"
                    + urllib.parse.quote(file_path)
                )
                headers = {**common, "Location": location}
                return self._plain(
                    rec, 307, f"Temporary Redirect. Redirecting to {location}", headers
                )
            return await self._serve_file(req, rec, info, common, faults, key, allow_gzip=True)

        file_key = key.replace("\0", "/")
        return _Route(kind, [path, file_path, file_key], run, file_key, file_path)

    def _lfs_redirect(
        self,
        record: HubRequestRecord,
        repo: _Repo,
        commit: _Commit,
        file_path: str,
        info: HubFile,
        common: dict[str, str],
    ) -> web.StreamResponse:
        base = self.cdn_url if self.cdn_mode == "origin" else self.url
        query = urllib.parse.urlencode(
            {
                "repo": f"{_TYPE_PLURAL[repo.repo_type]}/{repo.repo_id}",
                "file": file_path,
                "commit": commit.sha,
                "response-content-disposition": _content_disposition(file_path),
            }
        )
        location = f"{base}/cdn/lfs/{info.sha256}?{query}"
        body = f"Found. Redirecting to {location}"
        weak = hashlib.sha1(body.encode()).hexdigest()[:27]
        headers = {
            **common,
            "Location": location,
            "X-Linked-Etag": f'"{info.sha256}"',
            "X-Linked-Size": str(info.size),
            "ETag": f'W/"{len(body):x}-{weak}"',
        }
        return self._plain(record, 302, body, headers)

    def _route_cdn(self, request: web.Request, sha256: str, path: str) -> _Route:
        query = request.query
        repo_part = query.get("repo", "")
        file_path = query.get("file", "")
        names = [path]
        key: str | None = None
        if repo_part and file_path:
            plural, _, repo_id = repo_part.partition("/")
            key = self._file_key(_PLURAL_TYPE.get(plural, "model"), repo_id, file_path)
            names += [file_path, key.replace("\0", "/")]
        commit_sha = query.get("commit")

        async def run(
            req: web.Request, rec: HubRequestRecord, faults: HubFaults | None
        ) -> web.StreamResponse:
            if req.method not in ("GET", "HEAD"):
                return self._plain(rec, 405, "Method Not Allowed", {"Allow": "GET, HEAD"})
            if self.cdn_reject_auth and "Authorization" in req.headers:
                return self._plain(
                    rec,
                    400,
                    "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
                    "Signature query string parameter or the Authorization header should be "
                    "specified",
                )
            with self._lock:
                info = self._lfs.get(sha256)
            if info is None:
                return self._plain(rec, 404, "NoSuchKey")
            headers = {
                "Accept-Ranges": "bytes",
                "Content-Disposition": _content_disposition(file_path or sha256),
            }
            if commit_sha and self.cdn_mode == "path":
                headers["X-Repo-Commit"] = commit_sha
            return await self._serve_file(
                req, rec, info, headers, faults, key or f"cdn/lfs\0{sha256}", allow_gzip=False
            )

        file_key = key.replace("\0", "/") if key else None
        return _Route("cdn", names, run, file_key, file_path or None)

    # ------------------------------------------------------------------ responses

    def _json(
        self,
        record: HubRequestRecord,
        status: int,
        data: Any,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        record.status = status
        return web.Response(
            status=status,
            text=json.dumps(data),
            content_type="application/json",
            headers=dict(headers or {}),
        )

    def _plain(
        self,
        record: HubRequestRecord,
        status: int,
        text: str,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        record.status = status
        return web.Response(status=status, text=text, headers=dict(headers or {}))

    def _error(
        self,
        record: HubRequestRecord,
        status: int,
        code: str | None,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        all_headers = {"X-Error-Message": message, **(headers or {})}
        if code is not None:
            all_headers["X-Error-Code"] = code
        return self._json(record, status, {"error": message}, headers=all_headers)

    async def _serve_file(
        self,
        request: web.Request,
        record: HubRequestRecord,
        info: HubFile,
        extra_headers: Mapping[str, str],
        faults: HubFaults | None,
        key: str,
        *,
        allow_gzip: bool,
    ) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return self._plain(record, 405, "Method Not Allowed", {"Allow": "GET, HEAD"})
        size = info.size
        headers = {
            **extra_headers,
            "ETag": f'"{info.etag}"',
            "Last-Modified": info.last_modified,
            "Content-Type": "application/octet-stream",
        }
        if (
            allow_gzip
            and self.gzip_small_files
            and request.method == "GET"
            and "Range" not in request.headers
            and "gzip" in request.headers.get("Accept-Encoding", "").lower()
        ):
            data = await self._read_all(info)
            flip = faults.flip_byte if faults is not None else None
            if flip is not None and 0 <= flip < size:
                buf = bytearray(data)
                buf[flip] ^= 0xFF
                data = bytes(buf)
            compressed = gzip.compress(data)
            headers["Content-Encoding"] = "gzip"
            resp = web.StreamResponse(status=200, headers=headers)
            resp.enable_chunked_encoding()
            record.status = 200
            await resp.prepare(request)
            blob = Blob(compressed)
            return await self._stream_body(
                request, resp, record, blob, key, 0, len(compressed), faults, None
            )

        return await self._serve_body(
            request,
            record,
            info,
            key,
            size=size,
            headers=headers,
            faults=faults,
            unsatisfiable_text="Range Not Satisfiable",
            sendfile=True,
        )

    @staticmethod
    async def _read_all(info: HubFile) -> bytes:
        if info.data is not None:
            return info.data
        assert info.file is not None
        return await asyncio.get_running_loop().run_in_executor(None, info.file.read_bytes)


def _content_disposition(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    quoted = urllib.parse.quote(name)
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "_")
    return f"attachment; filename*=UTF-8''{quoted}; filename=\"{ascii_name}\";"


# ---------------------------------------------------------------------- pytest fixtures


@pytest.fixture
def hfhub() -> Iterator[HfHubServer]:
    """A started HfHubServer (token "hf_test_token"), stopped after the test."""
    with HfHubServer() as server:
        yield server


@pytest.fixture
def hf_endpoint(
    hfhub: HfHubServer, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> HfHubServer:
    """Point huggingface_hub (this process and subprocesses) at ``hfhub``; returns the server.

    Sets ``HF_ENDPOINT``, ``HF_HOME``/``HF_HUB_CACHE`` (below tmp_path), ``HF_HUB_DISABLE_XET``,
    ``HF_HUB_DISABLE_TELEMETRY``, ``HF_HUB_DISABLE_IMPLICIT_TOKEN`` (pass tokens explicitly),
    ``HF_HUB_DISABLE_PROGRESS_BARS``, ``HF_HUB_OFFLINE=0``, and removes ``HF_TOKEN``. Because
    huggingface_hub copies these into ``huggingface_hub.constants`` when it is imported, the
    constants are monkeypatched too (``ENDPOINT``, ``HUGGINGFACE_CO_URL_TEMPLATE``,
    ``HF_URL_HOSTS``, the cache/home paths, the flags) and so are ``utils._http._HUB_ORIGINS``
    and the in-process progress-bar switch.
    """
    import importlib

    constants = importlib.import_module("huggingface_hub.constants")
    hf_http = importlib.import_module("huggingface_hub.utils._http")
    # (``huggingface_hub.utils.tqdm`` the attribute is the tqdm class, not the module)
    hf_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")

    hf_home = tmp_path / "hf_home"
    hub_cache = hf_home / "hub"
    hub_cache.mkdir(parents=True, exist_ok=True)
    env = {
        "HF_ENDPOINT": hfhub.url,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hub_cache),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_OFFLINE": "0",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)

    url = hfhub.url
    patches: dict[str, Any] = {
        "ENDPOINT": url,
        "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": frozenset(constants.HF_URL_HOSTS | {hfhub.host}),
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hub_cache),
        "HUGGINGFACE_HUB_CACHE": str(hub_cache),
        "HF_ASSETS_CACHE": str(hf_home / "assets"),
        "HF_XET_CACHE": str(hf_home / "xet"),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(hf_home / ".agent_harnesses.json"),
        "CHECK_FOR_UPDATE_DONE_PATH": str(hf_home / ".check_for_update_done"),
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": True,
        "HF_HUB_DISABLE_UPDATE_CHECK": True,
        "HF_HUB_OFFLINE": False,
    }
    for name, value in patches.items():
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(
        hf_http, "_HUB_ORIGINS", frozenset(hf_http._HUB_ORIGINS | {hf_http._url_origin(url)})
    )
    monkeypatch.setattr(hf_tqdm, "progress_bar_states", {"_global": False})
    return hfhub


# ---------------------------------------------------------------------- standalone mode


def _files_below(root: pathlib.Path) -> dict[str, bytes | pathlib.Path]:
    files: dict[str, bytes | pathlib.Path] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            rel = path.relative_to(root).as_posix()
            if rel.split("/")[0] in (".git", ".cache"):
                continue
            files[rel] = path
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.servers.hfhub")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cdn-port", type=int, default=0)
    parser.add_argument("--repo-dir", type=pathlib.Path, required=True)
    parser.add_argument("--repo-id", required=True)
    parser.add_argument("--repo-type", choices=("model", "dataset"), default="model")
    parser.add_argument("--branch", default="main")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--token", default="hf_test_token")
    parser.add_argument("--lfs-threshold", type=int, default=10_000)
    parser.add_argument("--cdn-mode", choices=("origin", "path"), default="origin")
    args = parser.parse_args(argv)
    if not args.repo_dir.is_dir():
        parser.error(f"not a directory: {args.repo_dir}")

    exit_on_sigterm()
    server = HfHubServer(
        host=args.host,
        port=args.port,
        cdn_port=args.cdn_port,
        token=args.token or None,
        lfs_threshold=args.lfs_threshold,
        cdn_mode=args.cdn_mode,
    )
    server.create_repo(args.repo_id, repo_type=args.repo_type, private=args.private)
    sha = server.commit(
        args.repo_id,
        _files_below(args.repo_dir),
        branch=args.branch,
        repo_type=args.repo_type,
        message="Upload from --repo-dir",
    )
    server.serve_until_killed(lambda: f"READY {server.url}\nCOMMIT {sha}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
