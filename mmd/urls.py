"""URL helpers shared by sources and the transfer engine (no heavy imports here)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def show_url(url: str) -> str:
    """A URL safe for messages and the registry: no user info, no query or fragment.

    Signed URLs (S3, CDNs) carry their secrets in the query string.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback IP (brackets of an IPv6 literal allowed)."""
    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
