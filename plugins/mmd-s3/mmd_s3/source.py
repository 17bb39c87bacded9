"""`source: s3` — every object below an S3 prefix, or one object.

boto3 is imported lazily: mmd loads every plugin at start, and a pass that has nothing
to fetch from S3 (or `mmd list`) should not pay half a second for it.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from mmd import __version__ as mmd_version
from mmd.errors import ChecksumError, DownloadError, SourceError
from mmd.globs import as_patterns, selected
from mmd.hookspecs import Sink, SourceContext
from mmd.types import ModelSpec, Release, RemoteFile
from mmd.urls import show_url
from mmd_s3 import verify

# Small enough that a slow link still reaches sink.write (where a stop request lands)
# every few seconds; large enough not to matter at 1 GB/s.
CHUNK = 128 << 10
API_TIMEOUT = 30.0
CLIENT_TTL = 300.0  # seconds; then credentials files and profiles are read again
HEAD_WORKERS = 8
MAX_STREAM_ATTEMPTS = 5
_AWS_ENV = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SESSION_TOKEN",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)
_DENIED = frozenset({"AccessDenied", "AllAccessDisabled", "403", "Forbidden", "AccountProblem"})
_WRONG_REGION = frozenset(
    {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"}
)
_BAD_CREDENTIALS = {
    "InvalidAccessKeyId": "the access key id is not known there",
    "SignatureDoesNotMatch": "the secret key does not match the access key id",
    "ExpiredToken": "the session token has expired",
    "InvalidToken": "the session token is not valid",
    "TokenRefreshRequired": "the session token has expired",
}


# -- the manifest's url -------------------------------------------------------


@dataclass(frozen=True)
class Location:
    bucket: str
    key: str  # "" or ending in "/": a prefix; otherwise one object

    @property
    def is_prefix(self) -> bool:
        return self.key == "" or self.key.endswith("/")

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_url(url: str) -> Location:
    """`s3://bucket/key` taken literally (S3 keys are not percent-encoded in it)."""
    if not url.startswith("s3://"):
        raise ValueError(f"expected an s3://bucket/prefix/ or s3://bucket/key URL, got {url!r}")
    bucket, _, key = url[len("s3://") :].partition("/")
    if not bucket or any(c in bucket for c in " /\\?#\x00") or "\x00" in key:
        raise ValueError(f"expected an s3://bucket/prefix/ or s3://bucket/key URL, got {url!r}")
    return Location(bucket, key)


def url_problems(url: str) -> Iterable[str]:
    try:
        parse_url(url)
    except ValueError as exc:
        yield str(exc)


# -- clients --------------------------------------------------------------------


@dataclass(frozen=True)
class Clients:
    api: Any  # list/head: short timeouts, botocore's retries
    data: Any  # get_object: a read timeout of `download_timeout` (seconds without a byte)
    anonymous: bool  # no credentials found: unsigned requests (public buckets)
    where: str  # the endpoint, for messages


_clients: dict[tuple[Any, ...], tuple[float, Clients]] = {}
_clients_lock = threading.Lock()


def _where(options: Mapping[str, Any]) -> str:
    endpoint = options.get("endpoint_url")
    if endpoint:
        return show_url(str(endpoint))
    region = options.get("region")
    return f"AWS S3 ({region})" if region else "AWS S3"


def clients(options: Mapping[str, Any], ctx: SourceContext) -> Clients:
    """boto3 clients for these settings, shared across models and passes for a while."""
    profile = options.get("profile") or None
    region = options.get("region") or None
    endpoint = options.get("endpoint_url") or None
    settings = ctx.settings
    key = (
        profile,
        region,
        endpoint,
        settings.download_timeout,
        settings.max_concurrent_downloads,
        tuple(ctx.env.get(name) for name in _AWS_ENV),
    )
    now = time.monotonic()
    with _clients_lock:  # boto3 sessions are not thread-safe; clients are
        cached = _clients.get(key)
        if cached is not None and now - cached[0] < CLIENT_TTL:
            return cached[1]
        made = _make_clients(profile, region, endpoint, settings, _where(options))
        for old in [k for k, (when, _) in _clients.items() if now - when >= CLIENT_TTL]:
            del _clients[old]
        _clients[key] = (now, made)
        return made


def _make_clients(
    profile: str | None, region: str | None, endpoint: str | None, settings: Any, where: str
) -> Clients:
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ProfileNotFound

    try:
        session = boto3.session.Session(profile_name=profile, region_name=region)
        credentials = session.get_credentials()
    except ProfileNotFound as exc:
        missing = exc.kwargs.get("profile") or profile
        raise SourceError(
            f"AWS profile {missing!r} not found",
            hint="define it in ~/.aws/config or ~/.aws/credentials (or AWS_CONFIG_FILE)",
        ) from None
    except BotoCoreError as exc:
        raise SourceError(f"cannot load AWS credentials{_for(profile)}: {_one_line(exc)}") from None
    anonymous = credentials is None
    common: dict[str, Any] = {
        "connect_timeout": 10,
        "user_agent_extra": f"mmd/{mmd_version}",
        # We verify every object ourselves (see verify.py); botocore's own response
        # validation cannot follow a ranged, resumed GET.
        "response_checksum_validation": "when_required",
        "request_checksum_calculation": "when_required",
        "max_pool_connections": max(10, settings.max_concurrent_downloads * 2),
    }
    if anonymous:
        common["signature_version"] = UNSIGNED
    if endpoint:
        # MinIO, Ceph RGW and R2 all take path-style requests; virtual-hosted style needs
        # DNS set up for every bucket.
        common["s3"] = {"addressing_style": "path"}
    api = session.client(
        "s3",
        endpoint_url=endpoint,
        config=Config(
            read_timeout=API_TIMEOUT, retries={"max_attempts": 4, "mode": "standard"}, **common
        ),
    )
    data = session.client(
        "s3",
        endpoint_url=endpoint,
        config=Config(
            read_timeout=settings.download_timeout,
            retries={"max_attempts": 4, "mode": "standard"},
            **common,
        ),
    )
    return Clients(api=api, data=data, anonymous=anonymous, where=where)


def _for(profile: str | None) -> str:
    return f" for profile {profile!r}" if profile else ""


# -- errors -----------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code") or "")


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None) or {}
    return response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def explain(exc: BaseException, what: str, c: Clients, profile: str | None) -> str:
    """One line that says what failed and what to do about it (never a secret)."""
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    if isinstance(exc, ConnectTimeoutError):
        return f"cannot reach {c.where} for {what}: the connection timed out"
    if isinstance(exc, EndpointConnectionError):
        # The inner urllib3 error says why (refused, name not resolved) after its "): ".
        inner = _one_line(exc.kwargs.get("error") or exc)
        return f"cannot reach {c.where} for {what}: {inner.split('): ', 1)[-1]}"
    if isinstance(exc, ReadTimeoutError):
        return f"{c.where} did not answer in time for {what}"
    if isinstance(exc, NoCredentialsError):
        return (
            f"no AWS credentials for {what}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE or the model's `profile`"
        )
    if not isinstance(exc, ClientError):
        return f"{what} at {c.where} failed: {type(exc).__name__}: {_one_line(exc)}"
    code, status = _code(exc), _status(exc)
    if code == "NoSuchBucket":
        bucket = exc.response["Error"].get("BucketName") or what
        return f"bucket {bucket} does not exist at {c.where}"
    if code in ("NoSuchKey", "404", "NotFound"):
        return f"{what} not found at {c.where}"
    if code in _BAD_CREDENTIALS:
        return (
            f"{c.where} refused the AWS credentials{_for(profile)} for {what}: "
            f"{_BAD_CREDENTIALS[code]} ({code}); check them, or set the model's `profile`"
        )
    if code in _DENIED or status == 403:
        if c.anonymous:
            return (
                f"access denied to {what} at {c.where}: no AWS credentials were found; set "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the model's `profile`"
            )
        return (
            f"access denied to {what} at {c.where} with the credentials{_for(profile)} "
            "in use; check their policy (s3:ListBucket, s3:GetObject) or set the model's "
            "`profile`"
        )
    if code in _WRONG_REGION:
        return f"{what} is in another region than {c.where} expects: set the model's `region`"
    message = _one_line(exc.response.get("Error", {}).get("Message") or exc)
    return f"{c.where} answered {code or status} for {what}: {message}"


# -- resolve ------------------------------------------------------------------------

# (endpoint, bucket, key, etag) -> full-object sha256 (or None): an ETag names content.
_sha_cache: dict[tuple[str, str, str, str], str | None] = {}
_SHA_CACHE_MAX = 100_000


def pinned_version(spec: ModelSpec) -> str | None:
    """A manifest sha256 pins one object's content: no need to ask S3 again."""
    sha256 = spec.options.get("sha256")
    return f"sha256:{str(sha256).lower()}" if sha256 else None


