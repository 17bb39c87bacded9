"""The daemon's local HTTP API (SPEC §6), on aiohttp.

Every error is JSON `{"error": "...", "detail": ...}`. Requests that change anything need
`Authorization: Bearer <token>` when a token is configured; on a loopback address a
`Host` header naming anything but this machine is refused, so a web page cannot reach
the API through DNS rebinding.

Model ids contain '/', so every `/models/...` route is one resource whose tail is split
here: `a/b/status` is the status of `a/b`. `a/files` is the model `a/files` when the
registry has one, else the files of `a` (an id has at most one '/').
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from aiohttp import web

from mmd.config import Settings
from mmd.errors import ManifestError, MmdError
from mmd.openapi import document
from mmd.requested import check_request
from mmd.types import ModelEntry, ModelStatus, State
from mmd.urls import is_loopback

if TYPE_CHECKING:
    from mmd.daemon import Daemon

log = logging.getLogger(__name__)

DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")
MAX_BODY = 64 * 1024
_LOCAL_NAMES = {"localhost", "127.0.0.1", "::1"}
_SUBROUTES = ("files", "status")
# Cloud metadata services answer on these; a download request must not reach them.
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, message: str, detail: Any = None) -> web.Response:
    return web.json_response({"error": message, "detail": detail}, status=status)


def _host_name(header: str) -> str:
    """`Host` without its port: `[::1]:8005` -> `::1`, `localhost:8005` -> `localhost`."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _peer(request: web.Request) -> str | None:
    return request.remote


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
    if request.method not in ("GET", "HEAD", "OPTIONS") and _cross_site(request, settings):
        # A page in a browser may POST to 127.0.0.1 with a "simple" request; refuse it.
        return error(403, "cross-site request refused", "call the API from a client")
    if request.method not in ("GET", "HEAD", "OPTIONS") and settings.api_token is not None:
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {settings.api_token.reveal()}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return error(401, "missing or wrong API token", "send Authorization: Bearer <token>")
    return await handler(request)


def _cross_site(request: web.Request, settings: Settings) -> bool:
    if request.headers.get("Sec-Fetch-Site", "none") not in ("none", "same-origin"):
        return True
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    host = (urlsplit(origin).hostname or "").lower()
    return host not in _LOCAL_NAMES | {settings.api_host.lower().strip("[]")}


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "body is not JSON", "detail": str(exc)}),
            content_type="application/json",
        ) from None


# -- read-only routes ------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    health = request.app[DAEMON].health()
    return web.json_response(health, status=200 if health["status"] == "ok" else 503)


