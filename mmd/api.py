"""The daemon's local HTTP API (SPEC §6), on aiohttp.

Every error is JSON `{"error": "...", "detail": ...}`. Requests that change anything need
`Authorization: Bearer <token>` when a token is configured; a `Host` header naming
anything but this machine is refused, so a web page cannot reach the API through DNS
rebinding.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from mmd.config import Settings
from mmd.errors import MmdError

if TYPE_CHECKING:
    from mmd.daemon import Daemon

log = logging.getLogger(__name__)

DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")
MAX_BODY = 64 * 1024
_LOCAL_NAMES = {"localhost", "127.0.0.1", "::1"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def error(status: int, message: str, detail: Any = None) -> web.Response:
    return web.json_response({"error": message, "detail": detail}, status=status)


def _host_name(header: str) -> str:
    """`Host` without its port: `[::1]:8005` -> `::1`, `localhost:8005` -> `localhost`."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == "application/json":
            raise
        return error(exc.status, exc.reason, None)
    except Exception as exc:  # one clear line to the client; the traceback to the log
        log.exception("API %s %s failed", request.method, request.path)
        return error(500, "internal error", type(exc).__name__)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[DAEMON].settings
    host = _host_name(request.headers.get("Host", "")).lower()
    # On loopback only this machine may ask; a page in a browser whose DNS name was
    # rebound to 127.0.0.1 still sends its own name. Beyond loopback a token is required.
    if is_loopback(settings.api_host) and host not in _LOCAL_NAMES | {settings.api_host}:
        return error(421, "unknown Host header", "use the address the daemon listens on")
    if request.method not in ("GET", "HEAD", "OPTIONS") and settings.api_token is not None:
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {settings.api_token.reveal()}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return error(401, "missing or wrong API token", "send Authorization: Bearer <token>")
    return await handler(request)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response(request.app[DAEMON].health())


async def post_sync(request: web.Request) -> web.Response:
    ids: list[str] | None = None
    if request.can_read_body:
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError as exc:
            return error(400, "body is not JSON", str(exc))
        raw = body.get("ids") if isinstance(body, dict) else None
        if raw is not None and (
            not isinstance(raw, list) or not all(isinstance(i, str) for i in raw)
        ):
            return error(400, "ids must be a list of model ids", None)
        ids = raw or None
    daemon = request.app[DAEMON]
    number = daemon.request_pass("requested via API", ids=ids, force=True)
    return web.json_response({"accepted": True, "pass": number}, status=202)


def create_app(daemon: Daemon) -> web.Application:
    app = web.Application(middlewares=[json_errors, guard], client_max_size=MAX_BODY)
    app[DAEMON] = daemon
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/sync", post_sync)
    return app


async def start_api(daemon: Daemon, settings: Settings) -> tuple[web.AppRunner, str]:
    """Listen on the configured address; returns the runner and the URL it serves."""
    runner = web.AppRunner(create_app(daemon), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.api_host, settings.api_port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise MmdError(
            f"cannot listen on {settings.api_host}:{settings.api_port}: {exc.strerror or exc}",
            hint="another service may use the port; set api.port or MODEL_API_PORT",
        ) from None
    port = settings.api_port
    server: Any = site._server  # the bound port is only known there when asked for 0
    for sock in getattr(server, "sockets", None) or []:
        port = sock.getsockname()[1]
        break
    host = settings.api_host
    shown = f"[{host}]" if ":" in host else host
    return runner, f"http://{shown}:{port}"