def _list(c: Clients, loc: Location, profile: str | None) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    try:
        pages = c.api.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=loc.key)
        for page in pages:
            objects.extend(page.get("Contents") or [])
    except Exception as exc:
        raise SourceError(explain(exc, str(loc), c, profile)) from None
    return objects


def _head(c: Clients, loc: Location, profile: str | None) -> dict[str, Any]:
    from botocore.exceptions import ClientError

    try:
        return dict(c.api.head_object(Bucket=loc.bucket, Key=loc.key, ChecksumMode="ENABLED"))
    except Exception as exc:
        if not isinstance(exc, ClientError) or _status(exc) != 404:
            raise SourceError(explain(exc, str(loc), c, profile)) from None
    # A HEAD has no body to say which is missing: the bucket or the key.
    try:
        c.api.head_bucket(Bucket=loc.bucket)
    except ClientError as exc:
        if _status(exc) == 404:
            raise SourceError(f"bucket {loc.bucket} does not exist at {c.where}") from None
    except Exception:
        pass  # the key is missing either way; say that
    raise SourceError(
        f"{loc} not found at {c.where}",
        hint="for every object below a prefix, end the url with `/`",
    )


def _object_sha256(c: Clients, bucket: str, obj: Mapping[str, Any]) -> str | None:
    key = (c.where, bucket, str(obj["Key"]), str(obj.get("ETag")))
    if key in _sha_cache:
        return _sha_cache[key]
    from botocore.exceptions import ClientError

    try:
        head = c.api.head_object(Bucket=bucket, Key=obj["Key"], ChecksumMode="ENABLED")
    except ClientError as exc:
        if _status(exc) == 404:
            return None  # deleted since the listing; fetch finds out
        raise
    if head.get("ETag") != obj.get("ETag"):
        return None  # changed since the listing; fetch finds out
    digest = verify.full_object_sha256(head)
    if len(_sha_cache) >= _SHA_CACHE_MAX:
        _sha_cache.clear()
    _sha_cache[key] = digest
    return digest


