"""`source: huggingface` — a model or dataset repo at a branch, tag or commit.

huggingface_hub does what it is best at (resolving the revision to a commit, listing
files with sizes and digests, honouring HF_ENDPOINT and tokens); the bytes go through
the core's transfer engine, so downloads resume across restarts and every byte is
verified: sha256 for LFS files, the git blob sha1 for the others.

huggingface_hub is imported lazily: importing it costs about half a second, and a pass
over pinned, available models never needs it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from mmd import __version__
from mmd.errors import OfflineError, SourceError
from mmd.hookspecs import KeyRule, Source, SourceContext, hookimpl
from mmd.types import ModelSpec, Release, RemoteFile

DEFAULT_ENDPOINT = "https://huggingface.co"
_COMMIT = re.compile(r"[0-9a-f]{40}")
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_ATTEMPTS = 5
# Bounded so a pass (and Ctrl-C, which waits for this worker thread) never hangs for long.
RETRY_AFTER_CAP = 60.0
REQUEST_TIMEOUT = 30.0


def _options(spec: ModelSpec) -> tuple[str, str, str]:
    options = spec.options
    repo = str(options.get("repo") or spec.model_id)
    return repo, str(options.get("revision") or "main"), str(options.get("repo_type") or "model")


def _endpoint(ctx: SourceContext) -> str:
    # Read at call time: huggingface_hub's own constants are frozen at its import.
    return (ctx.env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _offline(ctx: SourceContext) -> bool:
    value = ctx.env.get("HF_HUB_OFFLINE") or ctx.env.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _token(ctx: SourceContext) -> str | None:
    if ctx.settings.hf_token is not None:
        return ctx.settings.hf_token.reveal()
    from huggingface_hub import get_token  # a `hf auth login` on this machine

    return get_token()


def pinned_version(spec: ModelSpec) -> str | None:
    """A full commit sha names immutable content: no need to ask the hub again."""
    revision = _options(spec)[1]
    return revision if _COMMIT.fullmatch(revision) else None


def _repo_url(endpoint: str, repo: str, repo_type: str) -> str:
    return f"{endpoint}/{repo}" if repo_type == "model" else f"{endpoint}/{repo_type}s/{repo}"


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return min(float(value), RETRY_AFTER_CAP) if value else None
    except ValueError:
        return None


def _fetch_info(repo: str, revision: str, repo_type: str, endpoint: str, token: str | None) -> Any:
    """`repo_info(files_metadata=True)`, retried on 429/5xx with Retry-After (no hot loop)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

    def retryable(exc: BaseException) -> bool:
        response = getattr(exc, "response", None)
        return (
            isinstance(exc, HfHubHTTPError)
            and getattr(response, "status_code", None) in _RETRY_STATUSES
        )

    backoff = wait_random_exponential(multiplier=0.5, max=30)

    def wait(state: Any) -> float:
        exc = state.outcome.exception() if state.outcome else None
        after = _retry_after(exc) if exc else None
        return after if after is not None else backoff(state)

    api = HfApi(
        endpoint=endpoint, token=token or False, library_name="mmd", library_version=__version__
    )
    for attempt in Retrying(
        retry=retry_if_exception(retryable),
        stop=stop_after_attempt(MAX_ATTEMPTS),
        wait=wait,
        reraise=True,
    ):
        with attempt:
            return api.repo_info(
                repo,
                revision=revision,
                repo_type=repo_type,
                files_metadata=True,
                timeout=REQUEST_TIMEOUT,
            )
    raise AssertionError("unreachable")


