"""`source: github` — release assets, or files of a repository at a branch, tag or commit.

Two modes, one per manifest entry:
- `release:` a tag or `latest`, `assets:` globs on asset names. Each asset is verified by
  the API's `digest` (`sha256:…`) when GitHub gives one, else by the manifest's `sha256`
  (one asset), else by its size only (a warning says so).
- `ref:` a branch, tag or commit, `files:` globs on paths in the repository. The ref is
  resolved to a commit sha (a full sha is pinned: no request once in storage); each file
  is verified by its git blob sha1, and Git LFS pointers are followed to the real content
  (verified by the LFS object's sha256) through the LFS batch API.

Bytes go through the core's transfer engine. The token (`GITHUB_TOKEN`, `github_token`,
or the `github_token` credential) goes to the API only: the core drops it when a download
is redirected to another origin (GitHub's asset CDN).
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from fnmatch import fnmatch
from typing import Any

from mmd import __version__
from mmd.errors import OfflineError, SourceError
from mmd.globs import select
from mmd.hookspecs import KeyRule, Source, SourceContext, hookimpl
from mmd.types import ModelSpec, Release, RemoteFile
from mmd.urls import origin

log = logging.getLogger(__name__)

DEFAULT_API = "https://api.github.com"
_COMMIT = re.compile(r"[0-9a-f]{40}")
_LFS_SPEC = b"version https://git-lfs.github.com/spec/v1"
LFS_POINTER_MAX = 1024  # a pointer file is never larger (git-lfs spec)
REQUEST_TIMEOUT = 30.0
# Waiting out a short rate limit is better than failing. A longer one fails this model's
# check (one line, with the reset time): a resolve thread cannot be interrupted, and the
# whole pass, `mmd plan` and Ctrl-C would wait for it. The daemon's backoff retries later.
RATE_LIMIT_WAIT_CAP = 60.0
MAX_ATTEMPTS = 4


class _SameOriginCredentials(urllib.request.HTTPRedirectHandler):
    """urllib keeps `Authorization` on every redirect; keep it only within one origin."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and origin(newurl) != origin(req.full_url):
            new.remove_header("Authorization")
        return new


_OPENER = urllib.request.build_opener(_SameOriginCredentials)


class _Api:
    def __init__(self, spec: ModelSpec, ctx: SourceContext) -> None:
        options = spec.options
        self.repo = str(options.get("repo") or spec.model_id)
        trusted = str(ctx.env.get("GITHUB_API_URL") or DEFAULT_API).rstrip("/")
        self.base = str(options.get("api_url") or trusted).rstrip("/")
        # The node's token goes only to the API the node is configured for: a manifest
        # entry or an API request naming another `api_url` must not collect it.
        self.token = _token(ctx) if origin(self.base) == origin(trusted) else None

    def headers(self, accept: str = "application/vnd.github+json") -> dict[str, str]:
        headers = {
            "Accept": accept,
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": f"mmd/{__version__}",
        }
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def url(self, path: str, **query: str) -> str:
        quoted = urllib.parse.quote(path, safe="/")
        return f"{self.base}{quoted}" + (f"?{urllib.parse.urlencode(query)}" if query else "")

    def get(self, path: str, accept: str = "application/vnd.github+json", **query: str) -> bytes:
        return self.request("GET", self.url(path, **query), None, self.headers(accept))

    def get_json(self, path: str, **query: str) -> Any:
        return self.parse(self.get(path, **query), path)

    def parse(self, data: bytes, what: str) -> Any:
        try:
            return json.loads(data)
        except ValueError:
            raise SourceError(
                f"{self.base} answered {what} with something that is not JSON",
                hint="is api_url the API's base (e.g. https://ghe.example.com/api/v3)?",
            ) from None

    def request(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]
    ) -> bytes:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            request = urllib.request.Request(url, data=body, method=method, headers=dict(headers))
            try:
                with _OPENER.open(request, timeout=REQUEST_TIMEOUT) as response:
                    return bytes(response.read())
            except urllib.error.HTTPError as exc:
                wait = _rate_limit_wait(exc)
                if wait is not None and wait > RATE_LIMIT_WAIT_CAP:
                    until = time.strftime("%H:%M:%S", time.localtime(time.time() + wait))
                    hint = "set GITHUB_TOKEN for a higher limit" if not self.token else None
                    raise SourceError(f"GitHub rate limit until {until}", hint=hint) from None
                if wait is not None and attempt < MAX_ATTEMPTS:
                    log.warning(
                        "%s: GitHub rate limit; waiting %.0fs for it to reset%s",
                        self.repo,
                        wait,
                        "" if self.token else " (set GITHUB_TOKEN for a higher limit)",
                    )
                    time.sleep(wait)
                    continue
                if exc.code >= 500 and attempt < MAX_ATTEMPTS:
                    time.sleep(min(2.0**attempt, 10.0))
                    continue
                raise _http_error(self, exc, url) from None
            except (urllib.error.URLError, OSError) as exc:
                refused = isinstance(getattr(exc, "reason", exc), ConnectionRefusedError)
                if attempt < MAX_ATTEMPTS and not refused:
                    time.sleep(min(2.0**attempt, 10.0))
                    continue
                reason = getattr(exc, "reason", exc)
                raise OfflineError(f"cannot reach {self.base}: {reason}") from None
        raise SourceError(f"GitHub did not answer after {MAX_ATTEMPTS} tries")