def _sha256s(
    c: Clients, bucket: str, objects: list[dict[str, Any]], profile: str | None
) -> dict[str, str | None]:
    """Full-object sha256s, from a HEAD of each single-part object listed with a SHA256
    checksum (a listing says which algorithm, not the value)."""
    wanted = [
        o
        for o in objects
        if "SHA256" in (o.get("ChecksumAlgorithm") or [])
        and not verify.multipart_etag(o.get("ETag"))
    ]
    if not wanted:
        return {}
    try:
        with ThreadPoolExecutor(min(HEAD_WORKERS, len(wanted))) as pool:
            digests = list(pool.map(lambda o: _object_sha256(c, bucket, o), wanted))
    except Exception as exc:
        raise SourceError(explain(exc, f"s3://{bucket}/", c, profile)) from None
    return {str(o["Key"]): d for o, d in zip(wanted, digests, strict=True)}


def resolve(spec: ModelSpec, ctx: SourceContext) -> Release:
    options = spec.options
    url = str(options["url"])
    loc = parse_url(url)
    profile = options.get("profile") or None
    c = clients(options, ctx)
    include, exclude = as_patterns(options.get("include")), as_patterns(options.get("exclude"))
    pinned = str(options["sha256"]).lower() if options.get("sha256") else None

    # (path in the model, the listing's or HEAD's object record)
    chosen: list[tuple[str, dict[str, Any]]] = []
    sha256s: dict[str, str | None] = {}
    if loc.is_prefix:
        objects = _list(c, loc, profile)
        for obj in objects:
            rel = str(obj["Key"])[len(loc.key) :]
            if rel and not rel.endswith("/") and selected(rel, include, exclude):
                chosen.append((rel, obj))
        if not chosen:
            what = "match include/exclude" if objects else "exist"
            raise SourceError(f"no objects below {loc} {what} (at {c.where})")
        sha256s = _sha256s(c, loc.bucket, [o for _, o in chosen], profile)
    else:
        head = _head(c, loc, profile)
        name = loc.key.rsplit("/", 1)[-1]
        if not selected(name, include, exclude):
            raise SourceError(f"{loc}: {name} does not match include/exclude")
        obj = {"Key": loc.key, "ETag": head.get("ETag"), "Size": head.get("ContentLength")}
        chosen.append((name, obj))
        sha256s[loc.key] = verify.full_object_sha256(head)

    files = []
    for rel, obj in sorted(chosen, key=lambda item: item[0]):
        object_key = str(obj["Key"])
        files.append(
            RemoteFile(
                path=rel,
                size=int(obj["Size"]) if obj.get("Size") is not None else None,
                sha256=pinned or sha256s.get(object_key),
                url=f"s3://{loc.bucket}/{object_key}",
                # What fetch sends as IfMatch: the content resolve saw, and no other.
                headers={"If-Match": str(obj.get("ETag") or "")},
                # Same ETag and size as the copy in storage: the core reuses that copy.
                validator=str(obj.get("ETag") or "") or None,
            )
        )
    if pinned:
        version = f"sha256:{pinned}"
    else:
        listing = [[f.path, verify.plain_etag(f.headers["If-Match"])] for f in files]
        digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]
        version = f"s3:{digest}"
    metadata: dict[str, Any] = {"url": url}
    if options.get("endpoint_url"):
        metadata["endpoint_url"] = show_url(str(options["endpoint_url"]))
    return Release(version=version, files=tuple(files), metadata=metadata)


