"""Benchmark: the `mmd run` daemon's HTTP API on a registry of 10,000 models.

Everything runs on 127.0.0.1 in a temp dir.

0. Setup (no target): ``--models`` (10,000) registry entries ``bench/m00000`` ... of source
   ``http``, status ``available``, 1-3 small files each (``model.safetensors``,
   ``config.json``, ``tokenizer.json``; 16-200 random bytes), are written straight into
   ``<storage>/model_registry.json`` (the schema of ``Registry.to_json``), with the real
   folders and files on disk, sizes and sha256 matching, so the storage watch and the
   rescan have nothing to flag. The manifest is ``models: {}`` (the entries are kept: prune
   is off). A ``--size-mib`` (1024) MiB file of random bytes is served by
   ``python -m tests.servers.fileserver`` (a separate process). ``python -m mmd run`` starts
   with ``MMD_HOME`` in the temp dir, ``MODEL_API_PORT=0`` (the API address is read from line
   2 of ``<storage>/.mmd.lock``), ``MMD_API_TOKEN`` set (sent as ``Authorization: Bearer`` on
   POST/DELETE) and ``MMD_RESCAN_INTERVAL`` = ``--rescan-interval`` (1h, so that no periodic
   rescan of the 10,000 models falls into a measurement; the default schedule, 15 min, keeps
   the scheduled pass out too). The bench waits for the first pass (``GET /healthz``).

   Downloads are asked for with ``POST /models/download`` ``{"model_id": "bench/dl-NN",
   "source": "http", "url": ..., "sha256": ..., "size": ...}`` (a new id each time, so nothing
   is reused) and removed again with ``DELETE /models/{id}`` once measured, so the disk holds
   one copy at a time. Status changes are timestamped on arrival from one ``GET /events``
   (SSE) stream kept open for the whole run. One unreported warm-up download comes first.

1. Idle latency: one keep-alive connection (aiohttp, ``limit=1``), requests one after the
   other, cycles of one ``GET /models`` (the whole list, read to its last byte, not decoded)
   and ``--status-per-list`` (10) ``GET /models/{id}/status`` of random ids, until
   ``--list-requests`` (200) and ``--status-requests`` (2,000) samples; a few warm-up list
   requests first (the first rebuilds the daemon's cached body and is shown as info). Targets:
   p99 < 50 ms for the list, < 5 ms for one status. Percentiles are nearest-rank.
2. The same during a download: ``POST /models/download``, then the same cycles (the first
   status of each cycle asks for the downloading model, the others for random ids) until
   the SSE stream says ``available``; every sample from the POST to then counts. Repeated
   with new ids until both sample counts are reached (at most ``--max-latency-downloads``).
   Same targets.
3. Download rate without and with API load, ``--runs`` (5) pairs, the order alternating
   (none/load, load/none, ...): the time from the SSE ``downloading`` event to ``available``
   (transfer, sha256 check, fsync, switch-in and the registry save) gives MB/s; the status
   is also polled at 5 Hz for the progress' ``rate_bps`` (the transfer alone, shown as
   info). Under load, an open-loop generator sends ``--load-rate`` (100) requests/s, paced
   from 1 s before the POST until ``available`` (every ``--load-list-every``-th (10th) one a
   ``GET /models``, the others ``GET /models/{id}/status`` of random ids; up to 32
   connections, so a slow answer does not hold the pace). Target: median drop < 10 %.

Info lines add the daemon's CPU while idle (measured for ``--idle-cpu-seconds`` just before
step 1: a daemon busy while nothing happens shares the GIL and the cores with its API), the
time of the first ``GET /models`` after a registry change (it rebuilds the cached body), the
load's own latencies, and the CPU seconds of the daemon, the file server and the bench
during each rate run.

Prints per-run lines, then a table (measured, target, PASS/FAIL) and info lines. Exits 1 if
any target FAILs (or on errors), 0 otherwise. The daemon, the file server and the temp dir
are removed on exit, Ctrl-C and SIGTERM. About 1.5 minutes with the defaults on a 2-vCPU VM.

    python bench/api.py [--models 10000] [--size-mib 1024] [--runs 5] [--load-rate 100]
                        [--list-requests 200] [--status-requests 2000] [--tmpdir DIR]
                        [--keep-log]

``PYTHONPATH=/tmp/copy python bench/api.py`` measures a modified copy of mmd (children run
in the temp dir, so PYTHONPATH comes before the checkout).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import pathlib
import random
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from common import ROOT, SCRUBBED_VARIABLES, main_guard, print_targets, run, stop_process

GEN_CHUNK = 4 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")
MB = 1e6  # rates in MB/s, MB = 10^6 bytes
BIG_FILE = "big.bin"

TARGET_LIST_P99_MS = 50.0
TARGET_STATUS_P99_MS = 5.0
TARGET_DROP_PCT = 10.0

MODEL_TYPES = ("text-generation", "feature-extraction", "text-classification", "other")
FILE_NAMES = ("model.safetensors", "config.json", "tokenizer.json")


# ---------------------------------------------------------------------- setup


def write_random(path: pathlib.Path, size: int) -> str:
    """`size` random bytes into `path`; their sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as fh:
        left = size
        while left:
            chunk = os.urandom(min(GEN_CHUNK, left))
            digest.update(chunk)
            fh.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def build_storage(storage: pathlib.Path, count: int, rng: random.Random) -> list[str]:
    """`count` available http models: folders, files and model_registry.json. Their ids."""
    models: dict[str, dict[str, Any]] = {}
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for i in range(count):
        model_id = f"bench/m{i:05d}"
        folder = storage / "http" / model_id
        folder.mkdir(parents=True)
        files = []
        for name in FILE_NAMES[: rng.randint(1, 3)]:
            data = rng.randbytes(rng.randint(16, 200))
            (folder / name).write_bytes(data)
            files.append(
                {"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            )
        sha = files[0]["sha256"]
        models[model_id] = {
            "model_id": model_id,
            "source": "http",
            "model_type": MODEL_TYPES[i % len(MODEL_TYPES)],
            "path": str(folder),
            "status": "available",
            "version": f"sha256:{sha}",
            "size_bytes": sum(f["size"] for f in files),
            "download_date": now,
            "files": files,
            "error": None,
            "metadata": {"url": f"http://127.0.0.1:9/files/m{i:05d}/model.safetensors"},
            "spec_digest": hashlib.sha256(model_id.encode()).hexdigest()[:16],
        }
    registry = {"schema_version": 1, "updated_at": now, "models": models}
    (storage / "model_registry.json").write_text(json.dumps(registry, indent=1) + "\n")
    return list(models)


def start_fileserver(directory: pathlib.Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.servers.fileserver", "--port", "0", "--dir", str(directory)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()  # READY as soon as it listens
    if not line.startswith("READY "):
        stop_process(proc)
        raise RuntimeError(f"file server did not start (said {line!r})")
    return proc, line.split(None, 1)[1]


def child_env(tmp: pathlib.Path, home: pathlib.Path, token: str, rescan: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in SCRUBBED_VARIABLES and not k.startswith(("MMD_", "MODEL_", "HF_"))
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(
        MMD_HOME=str(home),
        MODEL_API_HOST="127.0.0.1",
        MODEL_API_PORT="0",
        MMD_API_TOKEN=token,
        MMD_RESCAN_INTERVAL=rescan,
        HF_HUB_OFFLINE="1",
        NO_PROXY="127.0.0.1,localhost",
        PYTHONPYCACHEPREFIX=str(tmp / "pycache"),
    )
    return env


def proc_cpu(pid: int) -> float:
    """utime + stime (all threads) of a running process, in seconds; NaN when gone."""
    try:
        text = pathlib.Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return math.nan


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


class Daemon:
    """A `python -m mmd run` child; its API URL from line 2 of `.mmd.lock`."""

    def __init__(self, env: dict[str, str], cwd: pathlib.Path, storage: pathlib.Path) -> None:
        self.log_path = cwd / "daemon.log"
        self.log = self.log_path.open("w")
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mmd", "run"],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.pid = self.proc.pid
        lock = storage / ".mmd.lock"

        def announced() -> str | None:
            self.alive()
            with contextlib.suppress(OSError):
                lines = lock.read_text().split()
                if len(lines) > 1 and lines[0] == str(self.pid) and lines[1].startswith("http"):
                    return lines[1]
            return None

        try:
            self.url: str = wait_for("the API address in .mmd.lock", announced, 180, 0.02)
        except BaseException:
            self.stop()
            raise
        self.t_api = time.monotonic()
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"mmd run exited with {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        return ""

    def health(self) -> dict[str, Any]:
        self.alive()
        with self.opener.open(self.url + "/healthz", timeout=30) as resp:
            return json.loads(resp.read())

    def stop(self) -> tuple[float, int | None]:
        t0 = time.monotonic()
        stop_process(self.proc)
        self.log.close()
        return time.monotonic() - t0, self.proc.returncode


# ---------------------------------------------------------------------- statistics


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


@dataclass
class Sample:
    kind: str  # "list" or "status"
    start: float  # perf_counter
    end: float
    due: float | None = None  # paced load: when it was meant to start

    @property
    def latency(self) -> float:
        return self.end - self.start


def of(samples: list[Sample], kind: str) -> list[float]:
    return [s.latency for s in samples if s.kind == kind]


def describe(samples: list[Sample], kind: str) -> str:
    values = of(samples, kind)
    if not values:
        return f"{kind}: none"
    return (
        f"{kind} n={len(values)} p50 {ms(pct(values, 50))}, p99 {ms(pct(values, 99))}, "
        f"max {ms(max(values))}"
    )


# ---------------------------------------------------------------------- the API client


@dataclass
class RateRun:
    model_id: str
    load: bool
    post_at: float = 0.0
    downloading_at: float = 0.0
    available_at: float = 0.0
    progress: list[tuple[float, int, int]] = field(default_factory=list)  # t, done, rate_bps
    daemon_cpu: float = 0.0
    server_cpu: float = 0.0
    bench_cpu: float = 0.0
    load_samples: list[Sample] = field(default_factory=list)

    @property
    def window(self) -> float:
        return self.available_at - self.downloading_at

    def mbps(self, size: int) -> float:
        return size / self.window / MB

    @property
    def last_rate(self) -> float:
        """rate_bps of the last progress sample (bytes received / s since the transfer began)."""
        rates = [r for _, _, r in self.progress if r]
        return rates[-1] / MB if rates else math.nan


class Api:
    def __init__(self, url: str, token: str, ids: list[str], seed: int) -> None:
        self.url = url
        self.auth = {"Authorization": f"Bearer {token}"}
        self.ids = ids
        self.rng = random.Random(seed)
        timeout = aiohttp.ClientTimeout(total=120)
        self.seq = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), timeout=timeout)
        self.load = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32), timeout=timeout)
        self.ctl = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4), timeout=timeout)
        self.sse = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        #: (arrival time, kind, payload) of every SSE event, in arrival order.
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self._news = asyncio.Event()
        self._sse_task: asyncio.Task[None] | None = None
        self.list_bytes = 0

    async def close(self) -> None:
        if self._sse_task is not None:
            self._sse_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await self._sse_task
        for session in (self.seq, self.load, self.ctl, self.sse):
            await session.close()

    # -- SSE

    async def open_events(self) -> None:
        ready = asyncio.get_running_loop().create_future()

        async def reader() -> None:
            try:
                async with self.sse.get(self.url + "/events") as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"GET /events answered {resp.status}")
                    ready.set_result(None)
                    kind = ""
                    async for raw in resp.content:
                        line = raw.decode().rstrip("\r\n")
                        if line.startswith("event: "):
                            kind = line[7:]
                        elif line.startswith("data: "):
                            payload = json.loads(line[6:])
                            self.events.append((time.perf_counter(), kind, payload))
                            self._news.set()
            except BaseException as exc:
                if not ready.done():
                    ready.set_exception(exc)
                raise

        self._sse_task = asyncio.create_task(reader())
        await asyncio.wait_for(ready, 30)

    def status_at(self, model_id: str, status: str, since: float = 0.0) -> float | None:
        for at, kind, payload in self.events:
            if (
                at >= since
                and kind == "status"
                and payload.get("model_id") == model_id
                and payload.get("status") == status
            ):
                return at
        return None

    async def wait_status(
        self, model_id: str, statuses: tuple[str, ...], since: float, timeout: float = 600
    ) -> tuple[str, float]:
        deadline = time.perf_counter() + timeout
        while True:
            for status in statuses:
                at = self.status_at(model_id, status, since)
                if at is not None:
                    return status, at
            if self._sse_task is not None and self._sse_task.done():
                raise RuntimeError(f"the event stream ended: {self._sse_task!r}")
            left = deadline - time.perf_counter()
            if left <= 0:
                raise RuntimeError(f"{model_id} not {'/'.join(statuses)} after {timeout:.0f}s")
            self._news.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), min(left, 1.0))

    # -- requests

    async def get(self, session: aiohttp.ClientSession, kind: str, model_id: str = "") -> Sample:
        path = "/models" if kind == "list" else f"/models/{model_id}/status"
        t0 = time.perf_counter()
        async with session.get(self.url + path) as resp:
            body = await resp.read()
        t1 = time.perf_counter()
        if resp.status != 200:
            raise RuntimeError(f"GET {path} answered {resp.status}: {body[:200]!r}")
        if kind == "list":
            self.list_bytes = len(body)
        return Sample(kind, t0, t1)

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.ctl.request(method, self.url + path, json=body, headers=self.auth) as resp:
            return resp.status, await resp.json(content_type=None)

    async def health(self) -> dict[str, Any]:
        status, body = await self.call("GET", "/healthz")
        if status != 200:
            raise RuntimeError(f"GET /healthz answered {status}")
        return body

    async def wait_quiet(self, timeout: float = 600) -> None:
        deadline = time.perf_counter() + timeout
        while True:
            passes = (await self.health())["passes"]
            if passes["running"] is None and passes["started"] == passes["completed"]:
                return
            if time.perf_counter() > deadline:
                raise RuntimeError("the daemon did not become idle")
            await asyncio.sleep(0.05)

    def random_id(self) -> str:
        return self.ids[self.rng.randrange(len(self.ids))]

    async def cycles(
        self,
        n_list: int,
        n_status: int,
        per_list: int,
        own: Callable[[], str | None],
        stop: Callable[[], bool],
    ) -> list[Sample]:
        """Sequential cycles of 1 list + `per_list` status requests on one connection,
        until both counts are reached or `stop()` says so (checked before each request).
        The first status of a cycle asks for `own()` when that is not None."""
        samples: list[Sample] = []
        lists = statuses = 0
        while (lists < n_list or statuses < n_status) and not stop():
            samples.append(await self.get(self.seq, "list"))
            lists += 1
            for k in range(per_list):
                if stop():
                    break
                mine = own() if k == 0 else None
                target = mine if mine is not None else self.random_id()
                samples.append(await self.get(self.seq, "status", target))
                statuses += 1
        return samples

    async def paced(self, rate: float, list_every: int, stop: asyncio.Event) -> list[Sample]:
        """Open-loop load: request i is due at t0 + i/rate, whatever earlier ones took."""
        samples: list[Sample] = []
        tasks: set[asyncio.Task[None]] = set()
        t0 = time.perf_counter()

        async def one(kind: str, due: float) -> None:
            sample = await self.get(self.load, kind, self.random_id())
            sample.due = due
            samples.append(sample)

        i = 0
        while not stop.is_set():
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            kind = "list" if i % list_every == 0 else "status"
            task = asyncio.create_task(one(kind, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if tasks:
            await asyncio.gather(*tasks)
        return samples

    async def poll_progress(self, run: RateRun, stop: asyncio.Event, hz: float = 5.0) -> None:
        while not stop.is_set():
            status, body = await self.call("GET", f"/models/{run.model_id}/status")
            if status == 200 and body.get("progress"):
                p = body["progress"]
                run.progress.append((time.perf_counter(), p["bytes_done"], p["rate_bps"]))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1 / hz)

    # -- downloads

    async def post_download(self, model_id: str, spec: dict[str, Any]) -> float:
        t0 = time.perf_counter()
        status, body = await self.call("POST", "/models/download", {"model_id": model_id, **spec})
        if status != 202:
            raise RuntimeError(f"POST /models/download answered {status}: {body}")
        return t0

    async def finish(self, model_id: str, since: float) -> float:
        """Wait for `available` (error: raise); the SSE arrival time."""
        status, at = await self.wait_status(model_id, ("available", "error"), since)
        if status == "error":
            _, body = await self.call("GET", f"/models/{model_id}/status")
            raise RuntimeError(f"download of {model_id} failed: {body.get('error')}")
        return at

    async def delete(self, model_id: str) -> None:
        # After the pass that installed it: a DELETE while that pass still cleans up its
        # stage cancels the model's task, and the pass counts it as failed.
        await self.wait_quiet()
        t0 = time.perf_counter()
        status, body = await self.call("DELETE", f"/models/{model_id}")
        if status != 202:
            raise RuntimeError(f"DELETE /models/{model_id} answered {status}: {body}")
        await self.wait_status(model_id, ("deleted",), t0, timeout=120)
        await self.wait_quiet()


# ---------------------------------------------------------------------- the benchmark


async def measure(
    args: argparse.Namespace,
    daemon: Daemon,
    server_pid: int,
    token: str,
    ids: list[str],
    spec: dict[str, Any],
) -> dict[str, Any]:
    api = Api(daemon.url, token, ids, args.seed)
    size = int(spec["size"])
    counter = iter(range(1000))
    info: list[str] = []

    def new_id() -> str:
        return f"bench/dl-{next(counter):02d}"

    try:
        await api.open_events()
        await api.wait_quiet()

        # -- warm-up download (imports, first session, page cache of the source file)
        model_id = new_id()
        t0 = await api.post_download(model_id, spec)
        t1 = await api.finish(model_id, t0)
        dl_at = api.status_at(model_id, "downloading", t0) or t0
        print(
            f"warm-up download {model_id}: POST -> available {t1 - t0:.2f}s "
            f"({size / (t1 - dl_at) / MB:.0f} MB/s from `downloading`)",
            flush=True,
        )
        await api.delete(model_id)

        # -- 1. idle latency
        await api.wait_quiet()
        await asyncio.sleep(args.settle)
        cpu0, t0 = proc_cpu(daemon.pid), time.perf_counter()
        await asyncio.sleep(args.idle_cpu_seconds)
        idle_pct = 100 * (proc_cpu(daemon.pid) - cpu0) / (time.perf_counter() - t0)
        info.append(
            f"daemon CPU while idle ({args.idle_cpu_seconds:.0f}s before the idle latency "
            f"phase): {idle_pct:.1f} % of a core"
        )
        if idle_pct > 10:
            info.append(
                "the daemon is busy while nothing happens: its latencies below share the GIL "
                "and the CPU with that work (py-spy dump --pid PID shows where it is)"
            )
        print(f"daemon CPU while idle: {idle_pct:.1f} % of a core", flush=True)
        cold = await api.get(api.seq, "list")  # the first after a registry change builds it
        for _ in range(args.warmup):
            await api.get(api.seq, "list")
            await api.get(api.seq, "status", api.random_id())
        info.append(
            f"first GET /models after a registry change (builds the cached body): "
            f"{ms(cold.latency)}; body {api.list_bytes / MB:.2f} MB"
        )
        idle = await api.cycles(
            args.list_requests,
            args.status_requests,
            args.status_per_list,
            lambda: None,
            lambda: False,
        )
        print(
            f"idle: {describe(idle, 'list')}; {describe(idle, 'status')}",
            flush=True,
        )

        # -- 2. latency during downloads
        during: list[Sample] = []
        downloads = 0
        while (
            len(of(during, "list")) < args.list_requests
            or len(of(during, "status")) < args.status_requests
        ):
            if downloads >= args.max_latency_downloads:
                info.append(
                    f"latency during downloads: only {len(of(during, 'list'))} list and "
                    f"{len(of(during, 'status'))} status samples in {downloads} downloads"
                )
                break
            downloads += 1
            await api.wait_quiet()
            model_id = new_id()
            t0 = await api.post_download(model_id, spec)
            dl_id = model_id

            def done(model_id: str = dl_id, t0: float = t0) -> bool:
                return any(
                    api.status_at(model_id, s, t0) is not None for s in ("available", "error")
                )

            def own(model_id: str = dl_id, t0: float = t0) -> str | None:
                """The downloading model, once the registry has it."""
                return model_id if api.status_at(model_id, "pending", t0) else None

            got = await api.cycles(10**9, 10**9, args.status_per_list, own, done)
            t1 = await api.finish(model_id, t0)
            got = [s for s in got if s.start < t1]
            during += got
            print(
                f"during download {downloads} ({model_id}, POST -> available {t1 - t0:.2f}s): "
                f"{describe(got, 'list')}; {describe(got, 'status')}",
                flush=True,
            )
            await api.delete(model_id)

        # -- 3. download rate, with and without load
        runs: list[RateRun] = []
        for k in range(args.runs):
            order = (False, True) if k % 2 == 0 else (True, False)
            for loaded in order:
                await api.wait_quiet()
                os.sync()
                await asyncio.sleep(args.settle)
                run_ = RateRun(new_id(), loaded)
                stop = asyncio.Event()
                load_task = None
                cpu0 = (proc_cpu(daemon.pid), proc_cpu(server_pid), self_cpu())
                if loaded:
                    load_task = asyncio.create_task(
                        api.paced(args.load_rate, args.load_list_every, stop)
                    )
                    await asyncio.sleep(1.0)
                poller = asyncio.create_task(api.poll_progress(run_, stop))
                try:
                    run_.post_at = await api.post_download(run_.model_id, spec)
                    run_.available_at = await api.finish(run_.model_id, run_.post_at)
                finally:
                    stop.set()
                    await poller
                    if load_task is not None:
                        run_.load_samples = await load_task
                cpu1 = (proc_cpu(daemon.pid), proc_cpu(server_pid), self_cpu())
                run_.daemon_cpu, run_.server_cpu, run_.bench_cpu = (
                    b - a for a, b in zip(cpu0, cpu1, strict=True)
                )
                at = api.status_at(run_.model_id, "downloading", run_.post_at)
                if at is None:
                    raise RuntimeError(f"no `downloading` event for {run_.model_id}")
                run_.downloading_at = at
                runs.append(run_)
                line = (
                    f"rate run {k + 1}/{args.runs} {'with' if loaded else 'without'} load "
                    f"({run_.model_id}): downloading -> available {run_.window:.3f}s = "
                    f"{run_.mbps(size):.0f} MB/s (POST -> downloading "
                    f"{run_.downloading_at - run_.post_at:.3f}s; last rate_bps "
                    f"{run_.last_rate:.0f} MB/s); CPU s daemon {run_.daemon_cpu:.2f}, "
                    f"file server {run_.server_cpu:.2f}, bench {run_.bench_cpu:.2f}"
                )
                if loaded:
                    inside = [
                        s
                        for s in run_.load_samples
                        if run_.downloading_at <= s.start < run_.available_at
                    ]
                    line += (
                        f"; load in the window: {len(inside) / run_.window:.0f} req/s, "
                        f"{describe(inside, 'list')}; {describe(inside, 'status')}"
                    )
                print(line, flush=True)
                await api.delete(run_.model_id)
        return {"idle": idle, "during": during, "downloads": downloads, "runs": runs, "info": info}
    finally:
        await api.close()


def bench(args: argparse.Namespace) -> int:
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="mmd-bench-api-", dir=args.tmpdir))
    server: subprocess.Popen[str] | None = None
    daemon: Daemon | None = None
    try:
        rng = random.Random(args.seed)
        serve = tmp / "serve"
        serve.mkdir()
        t0 = time.perf_counter()
        size = args.size_mib << 20
        sha = write_random(serve / BIG_FILE, size)
        t_file = time.perf_counter() - t0
        home = tmp / "home"
        storage = home / "models"
        storage.mkdir(parents=True)
        (home / "models.yaml").write_text("version: 1\nmodels: {}\n")
        t0 = time.perf_counter()
        ids = build_storage(storage, args.models, rng)
        t_storage = time.perf_counter() - t0
        reg_mb = (storage / "model_registry.json").stat().st_size / MB
        server, server_url = start_fileserver(serve)
        print(
            f"{args.size_mib} MiB file ({t_file:.1f}s) served by {server_url}; {args.models} "
            f"registry entries with their files on disk ({t_storage:.1f}s, registry "
            f"{reg_mb:.1f} MB) under {tmp}",
            flush=True,
        )
        token = secrets.token_hex(16)
        env = child_env(tmp, home, token, args.rescan_interval)
        daemon = Daemon(env, tmp, storage)

        def first_pass() -> dict[str, Any] | None:
            passes = daemon.health()["passes"]
            return passes["last"] if passes["completed"] >= 1 else None

        last = wait_for("the first pass", first_pass, 600, 0.1)
        health = daemon.health()
        print(
            f"mmd run (pid {daemon.pid}): API {daemon.url} after "
            f"{daemon.t_api - daemon.t_start:.2f}s, first pass done "
            f"{time.monotonic() - daemon.t_start:.2f}s after start (pass {last['duration_s']}s, "
            f"{last['models']} models, {last['failed']} failed); models {health['models']}",
            flush=True,
        )
        if health["models"].get("available") != args.models:
            raise RuntimeError(f"the daemon does not see {args.models} available: {health}")

        spec = {
            "source": "http",
            "url": f"{server_url}/{BIG_FILE}",
            "sha256": sha,
            "size": size,
        }
        try:
            results = asyncio.run(measure(args, daemon, server.pid, token, ids, spec))
        except aiohttp.ClientError as exc:
            raise RuntimeError(f"API request failed: {exc!r}\n{daemon.log_tail()}") from None

        stop_s, code = daemon.stop()
        if code != 0:
            raise RuntimeError(f"mmd run exited with {code} on SIGTERM:\n{daemon.log_tail()}")
        results["info"].append(f"mmd run stopped {stop_s:.2f}s after SIGTERM")
        crashes = [
            line
            for line in daemon.log_path.read_text(errors="replace").splitlines()
            if line.startswith("Exception in thread ") or "Traceback" in line
        ]
        if crashes:
            results["info"].append(f"daemon log has {len(crashes)} traceback(s): {crashes[0]}")
        return report(args, size, results)
    finally:
        if daemon is not None:
            if args.keep_log and daemon.log_path.exists():
                keep = pathlib.Path(tempfile.gettempdir()) / "mmd-bench-api.log"
                shutil.copy(daemon.log_path, keep)
                print(f"daemon log kept in {keep}", file=sys.stderr)
            daemon.stop()
        if server is not None:
            stop_process(server)
        shutil.rmtree(tmp, ignore_errors=True)