def _token(ctx: SourceContext) -> str | None:
    token = getattr(ctx.settings, "github_token", None)
    if token is not None:
        return str(token.reveal())
    return ctx.env.get("GITHUB_TOKEN") or None


def _rate_limit_wait(exc: urllib.error.HTTPError) -> float | None:
    """Seconds until a rate limit lifts, or None when this is no rate-limit answer."""
    if exc.code not in (403, 429):
        return None
    headers = exc.headers
    retry_after = headers.get("Retry-After")
    if retry_after:
        try:
            seconds = float(retry_after)
        except ValueError:
            try:
                seconds = email.utils.parsedate_to_datetime(retry_after).timestamp() - time.time()
            except (TypeError, ValueError):
                seconds = 60.0
    elif headers.get("X-RateLimit-Remaining") == "0" and headers.get("X-RateLimit-Reset"):
        seconds = float(headers["X-RateLimit-Reset"]) - time.time()
    else:
        return None
    return max(1.0, seconds)


def _http_error(api: _Api, exc: urllib.error.HTTPError, url: str) -> SourceError:
    try:
        message = json.loads(exc.read()).get("message") or exc.reason
    except (ValueError, AttributeError, OSError):
        message = exc.reason
    if exc.code == 401:
        return SourceError("GitHub rejected the token (401)", hint="check GITHUB_TOKEN")
    if exc.code in (403, 429):
        hint = "set GITHUB_TOKEN" if not api.token else "wait for the limit to reset"
        return SourceError(f"GitHub refused: {exc.code} {message}", hint=hint)
    if exc.code == 404:
        return _NotFound(f"{url_path(url)} not found on {api.base}")
    return SourceError(f"GitHub answered {exc.code} {message} for {url_path(url)}")


class _NotFound(SourceError):
    pass


def _missing_repo(api: _Api) -> SourceError:
    """After a 404: is it the repository, or only the thing asked for in it?"""
    hint = None if api.token else "if it is private, set GITHUB_TOKEN"
    return SourceError(f"repository {api.repo} not found on {api.base}", hint=hint)


def _repo_exists(api: _Api) -> bool:
    try:
        api.get_json(f"/repos/{api.repo}")
    except _NotFound:
        return False
    return True


def url_path(url: str) -> str:
    return urllib.parse.urlsplit(url).path


# -- releases ------------------------------------------------------------------------