# -- fetch ---------------------------------------------------------------------------

Failure = Callable[..., DownloadError]


def _layouts(c: Clients, loc: Location, size: int, parts: int) -> list[list[int]]:
    """Part-size layouts to hash a multipart upload with, the likeliest first.

    Part 1's size (a HEAD with PartNumber=1) repeated, the last part shorter: what every
    common tool uploads. A store that cannot answer PartNumber gets the common sizes that
    make exactly `parts` parts. Unequal parts are found out by `_true_layout` after a
    mismatch.
    """
    from botocore.exceptions import ClientError

    try:
        # No IfMatch: some stores compare it with the part's ETag. The GETs carry it.
        head = c.api.head_object(Bucket=loc.bucket, Key=loc.key, PartNumber=1)
    except ClientError as exc:
        status = _status(exc) or 0
        if status in (403, 404, 412) or status >= 500:
            raise
        head = {}
    part_size = int(head.get("ContentLength") or 0)
    if 0 < part_size < size:
        return [verify.uniform_parts(size, part_size)]
    # No answer, or the whole object's length (the store ignored PartNumber): guess.
    guesses = verify.guessed_part_sizes(size, parts)
    return [verify.uniform_parts(size, p) for p in guesses] or [[size]]


def _true_layout(c: Clients, loc: Location, size: int, parts: int) -> list[int] | None:
    """Every part's size, one HEAD each; None when the store cannot say."""
    from botocore.exceptions import ClientError

    def one(number: int) -> int:
        head = c.api.head_object(Bucket=loc.bucket, Key=loc.key, PartNumber=number)
        return int(head["ContentLength"])

    try:
        with ThreadPoolExecutor(HEAD_WORKERS) as pool:
            sizes = list(pool.map(one, range(1, parts + 1)))
    except ClientError as exc:
        if _status(exc) in (403, 404, 412) or (_status(exc) or 0) >= 500:
            raise
        return None
    # Parts that do not add up to the object: the store ignored PartNumber.
    return sizes if sum(sizes) == size else None


def _changed(file: RemoteFile, loc: Location, etag: str) -> DownloadError:
    return DownloadError(
        f"{file.path}: {loc} changed since it was resolved (its ETag is no longer {etag})",
        hint="the next pass fetches the new version",
        retryable=True,
    )


