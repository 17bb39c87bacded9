"""The Model API of a real daemon started in this process, through aiohttp's client.

The daemon runs its whole life cycle (lock, registry, watches, scheduler, API on a free
port); the tests talk HTTP to it like a scheduler or gateway would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mmd.api import create_app
from mmd.config import load_settings
from mmd.daemon import Daemon
from mmd.plugins import load_plugins
from tests.conftest import Home
from tests.servers.fileserver import FileServer
from tests.test_sync_http import payload, sha

TOKEN = "api-test-token"


class Api:
    def __init__(self, daemon: Daemon, session: aiohttp.ClientSession, home: Home) -> None:
        self.daemon = daemon
        self.session = session
        self.home = home

    @property
    def url(self) -> str:
        assert self.daemon.api_url is not None
        return self.daemon.api_url

    async def call(
        self, method: str, path: str, body: Any = None, *, token: str | None = TOKEN, **kw: Any
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = dict(kw.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with self.session.request(
            method, self.url + path, json=body, headers=headers, **kw
        ) as response:
            text = await response.text()
            try:
                data = json.loads(text)
            except ValueError:
                data = text
            return response.status, data, response

    async def daemon_pass(self, number: int, timeout: float = 15.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while self.daemon.passes_completed < number:
            assert asyncio.get_running_loop().time() < deadline, f"pass {number}"
            await asyncio.sleep(0.05)

    async def wait_status(self, model_id: str, status: str, timeout: float = 15.0) -> dict:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            code, body, _ = await self.call("GET", f"/models/{model_id}/status")
            if code == 200 and body["status"] == status:
                return body
            assert asyncio.get_running_loop().time() < deadline, f"{model_id}: {body}"
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def _daemon(home: Home, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Api]:
    """A daemon running in this process for the length of a block."""
    monkeypatch.setenv("MODEL_API_PORT", "0")
    monkeypatch.setenv("MMD_API_TOKEN", TOKEN)
    monkeypatch.setenv("MMD_SCHEDULE", "interval: 1h")
    if not home.manifest.exists():
        home.write_manifest("models: {}\n")
    settings = load_settings()
    daemon = Daemon(settings, load_plugins([]), reload_settings=load_settings)
    task = asyncio.create_task(daemon.run())
    while daemon.api_url is None:
        assert not task.done(), task.exception()
        await asyncio.sleep(0.02)
    try:
        async with aiohttp.ClientSession() as session:
            yield Api(daemon, session, home)
    finally:
        daemon.stop("test over")
        assert await asyncio.wait_for(task, 15) == 0


@pytest.fixture
async def api(home: Home, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Api]:
    async with _daemon(home, monkeypatch) as running:
        yield running


def http_spec(url: str, data: bytes) -> dict[str, Any]:
    return {"source": "http", "url": url, "sha256": sha(data)}


def manifest_with(home: Home, models: dict[str, dict[str, Any]]) -> None:
    lines = ["models:"]
    for model_id, spec in models.items():
        lines.append(f"  {model_id}:")
        lines += [f"    {k}: {v}" for k, v in spec.items()]
    home.write_manifest("\n".join(lines) + "\n")


# -- reading ----------------------------------------------------------------------------


async def test_read_routes_with_ids_containing_a_slash(
    home: Home, fileserver: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload(2048)
    url = fileserver.add("w.bin", data)
    manifest_with(home, {"org/model": http_spec(url, data) | {"type": "text-generation"}})
    async with _daemon(home, monkeypatch) as api:
        await api.wait_status("org/model", "available")
        code, body, _ = await api.call("GET", "/models")
        assert code == 200 and body["count"] == 1
        assert body["models"][0]["model_id"] == "org/model"
        for query, count in [
            ("?status=available", 1),
            ("?status=error", 0),
            ("?type=text-generation", 1),
            ("?type=other", 0),
            ("?source=http", 1),
            ("?source=local", 0),
        ]:
            code, body, _ = await api.call("GET", "/models" + query)
            assert (code, body["count"]) == (200, count), query
        code, body, _ = await api.call("GET", "/models?status=sleeping")
        assert code == 400 and body["error"] == "unknown status 'sleeping'"

        code, entry, _ = await api.call("GET", "/models/org/model")
        assert code == 200 and entry["status"] == "available" and entry["version"]
        code, same, _ = await api.call("GET", "/models/org%2Fmodel")
        assert code == 200 and same == entry
        code, files, _ = await api.call("GET", "/models/org/model/files")
        assert files["files"] == [{"path": "w.bin", "size": 2048, "sha256": sha(data)}]
        assert Path(files["path"], "w.bin").read_bytes() == data
        code, status, _ = await api.call("GET", "/models/org/model/status")
        assert status == {
            "model_id": "org/model",
            "status": "available",
            "error": None,
            "version": entry["version"],
            "progress": None,
        }
        for path in ("/models/nope", "/models/nope/status", "/models/a/b/files"):
            code, body, _ = await api.call("GET", path)
            assert code == 404 and body["error"].startswith("no model"), path
            assert set(body) == {"error", "detail"}


async def test_health_metrics_and_openapi_agree_with_the_routes(api: Api) -> None:
    code, health, _ = await api.call("GET", "/healthz")
    assert code == 200 and health["status"] == "ok" and health["status"] == "ok"
    code, text, response = await api.call("GET", "/metrics")
    assert code == 200 and response.headers["Content-Type"].startswith("text/plain")
    for name in (
        'mmd_models{status="available"}',
        "mmd_downloaded_bytes_total",
        "mmd_download_duration_seconds_bucket",
        "mmd_verify_failures_total",
        "mmd_download_retries_total",
        "mmd_pass_duration_seconds_count",
        "mmd_storage_free_bytes",
    ):
        assert name in text, name
    code, doc, _ = await api.call("GET", "/openapi.json")
    assert code == 200 and doc["openapi"].startswith("3.")
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    served = set()
    for route in create_app(api.daemon).router.routes():
        if route.method == "HEAD":
            continue
        path = route.resource.canonical if route.resource is not None else ""
        if path == "/models/{tail}":
            for sub in ("/models/{id}", "/models/{id}/files", "/models/{id}/status"):
                if route.method == "GET" or sub == "/models/{id}":
                    served.add((route.method, sub))
        else:
            served.add((route.method, path))
    assert documented == served


# -- changing -------------------------------------------------------------------------------


async def test_download_then_delete_round_trip(
    api: Api, home: Home, fileserver: FileServer
) -> None:
    data = payload(100_000)
    url = fileserver.add("r.bin", data)
    code, body, response = await api.call(
        "POST", "/models/download", {"model_id": "team/r", **http_spec(url, data)}
    )
    assert body["status_url"] == "/models/team/r/status"
    assert code == 202 and response.headers["Location"] == "/models/team/r/status"
    await api.wait_status("team/r", "available")
    assert (home.storage / "http/team/r/r.bin").read_bytes() == data
    requested = (home.storage / "requested.yaml").read_text()
    assert "team/r:" in requested and url in requested

    code, _, _ = await api.call("DELETE", "/models/team/r")
    assert code == 202
    await api.wait_status("team/r", "deleted")
    assert not (home.storage / "http/team/r").exists()
    assert "team/r" not in (home.storage / "requested.yaml").read_text()
    audit = [json.loads(line) for line in (home.storage / "audit.log").read_text().splitlines()]
    actions = [(a["action"], a["model_id"], a["outcome"]) for a in audit]
    assert ("api.download", "team/r", "accepted") in actions
    assert ("model.added", "team/r", "ok") in actions
    assert ("api.delete", "team/r", "accepted") in actions
    assert ("model.removed", "team/r", "ok") in actions
    assert all(a["peer"] == "127.0.0.1" for a in audit if a["action"].startswith("api."))
    assert TOKEN not in (home.storage / "audit.log").read_text()


async def test_requests_survive_a_restart(
    home: Home, fileserver: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload(5000)
    url = fileserver.add("k.bin", data)
    async with _daemon(home, monkeypatch) as api:
        code, _, _ = await api.call(
            "POST", "/models/download", {"model_id": "keep", **http_spec(url, data)}
        )
        assert code == 202
        await api.wait_status("keep", "available")
    (home.storage / "http/keep/k.bin").unlink()
    async with _daemon(home, monkeypatch) as api:
        await api.daemon_pass(1)  # the start pass reads requested.yaml and repairs the file
        await api.wait_status("keep", "available")
        assert (home.storage / "http/keep/k.bin").read_bytes() == data


async def test_delete_cancels_a_running_download(api: Api, fileserver: FileServer) -> None:
    data = payload(8 * 1024 * 1024)
    url = fileserver.add("slow.bin", data)
    fileserver.set_fault("slow.bin", stall_after=1024 * 1024, stall_seconds=30)
    code, _, _ = await api.call(
        "POST", "/models/download", {"model_id": "slow", **http_spec(url, data)}
    )
    assert code == 202
    status = await api.wait_status("slow", "downloading")
    assert status["progress"] is not None and status["progress"]["bytes_total"] == len(data)
    code, _, _ = await api.call("DELETE", "/models/slow")
    assert code == 202
    await api.wait_status("slow", "deleted", timeout=10)
    assert not list((api.home.storage / "cache").rglob("*.part"))


async def test_manifest_models_cannot_be_deleted_and_ids_are_checked(
    home: Home, fileserver: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload(100)
    url = fileserver.add("m.bin", data)
    manifest_with(home, {"declared": http_spec(url, data)})
    async with _daemon(home, monkeypatch) as api:
        await api.wait_status("declared", "available")
        code, body, _ = await api.call("DELETE", "/models/declared")
        assert code == 409 and body["error"] == "declared is declared in the manifest"
        assert str(home.manifest) in body["detail"]
        code, body, _ = await api.call("DELETE", "/models/unknown")
        assert code == 404
        # A request for a declared id is recorded, and the manifest's entry wins.
        code, body, _ = await api.call(
            "POST", "/models/download", {"model_id": "declared", **http_spec(url + "x", data)}
        )
        assert code == 202 and "manifest" in body["note"]


@pytest.mark.parametrize(
    ("body", "status", "error", "detail"),
    [
        ("not json", 400, "body is not JSON", None),
        ([1, 2], 400, "expected a JSON object with model_id and the manifest's keys", None),
        ({"source": "http"}, 400, "expected a JSON object with model_id", None),
        (
            {"model_id": "a/b/c", "source": "http", "url": "http://127.0.0.1:9/x"},
            400,
            "invalid model spec",
            ["model_id: a model id may contain at most one '/'"],
        ),
        (
            {"model_id": "x", "source": "nope"},
            400,
            "invalid model spec",
            None,
        ),
        (
            {"model_id": "x", "source": "http", "url": "ftp://a", "colour": "red"},
            400,
            "invalid model spec",
            None,
        ),
        (
            {"model_id": "x", "source": "http", "url": "http://169.254.169.254/latest"},
            400,
            "url: refused: 169.254.169.254 resolves to 169.254.169.254",
            None,
        ),
        (
            {"model_id": "x", "source": "github", "release": "v1", "api_url": "http://[fe80::1]/"},
            400,
            "api_url: refused: fe80::1 resolves to fe80::1",
            None,
        ),
    ],
)
async def test_bad_download_requests(
    api: Api, body: Any, status: int, error: str, detail: list[str] | None
) -> None:
    if isinstance(body, str):
        code, answer, _ = await api.call("POST", "/models/download", data=body.encode())
    else:
        code, answer, _ = await api.call("POST", "/models/download", body)
    assert code == status
    assert answer["error"].startswith(error)
    if detail is not None:
        assert answer["detail"] == detail
    assert not (api.home.storage / "requested.yaml").exists()
    code, health, _ = await api.call("GET", "/healthz")
    assert code == 200 and health["status"] == "ok"


async def test_unknown_source_lists_the_installed_ones(api: Api) -> None:
    code, answer, _ = await api.call("POST", "/models/download", {"model_id": "x", "source": "no"})
    assert code == 400
    [problem] = answer["detail"]
    assert problem.startswith("source: unknown source 'no' (installed: ")
    assert all(name in problem for name in ("github", "http", "huggingface", "local"))


async def test_unknown_keys_are_named_like_in_the_manifest(api: Api) -> None:
    code, answer, _ = await api.call(
        "POST",
        "/models/download",
        {"model_id": "x", "source": "http", "url": "ftp://a", "colour": "red"},
    )
    assert code == 400
    assert any(p.startswith("url: expected an http(s) URL") for p in answer["detail"])
    assert any(p.startswith("colour: unknown key") for p in answer["detail"])


async def test_oversized_body_and_auth(api: Api) -> None:
    code, answer, _ = await api.call(
        "POST", "/models/download", data=b"{" + b" " * (70 * 1024) + b"}"
    )
    assert code == 413 and set(answer) == {"error", "detail"}
    for path in ("/models/download", "/sync"):
        code, answer, _ = await api.call("POST", path, {}, token=None)
        assert code == 401 and answer["error"] == "missing or wrong API token"
        code, _, _ = await api.call("POST", path, {}, token="nope")
        assert code == 401
    code, _, _ = await api.call("DELETE", "/models/x", token=None)
    assert code == 401
    code, answer, _ = await api.call("GET", "/models", headers={"Host": "attacker.example"})
    assert code == 421


async def test_events_stream_status_and_progress_during_a_download(
    api: Api, fileserver: FileServer
) -> None:
    data = payload(6 * 1024 * 1024)
    url = fileserver.add("e.bin", data)
    fileserver.set_fault("e.bin", stall_after=2 * 1024 * 1024, stall_seconds=2.5)
    seen: list[tuple[str, dict]] = []
    connected = asyncio.Event()

    async def listen() -> None:
        async with api.session.get(api.url + "/events") as response:
            assert response.headers["Content-Type"] == "text/event-stream"
            await response.content.readline()  # the stream's opening comment
            connected.set()
            kind = None
            async for raw in response.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind:
                    seen.append((kind, json.loads(line[6:])))
                    if seen[-1][0] == "status" and seen[-1][1]["status"] == "available":
                        return

    listener = asyncio.create_task(listen())
    await asyncio.wait_for(connected.wait(), 10)
    code, _, _ = await api.call(
        "POST", "/models/download", {"model_id": "ev", **http_spec(url, data)}
    )
    assert code == 202
    await asyncio.wait_for(listener, 20)
    statuses = [p["status"] for k, p in seen if k == "status" and p["model_id"] == "ev"]
    assert statuses[0] == "pending" and "downloading" in statuses and statuses[-1] == "available"
    progress = [p["progress"] for k, p in seen if k == "progress"]
    assert progress and all(p["bytes_total"] == len(data) for p in progress)
    assert 0 < progress[0]["bytes_done"] < len(data)
    # At most one progress event a second: the stall of 2.5 s cannot produce many.
    assert len(progress) <= 5


async def test_cross_site_posts_from_a_browser_are_refused(api: Api) -> None:
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        code, answer, _ = await api.call("POST", "/sync", {}, headers=headers)
        assert code == 403 and answer["error"] == "cross-site request refused"
    code, _, _ = await api.call("POST", "/sync", {}, headers={"Origin": "http://localhost:8005"})
    assert code == 202


async def test_a_custom_folder_is_never_replaced_or_removed_by_the_manifest(
    home: Home, fileserver: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload(300)
    url = fileserver.add("c.bin", data)
    async with _daemon(home, monkeypatch) as api:
        folder = home.storage / "custom/mine"
        folder.mkdir(parents=True)
        (folder / "w.txt").write_text("hand made")
        await api.wait_status("mine", "available")
        save = home.manifest.with_name("next.yaml")
        save.write_text(f"models:\n  mine:\n    source: http\n    url: {url}\n")
        save.replace(home.manifest)
        for _ in range(40):
            code, status, _ = await api.call("GET", "/models/mine/status")
            if status["error"]:
                break
            await asyncio.sleep(0.05)
        assert "taken by the hand-made folder custom/mine" in status["error"]
        assert (folder / "w.txt").read_text() == "hand made"
        home.manifest.write_text("models:\n  mine:\n    source: http\n    state: absent\n")
        code, body, _ = await api.call("POST", "/sync", {})
        assert code == 202
        await api.daemon_pass(body["pass"])
        assert api.daemon.manifest_error is None
        assert (folder / "w.txt").read_text() == "hand made"