def _resolve_release(spec: ModelSpec, api: _Api) -> Release:
    tag = str(spec.options["release"])
    path = f"/repos/{api.repo}/releases/" + ("latest" if tag == "latest" else f"tags/{tag}")
    try:
        release = api.get_json(path)
    except _NotFound:
        if not _repo_exists(api):
            raise _missing_repo(api) from None
        what = "no published release" if tag == "latest" else f"no release tagged {tag!r}"
        raise SourceError(f"{what} in {api.repo}") from None
    assets = {str(a["name"]): a for a in release.get("assets") or []}
    names = select(sorted(assets), spec.options.get("assets"), None)
    if not names:
        raise SourceError(
            f"release {release.get('tag_name')} of {api.repo} has no asset matching "
            f"{spec.options.get('assets') or '*'} (assets: {', '.join(sorted(assets)) or 'none'})"
        )
    pinned = spec.options.get("sha256")
    if pinned and len(names) != 1:
        raise SourceError(f"`sha256` needs exactly one asset, {len(names)} match")
    files = []
    unverified = []
    for name in names:
        asset = assets[name]
        digest = str(asset.get("digest") or "")
        sha256 = digest[7:].lower() if digest.startswith("sha256:") else None
        if pinned and sha256 is not None and sha256 != str(pinned).lower():
            raise SourceError(
                f"{name} in release {release.get('tag_name')} of {api.repo} changed: the "
                f"manifest pins sha256 {str(pinned).lower()}, GitHub says {sha256}"
            )
        if sha256 is None and pinned:
            sha256 = str(pinned).lower()
        if sha256 is None:
            unverified.append(name)
        files.append(
            RemoteFile(
                path=name,
                size=int(asset["size"]) if asset.get("size") is not None else None,
                sha256=sha256,
                # The API's asset endpoint works for private repos too; it redirects to
                # the CDN, and the core drops the token on that cross-origin hop.
                url=str(asset["url"]),
                headers=api.headers("application/octet-stream"),
            )
        )
    if unverified:
        log.warning(
            "%s@%s: no digest for %s; only the size will be checked (add sha256: to the "
            "manifest for one asset)",
            api.repo,
            release.get("tag_name"),
            ", ".join(unverified),
        )
    # The tag alone is no version: assets of a release can be replaced under it.
    fingerprint = json.dumps(
        [[f.path, assets[f.path].get("id"), f.size, f.sha256] for f in files], sort_keys=True
    )
    version = f"{release.get('tag_name')}@{hashlib.sha256(fingerprint.encode()).hexdigest()[:12]}"
    metadata = {
        "repo": api.repo,
        "release": release.get("tag_name"),
        "release_id": release.get("id"),
        "unverified_assets": unverified,
    }
    return Release(version=version, files=tuple(files), metadata=metadata)


# -- files at a ref --------------------------------------------------------------------


def _commit(api: _Api, ref: str) -> str:
    try:
        return str(api.get_json(f"/repos/{api.repo}/commits/{ref}")["sha"])
    except _NotFound:
        raise _missing_repo(api) from None
    except SourceError as exc:
        if "422" in exc.message:
            raise SourceError(f"no branch, tag or commit {ref!r} in {api.repo}") from None
        raise


def _lfs_pointer(data: bytes) -> tuple[str, int] | None:
    if not data.startswith(_LFS_SPEC):
        return None
    fields = dict(
        line.split(" ", 1) for line in data.decode(errors="replace").splitlines() if " " in line
    )
    oid, size = fields.get("oid", ""), fields.get("size", "")
    if not oid.startswith("sha256:") or not size.isdigit():
        return None
    return oid[7:].lower(), int(size)


_POINTERS: dict[str, tuple[str, int] | None] = {}  # blob sha -> LFS pointer, or None
_ATTRIBUTES: dict[str, list[str]] = {}  # blob sha of a .gitattributes -> LFS patterns
_CACHE_MAX = 50_000


def _remember(cache: dict[str, Any], key: str, value: Any) -> None:
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = value