def fetch(spec: ModelSpec, file: RemoteFile, sink: Sink, ctx: SourceContext) -> None:
    """Stream one object into the sink with ranged GETs, then check it against its ETag
    (and composite checksum) before the core may publish it."""
    from botocore.exceptions import BotoCoreError, ClientError

    options = spec.options
    profile = options.get("profile") or None
    loc = parse_url(str(file.url))
    etag = file.headers.get("If-Match") or ""
    c = clients(options, ctx)

    def failure(exc: BaseException, retryable: bool = True) -> DownloadError:
        if isinstance(exc, ClientError) and _status(exc) == 412:
            return _changed(file, loc, etag)
        message = f"{file.path}: {explain(exc, str(loc), c, profile)}"
        return DownloadError(message, retryable=retryable)

    try:
        head = dict(
            c.api.head_object(
                Bucket=loc.bucket, Key=loc.key, ChecksumMode="ENABLED", **_if_match(etag)
            )
        )
        size = int(head["ContentLength"])
        checks = verify.checks_for(head, sha256_known=file.sha256 is not None)
        if not checks and file.sha256 is None:
            raise DownloadError(
                f"{file.path}: cannot verify {loc}: its ETag is not an MD5 (SSE-KMS, SSE-C "
                "or another store's ETag) and it has no SHA256, SHA1 or CRC32 checksum",
                hint="upload it with a checksum (aws s3 cp --checksum-algorithm SHA256), "
                "or pin `sha256` in the manifest",
                retryable=False,
            )
        parts = max(verify.etag_parts(head.get("ETag")) or 1, int(head.get("PartsCount") or 1))
        multipart = any(check.multipart for check in checks)
        layouts = _layouts(c, loc, size, parts) if multipart else [[size]]
    except DownloadError:
        raise
    except (ClientError, BotoCoreError) as exc:
        raise failure(exc) from None

    if sink.offset > size:
        sink.reset()
    digests = verify.Digests(checks, layouts[0])
    if sink.offset:  # resumed: the bytes already there count too
        for data in sink.existing():
            digests.update(data)
    _stream(c, loc, etag, size, sink, digests, file, failure)
    digests.finish()

    bad = verify.failed(checks, digests)
    if bad is not None and multipart:
        # Parts of other sizes than assumed? Hash what is on disk again with each.
        others = layouts[1:]
        try:
            true = _true_layout(c, loc, size, parts)
        except (ClientError, BotoCoreError) as exc:
            raise failure(exc) from None
        if true is not None and true not in layouts:
            others.insert(0, true)
        for layout in others:
            again = verify.Digests(checks, layout)
            for data in sink.existing():
                again.update(data)
            again.finish()
            if verify.failed(checks, again) is None:
                bad = None
                break
    if bad is not None:
        check, actual = bad
        sink.reset()
        raise ChecksumError(file.path, check.expected, actual, check.label)


def _if_match(etag: str) -> dict[str, str]:
    return {"IfMatch": etag} if etag else {}


def _stream(
    c: Clients,
    loc: Location,
    etag: str,
    size: int,
    sink: Sink,
    digests: verify.Digests,
    file: RemoteFile,
    failure: Failure,
) -> None:
    """Ranged GETs from `sink.offset` to the end, retried from where they stopped.

    Chunks go to the sink as they arrive: an object is never held in memory whole.
    """
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionClosedError,
        EndpointConnectionError,
        IncompleteReadError,
        ReadTimeoutError,
        ResponseStreamingError,
    )
    from urllib3.exceptions import HTTPError as Urllib3Error

    transient = (
        ConnectionClosedError,
        EndpointConnectionError,
        IncompleteReadError,
        ReadTimeoutError,
        ResponseStreamingError,
        Urllib3Error,
        ConnectionError,
        TimeoutError,
    )
    attempt = 0
    while sink.offset < size:
        start = sink.offset
        try:
            response = c.data.get_object(
                Bucket=loc.bucket, Key=loc.key, Range=f"bytes={start}-", **_if_match(etag)
            )
            body = response["Body"]
            try:
                content_range = str(response.get("ContentRange") or "")
                if start and not content_range.startswith(f"bytes {start}-"):
                    # The server ignored the Range and sends the whole object again.
                    sink.reset()
                    digests.reset()
                for chunk in body.iter_chunks(CHUNK):
                    sink.write(chunk)
                    digests.update(chunk)
            finally:
                body.close()
            if sink.offset == start:
                # An empty answer short of the end: count it, or this loop never ends.
                raise ConnectionError(f"empty response at byte {start} of {size}")
        except DownloadError:
            raise
        except ClientError as exc:
            status = _status(exc) or 0
            if status == 412:
                raise failure(exc) from None
            if status < 500 and status != 429:
                # 403 may be credentials that expired mid-way: keep the bytes.
                raise failure(exc, retryable=status == 403) from None
            attempt = _again(attempt, start, sink, exc, failure)
        except transient as exc:
            attempt = _again(attempt, start, sink, exc, failure)
        except BotoCoreError as exc:
            raise failure(exc) from None
    if sink.offset != size:
        raise DownloadError(
            f"{file.path}: got {sink.offset} bytes of {loc}, expected {size}", retryable=True
        )


def _again(attempt: int, start: int, sink: Sink, exc: BaseException, failure: Failure) -> int:
    """Count a failed attempt (progress resets the count); wait a little, or give up."""
    attempt = 1 if sink.offset > start else attempt + 1
    if attempt >= MAX_STREAM_ATTEMPTS:
        raise failure(exc) from None
    time.sleep(min(0.5 * 2**attempt, 8.0))
    return attempt