def _explain(exc: Exception, repo: str, revision: str, repo_type: str, endpoint: str) -> str:
    """One line that says what failed and what to do; never the token."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    url = _repo_url(endpoint, repo, repo_type)
    if isinstance(exc, GatedRepoError):
        return f"{repo} is gated: accept the licence at {url} and set HF_TOKEN"
    if isinstance(exc, RepositoryNotFoundError):
        return (
            f"{repo_type} repo {repo} not found at {endpoint}, or it is private and no "
            "token with access was given (set HF_TOKEN)"
        )
    if isinstance(exc, RevisionNotFoundError):
        return f"revision {revision!r} not found in {repo}"
    if isinstance(exc, HfHubHTTPError):
        status = getattr(exc.response, "status_code", "?")
        if status == 429:
            return f"rate-limited by {endpoint} (HTTP 429) resolving {repo}; will retry next pass"
        if status in (401, 403):
            return f"no access to {repo} (HTTP {status}); check HF_TOKEN"
        return f"{endpoint} answered HTTP {status} for {repo}@{revision}"
    text = " ".join(str(exc).split())
    return f"cannot reach {endpoint} to resolve {repo}: {type(exc).__name__}: {text}"


def _check_gated_access(
    path: str,
    commit: str,
    repo: str,
    revision: str,
    repo_type: str,
    endpoint: str,
    token: str | None,
) -> None:
    """A gated repo lists its files to anyone; ask for one file's metadata (a HEAD) so a
    missing licence acceptance is one clear line now, not a 401 per file later."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo, path, repo_type=repo_type, revision=commit, endpoint=endpoint)
    try:
        get_hf_file_metadata(url, token=token or False)
    except Exception as exc:
        raise SourceError(_explain(exc, repo, revision, repo_type, endpoint)) from None


def resolve(spec: ModelSpec, ctx: SourceContext) -> Release:
    repo, revision, repo_type = _options(spec)
    endpoint = _endpoint(ctx)
    if _offline(ctx):
        raise OfflineError(
            f"HF_HUB_OFFLINE is set: cannot resolve {repo}@{revision}",
            hint="unset HF_HUB_OFFLINE, or pin a commit that is already in storage",
        )
    token = _token(ctx)
    try:
        info = _fetch_info(repo, revision, repo_type, endpoint, token)
    except Exception as exc:
        raise SourceError(_explain(exc, repo, revision, repo_type, endpoint)) from None

    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import filter_repo_objects

    siblings = list(
        filter_repo_objects(
            info.siblings or [],
            allow_patterns=spec.options.get("include"),
            ignore_patterns=spec.options.get("exclude"),
            key=lambda s: s.rfilename,
        )
    )
    if not siblings:
        raise SourceError(f"no files in {repo}@{revision} match include/exclude")
    if getattr(info, "gated", False):
        _check_gated_access(
            siblings[0].rfilename, info.sha, repo, revision, repo_type, endpoint, token
        )
    headers = {"User-Agent": f"mmd/{__version__}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    files = []
    for sibling in siblings:
        lfs = sibling.lfs
        files.append(
            RemoteFile(
                path=sibling.rfilename,
                size=sibling.size,
                sha256=lfs.sha256 if lfs else None,
                git_sha1=None if lfs else sibling.blob_id,
                url=hf_hub_url(
                    repo,
                    sibling.rfilename,
                    repo_type=repo_type,
                    revision=info.sha,
                    endpoint=endpoint,
                ),
                headers=headers,
            )
        )
    pipeline_tag = getattr(info, "pipeline_tag", None)
    metadata = {
        "repo": repo,
        "repo_type": repo_type,
        "revision": revision,
        "pipeline_tag": pipeline_tag,
        "library_name": getattr(info, "library_name", None),
    }
    return Release(
        version=info.sha,
        files=tuple(files),
        metadata={k: v for k, v in metadata.items() if v is not None},
        model_type=pipeline_tag,
    )


def validate(options: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    repo_type = options.get("repo_type", "model")
    if repo_type not in ("model", "dataset"):
        yield "repo_type", f"expected `model` or `dataset`, got {repo_type!r}"
    repo = options.get("repo")
    if repo is not None and not re.fullmatch(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?", str(repo)):
        yield "repo", f"expected a repo id like `org/name`, got {repo!r}"


@hookimpl
def mmd_sources() -> list[Source]:
    return [
        Source(
            name="huggingface",
            resolve=resolve,
            validate=validate,
            pinned_version=pinned_version,
            description="a HuggingFace Hub model or dataset repo",
            keys={
                "repo": KeyRule("str", help="repo id, e.g. org/name (default: the model id)"),
                "revision": KeyRule("str", help="branch, tag or commit sha (default: main)"),
                "repo_type": KeyRule("str", help="model (default) or dataset"),
                "include": KeyRule("globs", help="allow_patterns: files to download"),
                "exclude": KeyRule("globs", help="ignore_patterns: files to skip"),
            },
        )
    ]
