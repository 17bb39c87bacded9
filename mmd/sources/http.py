"""`source: http` — one file from a plain URL, optionally pinned by sha256."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from mmd.hookspecs import KeyRule, Source, SourceContext, hookimpl
from mmd.types import ModelSpec, Release, RemoteFile
from mmd.urls import show_url


def _filename(options: Mapping[str, Any]) -> str:
    if options.get("filename"):
        return str(options["filename"])
    return unquote(urlsplit(str(options["url"])).path.rstrip("/").rsplit("/", 1)[-1])


def resolve(spec: ModelSpec, ctx: SourceContext) -> Release:
    options = spec.options
    sha256 = options.get("sha256")
    url = str(options["url"])
    # No network here: a pinned sha256 is the version; otherwise the URL is, so a pass
    # over an unchanged manifest stays offline. Content changing behind a fixed URL
    # without a sha256 is not detected (documented in the README).
    if sha256:
        version = f"sha256:{str(sha256).lower()}"
    else:
        version = "url:" + hashlib.sha256(url.encode()).hexdigest()[:16]
    size = options.get("size")
    file = RemoteFile(
        path=_filename(options),
        size=int(size) if size is not None else None,
        sha256=str(sha256).lower() if sha256 else None,
        url=url,
    )
    # The registry is readable by anyone allowed: no user info or signed query in it.
    return Release(version=version, files=(file,), metadata={"url": show_url(url)})


def validate(options: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    if "filename" not in options and "url" in options and not _filename(options):
        yield "url", "the URL has no file name in its path; set `filename`"


@hookimpl
def mmd_sources() -> list[Source]:
    return [
        Source(
            name="http",
            resolve=resolve,
            validate=validate,
            description="one file from an http(s) URL",
            keys={
                "url": KeyRule("url", required=True, help="http(s) URL of the file"),
                "sha256": KeyRule("sha256", help="expected sha256 (hex); pins the version"),
                "size": KeyRule("int", help="expected size in bytes"),
                "filename": KeyRule("name", help="file name on disk (default: from the URL)"),
            },
        )
    ]