def report(args: argparse.Namespace, size: int, r: dict[str, Any]) -> int:
    rows: list[tuple[str, str, str, bool]] = []

    def latency_row(name: str, samples: list[Sample], kind: str, target_ms: float) -> None:
        values = of(samples, kind)
        p50, p99 = pct(values, 50), pct(values, 99)
        rows.append(
            (
                f"{name} (n={len(values)})",
                f"p99 {p99 * 1000:.2f} ms (p50 {p50 * 1000:.2f})",
                f"p99 < {target_ms:.0f} ms",
                p99 * 1000 < target_ms,
            )
        )

    latency_row("GET /models, idle", r["idle"], "list", TARGET_LIST_P99_MS)
    latency_row("GET /models/{id}/status, idle", r["idle"], "status", TARGET_STATUS_P99_MS)
    latency_row("GET /models, during a download", r["during"], "list", TARGET_LIST_P99_MS)
    latency_row(
        "GET /models/{id}/status, during a download", r["during"], "status", TARGET_STATUS_P99_MS
    )
    runs: list[RateRun] = r["runs"]
    free = [x.mbps(size) for x in runs if not x.load]
    loaded = [x.mbps(size) for x in runs if x.load]
    base, under = statistics.median(free), statistics.median(loaded)
    drop = 100 * (base - under) / base
    rows.append(
        (
            f"download rate drop under {args.load_rate:.0f} req/s (median of {len(free)})",
            f"{drop:.1f} % ({base:.0f} -> {under:.0f} MB/s)",
            f"< {TARGET_DROP_PCT:.0f} %",
            drop < TARGET_DROP_PCT,
        )
    )

    print()
    print(
        f"{args.models} registry entries; {args.size_mib} MiB download over 127.0.0.1; "
        "latencies to the last byte of the body; MB = 10^6 bytes."
    )
    print()
    print_targets(rows)
    print()
    for label, samples in (("idle", r["idle"]), ("during downloads", r["during"])):
        for kind in ("list", "status"):
            print(f"info: {label}: {describe(samples, kind)}")
    print(f"info: latency during downloads: {r['downloads']} downloads")
    print(
        "info: download MB/s without load: "
        + ", ".join(f"{v:.0f}" for v in free)
        + "; with load: "
        + ", ".join(f"{v:.0f}" for v in loaded)
    )
    for load in (False, True):
        sel = [x for x in runs if x.load is load]
        rates = [x.last_rate for x in sel]
        print(
            f"info: {'with' if load else 'without'} load: last progress rate_bps (transfer only) "
            f"median {statistics.median(rates):.0f} MB/s; POST -> downloading median "
            f"{statistics.median(x.downloading_at - x.post_at for x in sel):.3f}s; CPU s per "
            f"download: daemon {statistics.median(x.daemon_cpu for x in sel):.2f}, file server "
            f"{statistics.median(x.server_cpu for x in sel):.2f}, bench "
            f"{statistics.median(x.bench_cpu for x in sel):.2f}"
        )
    under_load = [s for x in runs if x.load for s in x.load_samples]
    if under_load:
        late = [s.start - s.due for s in under_load if s.due is not None]
        print(
            f"info: the {args.load_rate:.0f} req/s load (all runs): {describe(under_load, 'list')}"
            f"; {describe(under_load, 'status')}; start late p99 {ms(pct(late, 99))}"
        )
    for line in r["info"]:
        print(f"info: {line}")
    failed = [name for name, _, _, ok in rows if not ok]
    print()
    print(
        f"{len(rows) - len(failed)}/{len(rows)} targets met"
        + (f"; FAIL: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=10000, help="registry entries (10000)")
    parser.add_argument("--size-mib", type=int, default=1024, help="download size, MiB (1024)")
    parser.add_argument("--runs", type=int, default=5, help="pairs of rate runs (5)")
    parser.add_argument("--load-rate", type=float, default=100.0, help="API load, req/s (100)")
    parser.add_argument(
        "--load-list-every", type=int, default=10, help="every Nth load request lists (10)"
    )
    parser.add_argument("--list-requests", type=int, default=200, help="list samples (200)")
    parser.add_argument("--status-requests", type=int, default=2000, help="status samples (2000)")
    parser.add_argument(
        "--status-per-list", type=int, default=10, help="status requests per list request (10)"
    )
    parser.add_argument("--warmup", type=int, default=5, help="unreported warm-up cycles (5)")
    parser.add_argument(
        "--max-latency-downloads",
        type=int,
        default=8,
        help="downloads at most for the latency-during-download samples (8)",
    )
    parser.add_argument(
        "--rescan-interval", default="1h", help="the daemon's MMD_RESCAN_INTERVAL (1h)"
    )
    parser.add_argument(
        "--settle", type=float, default=1.0, help="idle seconds before each rate run (1)"
    )
    parser.add_argument(
        "--idle-cpu-seconds",
        type=float,
        default=3.0,
        help="window for the daemon's idle CPU, shown as info (3)",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (1)")
    parser.add_argument("--tmpdir", help="where to put the temp dir (default: system temp)")
    parser.add_argument(
        "--keep-log", action="store_true", help="copy the daemon's log out of the temp dir"
    )
    args = parser.parse_args(argv)
    if min(args.models, args.size_mib, args.runs, args.list_requests, args.status_requests) < 1:
        parser.error("--models, --size-mib, --runs, --list-requests, --status-requests: >= 1")
    if args.load_rate <= 0 or args.load_list_every < 1 or args.status_per_list < 1:
        parser.error("--load-rate > 0, --load-list-every and --status-per-list >= 1")
    return run(lambda: bench(args))


if __name__ == "__main__":
    main_guard(main)