async def list_models(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    status = request.query.get("status")
    if status is not None and status not in {s.value for s in ModelStatus}:
        choices = [s.value for s in ModelStatus]
        return error(400, f"unknown status {status!r}", {"choices": choices})
    key = (status, request.query.get("type"), request.query.get("source"))
    body = daemon.cached_listing(key)
    return web.Response(body=body, content_type="application/json")


def _split(tail: str, known: Callable[[str], bool]) -> tuple[str, str | None]:
    """`a/b/status` -> ("a/b", "status"); an exact known id wins over a sub-route."""
    head, _, last = tail.rpartition("/")
    if last in _SUBROUTES and head and not known(tail):
        return head, last
    return tail, None


def _entry_or_404(daemon: Daemon, model_id: str) -> ModelEntry:
    entry = daemon.registry.get(model_id)
    if entry is None:
        raise web.HTTPNotFound(
            text=json.dumps({"error": f"no model {model_id!r}", "detail": None}),
            content_type="application/json",
        )
    return entry


async def model_routes(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    model_id, sub = _split(request.match_info["tail"], lambda i: daemon.registry.get(i) is not None)
    if request.method == "DELETE":
        if sub is not None:
            return error(405, f"DELETE is not allowed on /models/{{id}}/{sub}")
        return await delete_model(request, model_id)
    entry = _entry_or_404(daemon, model_id)
    if sub == "files":
        files = entry.to_json()["files"]  # the registry's shape
        return web.json_response({"model_id": model_id, "path": entry.path, "files": files})
    if sub == "status":
        return web.json_response(daemon.model_status(entry))
    return web.json_response(entry.to_json())


async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: `status` on every change, `progress` at most 1/s per download."""
    daemon = request.app[DAEMON]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(maxsize=1000)

    def listener(kind: str, entry: ModelEntry | None) -> None:
        if entry is None:
            return
        payload = daemon.model_status(entry)
        if queue.full():  # a reader too slow to keep up loses the oldest news
            queue.get_nowait()
        queue.put_nowait((kind, payload))

    daemon.live.listeners.append(listener)
    idle = 0
    try:
        await response.write(b": mmd events\n\n")
        while not daemon.stopping:
            try:
                kind, payload = await asyncio.wait_for(queue.get(), timeout=1.0)
            except TimeoutError:
                idle += 1
                if idle % 15 == 0:  # a comment line keeps proxies from closing the stream
                    await response.write(b": keep-alive\n\n")
                continue
            idle = 0
            data = json.dumps(payload, default=str)
            await response.write(f"event: {kind}\ndata: {data}\n\n".encode())
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        daemon.live.listeners.remove(listener)
    return response


async def metrics(request: web.Request) -> web.Response:
    body = request.app[DAEMON].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document())


# -- routes that change things -----------------------------------------------------------


async def post_sync(request: web.Request) -> web.Response:
    body = await _json_body(request)
    ids: list[str] | None = None
    raw = body.get("ids") if isinstance(body, dict) else None
    if raw is not None and (not isinstance(raw, list) or not all(isinstance(i, str) for i in raw)):
        return error(400, "ids must be a list of model ids", None)
    ids = raw or None
    daemon = request.app[DAEMON]
    number = daemon.request_pass("requested via API", ids=ids, force=True)
    daemon.audit.record("api.sync", peer=_peer(request), outcome="accepted", ids=ids)
    return web.json_response({"accepted": True, "pass": number}, status=202)


def _problems(model_id: str, problems: list[str]) -> list[str]:
    """Manifest messages about the synthetic request document, minus its positions."""
    prefix = re.compile(r"^request:\d+:\d+: models\." + re.escape(model_id) + r"(?:\.|: )")
    out = []
    for p in problems:
        stripped = prefix.sub("", p, count=1)
        out.append(stripped if stripped != p else re.sub(r"^request:\d+:\d+: ", "", p))
    return [p if not p.startswith("a model id") else f"model_id: {p}" for p in out]


async def post_download(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    body = await _json_body(request)
    if not isinstance(body, dict) or "model_id" not in body:
        return error(400, "expected a JSON object with model_id and the manifest's keys", None)
    model_id = body.pop("model_id")
    try:
        spec = check_request(model_id, body, daemon.plugins.sources).models[model_id]
    except ManifestError as exc:
        daemon.audit.record("api.download", str(model_id), peer=_peer(request), outcome="invalid")
        return error(400, "invalid model spec", _problems(str(model_id), exc.problems))
    if spec.state is State.ABSENT:
        return error(400, "use DELETE /models/{id} to remove a model", None)
    # Every URL of the spec (a download URL, an `api_url`, an S3 `endpoint_url`...).
    source = daemon.plugins.sources[spec.source]
    for key, value in spec.options.items():
        rule = source.keys.get(key)
        if rule is None or rule.kind != "url" or not isinstance(value, str):
            continue
        refused = await _refused_address(value, daemon.settings.api_allow_link_local)
        if refused:
            daemon.audit.record("api.download", model_id, peer=_peer(request), outcome="refused")
            return error(400, f"{key}: {refused}", "set api.allow_link_local: true to allow it")
    declared = daemon.manifest is not None and model_id in daemon.manifest.models
    await daemon.add_request(model_id, body)
    number = daemon.request_pass(f"download {model_id}", ids=[model_id], force=True)
    daemon.audit.record("api.download", model_id, peer=_peer(request), outcome="accepted")
    location = f"/models/{quote(model_id)}/status"
    answer = {
        "accepted": True,
        "model_id": model_id,
        "pass": number,
        "status_url": location,
        "note": "the manifest declares this id; its entry wins" if declared else None,
    }
    return web.json_response(answer, status=202, headers={"Location": location})


async def delete_model(request: web.Request, model_id: str) -> web.Response:
    daemon = request.app[DAEMON]
    peer = _peer(request)
    if daemon.manifest is not None and model_id in daemon.manifest.models:
        daemon.audit.record("api.delete", model_id, peer=peer, outcome="conflict")
        return error(
            409,
            f"{model_id} is declared in the manifest",
            f"remove it from {daemon.settings.manifest} (or set state: absent there)",
        )
    if not daemon.requested_has(model_id):
        if daemon.registry.get(model_id) is None:
            return error(404, f"no model {model_id!r}")
        daemon.audit.record("api.delete", model_id, peer=peer, outcome="conflict")
        return error(409, f"{model_id} was not requested through the API", None)
    await daemon.remove_request(model_id)
    number = daemon.request_pass(f"delete {model_id}", ids=[model_id], force=True)
    daemon.audit.record("api.delete", model_id, peer=peer, outcome="accepted")
    return web.json_response({"accepted": True, "model_id": model_id, "pass": number}, status=202)


async def _refused_address(url: str, allow_link_local: bool) -> str | None:
    """Why a URL must not be fetched for an API client (link-local, cloud metadata)."""
    if allow_link_local:
        return None
    host = urlsplit(url).hostname or ""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None)
    except OSError:
        return None  # unresolvable: the download fails later with a clear error
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address in _METADATA or address.is_link_local:
            return f"refused: {host} resolves to {address}, a link-local or metadata address"
    return None


def create_app(daemon: Daemon) -> web.Application:
    app = web.Application(middlewares=[json_errors, guard], client_max_size=MAX_BODY)
    app[DAEMON] = daemon
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/models", list_models)
    app.router.add_post("/models/download", post_download)
    app.router.add_route("GET", "/models/{tail:.+}", model_routes)
    app.router.add_route("DELETE", "/models/{tail:.+}", model_routes)
    app.router.add_post("/sync", post_sync)
    app.router.add_get("/events", events)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    return app


async def start_api(daemon: Daemon, settings: Settings) -> tuple[web.AppRunner, str]:
    """Listen on the configured address; returns the runner and the URL it serves."""
    # Open event streams end when the daemon stops; nothing else may hold the stop up.
    runner = web.AppRunner(
        create_app(daemon), access_log=None, handle_signals=False, shutdown_timeout=2.0
    )
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
