"""mmd-s3: `source: s3` for mmd — objects from AWS S3 or an S3-compatible store.

```yaml
models:
  llama-7b:
    source: s3
    url: s3://models/llama/7b/        # every object below the prefix
    endpoint_url: http://minio:9000   # MinIO, Ceph RGW, R2...; default AWS
    include: ["*.json", "*.safetensors"]
```

Resolve lists the objects; the version is a digest of their keys and ETags. Fetch
streams each object with ranged GETs (a resumed download continues where the `.part`
ended) and checks it against its ETag (MD5, or the MD5 of part MD5s of a multipart
upload) and its SHA256 checksum when S3 has one, before the core publishes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mmd.hookspecs import KeyRule, Source, hookimpl
from mmd_s3.source import fetch, parse_url, pinned_version, resolve

__version__ = "0.1.0"

KEYS = {
    "url": KeyRule(
        "str", required=True, help="s3://bucket/prefix/ (every object below it) or s3://bucket/key"
    ),
    "endpoint_url": KeyRule("url", help="an S3-compatible endpoint (MinIO, Ceph, R2); default AWS"),
    "region": KeyRule("str", help="the bucket's region (default: the AWS config's)"),
    "profile": KeyRule("str", help="a profile of ~/.aws/config and ~/.aws/credentials"),
    "include": KeyRule("globs", help="globs on paths below the prefix to keep"),
    "exclude": KeyRule("globs", help="globs on paths below the prefix to leave out"),
    "sha256": KeyRule("sha256", help="expected sha256 of a single object; pins the version"),
}


def validate(options: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    url = options.get("url")
    if not isinstance(url, str):
        return
    try:
        location = parse_url(url)
    except ValueError as exc:
        yield "url", str(exc)
        return
    if options.get("sha256") and location.is_prefix:
        yield "sha256", "`sha256` pins one object; this url is a prefix (it ends with `/`)"


@hookimpl
def mmd_sources() -> list[Source]:
    return [
        Source(
            name="s3",
            resolve=resolve,
            fetch=fetch,
            validate=validate,
            pinned_version=pinned_version,
            keys=KEYS,
            description="objects below an s3:// prefix, or one object (AWS S3, MinIO, Ceph, R2)",
        )
    ]