def _lfs_rules(api: _Api, sha: str, blobs: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(folder, pattern) of every `filter=lfs` line in the tree's .gitattributes files."""
    rules: list[tuple[str, str]] = []
    for path, blob in blobs.items():
        if path.rsplit("/", 1)[-1] != ".gitattributes":
            continue
        key = str(blob["sha"])
        if key not in _ATTRIBUTES:
            text = api.get(
                f"/repos/{api.repo}/contents/{path}", "application/vnd.github.raw", ref=sha
            ).decode(errors="replace")
            patterns = [
                line.split()[0]
                for line in text.splitlines()
                if line.strip()
                and not line.lstrip().startswith("#")
                and "filter=lfs" in line.split()[1:]
            ]
            _remember(_ATTRIBUTES, key, patterns)
        folder = path.rsplit("/", 1)[0] if "/" in path else ""
        rules.extend((folder, pattern) for pattern in _ATTRIBUTES[key])
    return rules


def _tracked(path: str, rules: list[tuple[str, str]]) -> bool:
    """Does a gitattributes pattern put this path under LFS (git's matching, simplified)?"""
    for folder, pattern in rules:
        if folder and not path.startswith(folder + "/"):
            continue
        rel = path[len(folder) + 1 :] if folder else path
        anchored = pattern.lstrip("/")
        if "/" not in pattern.strip("/"):
            # No slash: matches the name at any depth below the file's folder.
            if fnmatch(rel.rsplit("/", 1)[-1], anchored):
                return True
        elif fnmatch(rel, anchored.replace("**/", "*").replace("/**", "/*")):
            return True
    return False


def _lfs_downloads(
    api: _Api, pointers: Mapping[str, tuple[str, int]]
) -> dict[str, tuple[str, dict]]:
    """oid -> (href, headers) from the Git LFS batch API."""
    objects = sorted(set(pointers.values()))
    paths = {oid: path for path, (oid, _) in pointers.items()}
    info = api.get_json(f"/repos/{api.repo}")
    endpoint = f"{str(info['html_url']).rstrip('/')}.git/info/lfs/objects/batch"
    body = json.dumps(
        {
            "operation": "download",
            "transfers": ["basic"],
            "objects": [{"oid": oid, "size": size} for oid, size in objects],
        }
    ).encode()
    headers = api.headers("application/vnd.git-lfs+json")
    headers["Content-Type"] = "application/vnd.git-lfs+json"
    answer = api.parse(api.request("POST", endpoint, body, headers), "the LFS batch request")
    found: dict[str, tuple[str, dict]] = {}
    for obj in answer.get("objects") or []:
        download = (obj.get("actions") or {}).get("download")
        if obj.get("error") or not download:
            problem = (obj.get("error") or {}).get("message", "no download link")
            where = paths.get(str(obj.get("oid")), str(obj.get("oid")))
            raise SourceError(f"{where}: the LFS object of {api.repo} is unavailable: {problem}")
        found[str(obj["oid"])] = (str(download["href"]), dict(download.get("header") or {}))
    missing = [paths[oid] for oid, _ in objects if oid not in found]
    if missing:
        raise SourceError(f"{missing[0]}: the LFS server gave no download for it")
    return found


def _resolve_ref(spec: ModelSpec, api: _Api) -> Release:
    ref = str(spec.options["ref"])
    sha = ref if _COMMIT.fullmatch(ref) else _commit(api, ref)
    tree = api.get_json(f"/repos/{api.repo}/git/trees/{sha}", recursive="1")
    if tree.get("truncated"):
        raise SourceError(f"the tree of {api.repo}@{sha} is too large for one API answer")
    entries = tree.get("tree") or []
    # Mode 120000 is a symlink: its blob is the link text, which the contents API does
    # not serve (it follows the link). Such files are left out.
    blobs = {
        str(e["path"]): e
        for e in entries
        if e.get("type") == "blob" and str(e.get("mode")) != "120000"
    }
    paths = select(sorted(blobs), spec.options.get("files"), spec.options.get("exclude"))
    if not paths:
        wanted = spec.options.get("files") or "*"
        raise SourceError(f"no file in {api.repo}@{sha[:12]} matches {wanted}")
    raw = "application/vnd.github.raw"
    lfs_rules = _lfs_rules(api, sha, blobs)
    pointers: dict[str, tuple[str, int]] = {}
    for path in paths:
        blob = blobs[path]
        if int(blob.get("size") or 0) > LFS_POINTER_MAX or not _tracked(path, lfs_rules):
            continue
        # Tracked by LFS in .gitattributes: the blob should be a pointer. Blobs are
        # content-addressed, so what one says is remembered for good.
        key = str(blob["sha"])
        if key not in _POINTERS:
            data = api.get(f"/repos/{api.repo}/contents/{path}", raw, ref=sha)
            _remember(_POINTERS, key, _lfs_pointer(data))
        if (pointer := _POINTERS[key]) is not None:
            pointers[path] = pointer
    hrefs = _lfs_downloads(api, pointers) if pointers else {}
    files = []
    for path in paths:
        if path in pointers:
            oid, size = pointers[path]
            href, headers = hrefs[oid]
            files.append(RemoteFile(path=path, size=size, sha256=oid, url=href, headers=headers))
        else:
            blob = blobs[path]
            files.append(
                RemoteFile(
                    path=path,
                    size=int(blob.get("size") or 0),
                    sha256=None,
                    git_sha1=str(blob["sha"]),
                    url=api.url(f"/repos/{api.repo}/contents/{path}", ref=sha),
                    headers=api.headers(raw),
                )
            )
    metadata = {"repo": api.repo, "ref": ref, "commit": sha, "lfs_files": sorted(pointers)}
    return Release(version=sha, files=tuple(files), metadata=metadata)


# -- the source ------------------------------------------------------------------------


def resolve(spec: ModelSpec, ctx: SourceContext) -> Release:
    api = _Api(spec, ctx)
    if "release" in spec.options:
        return _resolve_release(spec, api)
    return _resolve_ref(spec, api)


def pinned_version(spec: ModelSpec) -> str | None:
    """Files at a full commit sha never change: no request once they are in storage."""
    ref = str(spec.options.get("ref") or "")
    return ref if _COMMIT.fullmatch(ref) else None


def validate(options: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    if ("release" in options) == ("ref" in options):
        yield "release", "give exactly one of `release:` (assets) or `ref:` (repository files)"
    if "assets" in options and "release" not in options:
        yield "assets", "`assets:` goes with `release:`"
    if "files" in options and "ref" not in options:
        yield "files", "`files:` goes with `ref:`"
    if "exclude" in options and "ref" not in options:
        yield "exclude", "`exclude:` goes with `ref:` (for releases, list the `assets:` to keep)"
    if "sha256" in options and "release" not in options:
        yield "sha256", "`sha256:` pins one release asset; files at a ref are checked by git"
    repo = options.get("repo")
    if repo is not None and (not isinstance(repo, str) or repo.count("/") != 1):
        yield "repo", "expected owner/name"


@hookimpl
def mmd_sources() -> list[Source]:
    return [
        Source(
            name="github",
            resolve=resolve,
            validate=validate,
            pinned_version=pinned_version,
            description="GitHub release assets, or repository files at a ref (LFS followed)",
            keys={
                "repo": KeyRule("str", help="owner/name (default: the model id)"),
                "release": KeyRule("str", help="a release tag, or `latest`"),
                "assets": KeyRule("globs", help="asset names to fetch (default: all)"),
                "ref": KeyRule("str", help="a branch, tag or commit sha"),
                "files": KeyRule("globs", help="paths in the repository (default: all)"),
                "exclude": KeyRule("globs", help="paths to leave out (with ref:)"),
                "sha256": KeyRule("sha256", help="digest of the one asset, when GitHub has none"),
                "api_url": KeyRule("url", help="API base (GitHub Enterprise); $GITHUB_API_URL"),
            },
        )
    ]
