"""Benchmark: the `mmd run` daemon against its targets, on 1,000 pinned HuggingFace models.

Everything runs on 127.0.0.1 in a temp dir. One ``tests.servers.hfhub.HfHubServer`` runs in
a thread of this process (so its request log can carry arrival times on this process's
monotonic clock) and serves ``--models`` repos ``bench/m0000`` ... each with ONE file,
``model.safetensors`` of ``--file-bytes`` random bytes (an LFS file: a ``resolve`` request
answered with a 302 to the server's "CDN" port, like the real hub). The manifest pins every
model to its commit sha (``revision: <40 hex>``).

0. Setup (no target): ``python -m mmd sync`` fills the storage (all models ``available``);
   then, as the reference for step 3, the same one-shot ``mmd sync`` again (a no-op) a few
   times: wall time of the whole process and the HTTP requests the hub saw.
1. ``python -m mmd run`` starts (``MMD_HOME`` in the temp dir, ``MODEL_API_PORT=0``; the
   API address is read from line 2 of ``<storage>/.mmd.lock``); the bench waits for its
   first pass (a no-op over every model) via ``GET /healthz``.
2. Idle footprint over ``--idle-seconds`` (60): RSS (``VmRSS`` of the daemon and any
   descendants, sampled every second; the maximum counts) and CPU time (``utime + stime``
   plus reaped children's, from ``/proc/<pid>/stat``) / wall time. Targets: RSS < 100 MB
   (10^6 bytes), CPU < 1 % of one core. The daemon keeps its default schedule (15 min) and
   rescan interval (5 min), so the window sees neither.
3. No-op pass: ``POST /sync {}`` (202 ``{"pass": N}``), then ``GET /healthz`` every 10 ms
   until ``passes.completed >= N``; ``--noop-runs`` (5) times, the median counts. Target
   < 0.5 s; and 0 HTTP requests to the hub during those passes.
4. Manifest save -> first download byte: a new repo (one ``--new-mib`` MiB (64)
   ``model.safetensors``) is added to the manifest the way editors save (write a temp file
   in the same folder, ``rename`` over ``models.yaml``). Measured from the rename to the
   arrival at the server of the GET that streams that file's bytes (the CDN GET; the
   ``resolve`` GET before it is its 302). Also shown: the first request about the new repo
   (the metadata call), the first ``.part`` under ``<storage>/cache`` with bytes in it
   (polled every 5 ms), and the time until the model is ``available``. ``--repeats`` (3)
   different new models, the median counts. Target < 1 s.
5. File deletion -> registry: unlink the file of an ``available`` model, then read and parse
   ``model_registry.json`` every 20 ms until that model's status is no longer ``available``
   (or its error names the file). Target < 2 s. The daemon repairs the model (a pass that
   downloads it again); the bench waits for ``available`` before the next of ``--repeats``
   (3) models, and shows the repair time too. A deletion the registry does not show within
   ``--delete-timeout`` (10 s) counts as missed (FAIL); the bench then asks for the repair
   with ``POST /sync {"ids": [...]}``.

Prints per-run lines, then a table (measured, target, PASS/FAIL) and info lines. Exits 1 if
any target FAILs (or on errors), 0 otherwise. The daemon, the server and the temp dir are
removed on exit, Ctrl-C and SIGTERM. Uncaught exceptions that killed a thread of the daemon
(``Exception in thread ...`` in its stderr) are reported as ``note:`` lines. About 2.5 minutes
with the defaults on a 2-vCPU VM (70 s of it populating the storage).

    python bench/daemon.py [--models 1000] [--idle-seconds 60] [--noop-runs 5] [--repeats 3]
                           [--new-mib 64] [--delete-timeout 10] [--tmpdir DIR] [--keep-log]

``PYTHONPATH=/tmp/copy python bench/daemon.py`` measures a modified copy of mmd (children run
in the temp dir, so PYTHONPATH comes before the checkout).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from common import SCRUBBED_VARIABLES, main_guard, print_targets, run, stop_process

ORG = "bench"
FILE = "model.safetensors"
GEN_CHUNK = 4 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_MB = 1e6  # targets are in MB = 10^6 bytes

TARGET_RSS_MB = 100.0
TARGET_CPU_PCT = 1.0
TARGET_NOOP_S = 0.5
TARGET_FIRST_BYTE_S = 1.0
TARGET_DELETE_S = 2.0


# ---------------------------------------------------------------------- the hub server


def start_hub() -> Any:
    """An HfHubServer in a thread of this process that timestamps every request on arrival."""
    # (imported by name: type-checking this script need not type-check the test servers)
    hfhub = importlib.import_module("tests.servers.hfhub")

    class TimedHub(hfhub.HfHubServer):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            #: (time.monotonic() on arrival, method, decoded path), in arrival order.
            self.arrivals: list[tuple[float, str, str]] = []

        async def _handle(self, request: Any) -> Any:
            with self._lock:
                self.arrivals.append((time.monotonic(), request.method, request.path))
            return await super()._handle(request)

        def since(self, mark: int) -> list[tuple[float, str, str]]:
            with self._lock:
                return self.arrivals[mark:]

        def mark(self) -> int:
            with self._lock:
                return len(self.arrivals)

    return TimedHub().start()


def write_random(path: pathlib.Path, size: int) -> None:
    with path.open("wb") as fh:
        left = size
        while left:
            chunk = os.urandom(min(GEN_CHUNK, left))
            fh.write(chunk)
            left -= len(chunk)


# ---------------------------------------------------------------------- helpers


def child_env(tmp: pathlib.Path, hub_url: str, home: pathlib.Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in SCRUBBED_VARIABLES and not k.startswith(("MMD_", "MODEL_", "HF_"))
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(
        MMD_HOME=str(home),
        MODEL_API_PORT="0",
        HF_ENDPOINT=hub_url,
        HF_HOME=str(tmp / "hf_home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_UPDATE_CHECK="1",
        NO_PROXY="127.0.0.1,localhost",
        # One bytecode cache for every child (filled by the first run): an editable mmd
        # under PYTHONDONTWRITEBYTECODE=1 would recompile its sources on every start.
        PYTHONPYCACHEPREFIX=str(tmp / "pycache"),
    )
    return env


def manifest_text(models: dict[str, str]) -> str:
    lines = ["version: 1", "models:"]
    for model_id, sha in models.items():
        lines += [f"  {model_id}:", f"    revision: {sha}"]
    return "\n".join(lines) + "\n"


def save_like_an_editor(path: pathlib.Path, text: str) -> float:
    """Write a temp file next to `path`, fsync it, rename it over `path`; the rename's time."""
    tmp = path.with_name(f".{path.name}.bench-tmp")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    t0 = time.monotonic()
    os.replace(tmp, path)
    return t0


def read_registry(path: pathlib.Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        return json.load(fh)["models"]


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def proc_stat(pid: int) -> list[str]:
    text = pathlib.Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on


def descendants(pid: int) -> list[int]:
    """pid and every process below it (scanning /proc for parent pids)."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int(proc_stat(int(entry.name))[1])
                parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += parents.get(p, [])
    return found


def status_kib(pid: int, key: str) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of each process, plus the reaped children's (cutime + cstime)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = proc_stat(pid)
            total += sum(int(x) for x in fields[11:15])
    return total / CLK_TCK


def part_with_bytes(cache: pathlib.Path) -> bool:
    for dirpath, _dirs, files in os.walk(cache):
        for name in files:
            if name.endswith(".part"):
                with contextlib.suppress(OSError):
                    if os.stat(os.path.join(dirpath, name)).st_size > 0:
                        return True
    return False


def thread_crashes(log: pathlib.Path) -> list[str]:
    """One note per uncaught exception that killed a thread of the daemon (Python prints
    "Exception in thread NAME:" and a traceback to stderr, outside the logging format)."""
    lines = log.read_text(errors="replace").splitlines()
    notes = []
    for i, line in enumerate(lines):
        if line.startswith("Exception in thread "):
            tail = next(
                (x for x in lines[i + 1 :] if x and not x[0].isspace() and x[0] != "T"), "?"
            )
            notes.append(f"a daemon thread died: {line.rstrip(':')}: {tail}")
    return notes


class Daemon:
    """A `python -m mmd run` child and its API."""

    def __init__(
        self, env: dict[str, str], cwd: pathlib.Path, storage: pathlib.Path, log: str
    ) -> None:
        self.log_path = cwd / log
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
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        lock = storage / ".mmd.lock"

        def announced() -> str | None:
            self.alive()
            with contextlib.suppress(OSError):
                lines = lock.read_text().split()
                if len(lines) > 1 and lines[0] == str(self.pid) and lines[1].startswith("http"):
                    return lines[1]
            return None

        try:
            self.url: str = wait_for("the API address in .mmd.lock", announced, 120, 0.02)
        except BaseException:
            self.stop()
            raise
        self.t_api = time.monotonic()

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"mmd run exited with {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        return ""

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with self.opener.open(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())

    def health(self) -> dict[str, Any]:
        self.alive()
        return self.call("GET", "/healthz")[1]

    def wait_pass(self, number: int, timeout: float = 600, every: float = 0.01) -> dict:
        """Poll /healthz until pass `number` is done; its report (passes.last)."""

        def done() -> dict | None:
            passes = self.health()["passes"]
            return passes if passes["completed"] >= number else None

        return wait_for(f"pass {number}", done, timeout, every)["last"]

    def wait_quiet(self, timeout: float = 600) -> None:
        """No pass running and none asked for."""

        def quiet() -> bool:
            passes = self.health()["passes"]
            return passes["running"] is None and passes["started"] == passes["completed"]

        wait_for("the daemon to be idle", quiet, timeout)

    def stop(self) -> tuple[float, int | None]:
        t0 = time.monotonic()
        stop_process(self.proc)
        self.log.close()
        return time.monotonic() - t0, self.proc.returncode


# ---------------------------------------------------------------------- the benchmark


def bench(args: argparse.Namespace) -> int:
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="mmd-bench-daemon-", dir=args.tmpdir))
    hub: Any = None
    daemon: Daemon | None = None
    info: list[str] = []
    notes: list[str] = []
    try:
        # -- hub content
        t0 = time.perf_counter()
        hub = start_hub()
        models: dict[str, str] = {}
        for i in range(args.models):
            repo = f"{ORG}/m{i:04d}"
            hub.create_repo(repo, pipeline_tag="text-generation")
            models[repo] = hub.commit(repo, {FILE: os.urandom(args.file_bytes)})
        new_dir = tmp / "new"
        new_dir.mkdir()
        new_models: dict[str, tuple[str, str]] = {}  # id -> (commit, sha256 of the file)
        for i in range(1, args.repeats + 1):
            repo = f"{ORG}/new-{i}"
            write_random(new_dir / f"{i}.safetensors", args.new_mib << 20)
            hub.create_repo(repo, pipeline_tag="text-generation")
            sha = hub.commit(repo, {FILE: new_dir / f"{i}.safetensors"})
            new_models[repo] = (sha, hub.files(repo, sha)[FILE].sha256)
        print(
            f"hub server {hub.url} (CDN {hub.cdn_url}) serves {args.models} repos of one "
            f"{args.file_bytes}-byte {FILE} and {args.repeats} of {args.new_mib} MiB "
            f"(set up in {time.perf_counter() - t0:.1f}s) under {tmp}",
            flush=True,
        )

        home = tmp / "home"
        home.mkdir()
        storage = home / "models"
        manifest = home / "models.yaml"
        registry = storage / "model_registry.json"
        manifest.write_text(manifest_text(models))
        env = child_env(tmp, hub.url, home)

        # -- 0. populate, then the one-shot reference
        def sync() -> tuple[float, int, str]:
            mark = hub.mark()
            t0 = time.perf_counter()
            res = subprocess.run(
                [sys.executable, "-m", "mmd", "sync"],
                cwd=tmp,
                env=env,
                capture_output=True,
                text=True,
            )
            wall = time.perf_counter() - t0
            if res.returncode != 0:
                raise RuntimeError(
                    f"mmd sync exited with {res.returncode}:\n"
                    f"{(res.stdout + res.stderr).strip()[-3000:]}"
                )
            last = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
            return wall, len(hub.since(mark)), last

        count = f"{args.models} model{'s' if args.models != 1 else ''}"
        want = f"{count}: {args.models} changed, 0 failed"
        try:
            populate, populate_req, populate_out = sync()
            by_sync = True
        except RuntimeError as exc:
            # Setup, not a measurement: fill the storage with a daemon's first pass instead,
            # and say so (the one-shot reference is then skipped).
            problem = str(exc).strip().splitlines()[-1]
            notes.append(f"`mmd sync` failed ({problem}); populated by `mmd run`'s first pass")
            print(f"note: {notes[-1]}", file=sys.stderr, flush=True)
            by_sync = False
            mark = hub.mark()
            filler = Daemon(env, tmp, storage, "filler.log")
            try:
                last = filler.wait_pass(1, every=0.2)
                populate = time.monotonic() - filler.t_start
            finally:
                _, code = filler.stop()
            if code != 0:
                raise RuntimeError(f"mmd run exited with {code} on SIGTERM") from None
            populate_req = len(hub.since(mark))
            populate_out = f"{count}: {len(last['changes'])} changed, {last['failed']} failed"
        if populate_out != want:
            raise RuntimeError(f"populating said {populate_out!r}, expected {want!r}")
        statuses = {e["status"] for e in read_registry(registry).values()}
        if statuses != {"available"}:
            raise RuntimeError(f"after populating, registry statuses are {sorted(statuses)}")
        print(
            f"populate: {'mmd sync' if by_sync else 'mmd run'} of {args.models} models took "
            f"{populate:.1f}s ({populate_req} hub requests); {populate_out}",
            flush=True,
        )
        ref: list[tuple[float, int]] = []
        for i in range(args.ref_runs if by_sync else 0):
            wall, req, out = sync()
            if out != f"{count}: 0 changed, 0 failed":
                raise RuntimeError(f"reference mmd sync was not a no-op: {out!r}")
            ref.append((wall, req))
            print(f"reference {i + 1}/{args.ref_runs}: no-op mmd sync {wall:.3f}s, {req} req")

        # -- 1. start the daemon
        daemon = Daemon(env, tmp, storage, "daemon.log")
        first_pass = daemon.wait_pass(1, every=0.05)
        t_first = time.monotonic()
        print(
            f"mmd run (pid {daemon.pid}): API {daemon.url} after "
            f"{daemon.t_api - daemon.t_start:.2f}s, first pass ({first_pass['models']} models, "
            f"{first_pass['failed']} failed, {len(first_pass['changes'])} changes) done "
            f"{t_first - daemon.t_start:.2f}s after start (pass itself "
            f"{first_pass['duration_s']}s)",
            flush=True,
        )
        if first_pass["failed"] or first_pass["changes"] or first_pass["models"] != args.models:
            raise RuntimeError(f"the first pass was not a clean no-op: {first_pass}")

        # -- 2. idle footprint
        mark = hub.mark()
        pids = descendants(daemon.pid)
        cpu0, w0 = cpu_seconds(pids), time.monotonic()
        rss: list[float] = []
        nproc = len(pids)
        for i in range(args.idle_seconds):
            pids = descendants(daemon.pid)
            nproc = max(nproc, len(pids))
            rss.append(sum(status_kib(p, "VmRSS") for p in pids) * 1024 / PAGE_MB)
            time.sleep(max(0.0, w0 + i + 1 - time.monotonic()))
        daemon.alive()
        idle_cpu = cpu_seconds(descendants(daemon.pid)) - cpu0
        idle_wall = time.monotonic() - w0
        idle_pct = 100 * idle_cpu / idle_wall
        idle_req = len(hub.since(mark))
        hwm = status_kib(daemon.pid, "VmHWM") * 1024 / PAGE_MB
        threads = status_kib(daemon.pid, "Threads")
        print(
            f"idle {idle_wall:.1f}s: RSS max {max(rss):.1f} MB (first {rss[0]:.1f}, last "
            f"{rss[-1]:.1f}), CPU {idle_cpu:.2f}s = {idle_pct:.2f} % of one core, "
            f"{nproc} process(es), {threads} threads, {idle_req} hub req",
            flush=True,
        )

        # -- 3. no-op passes
        noop: list[float] = []
        noop_own: list[float] = []
        mark = hub.mark()
        for i in range(args.noop_runs):
            daemon.wait_quiet()
            t0 = time.monotonic()
            status, body = daemon.call("POST", "/sync", {})
            if status != 202:
                raise RuntimeError(f"POST /sync answered {status} {body}")
            last = daemon.wait_pass(body["pass"])
            noop.append(time.monotonic() - t0)
            noop_own.append(last["duration_s"])
            if last["failed"] or last["changes"]:
                raise RuntimeError(f"no-op pass {body['pass']} was not a no-op: {last}")
            print(
                f"no-op {i + 1}/{args.noop_runs}: pass {body['pass']} POST -> completed "
                f"{noop[-1]:.3f}s (daemon's own duration_s {last['duration_s']:.3f}s)",
                flush=True,
            )
        noop_req = hub.since(mark)

        # -- 4. manifest save -> first download byte
        cache = storage / "cache"
        saves: list[dict[str, float | None]] = []
        current = dict(models)
        for repo, (sha, sha256) in new_models.items():
            daemon.wait_quiet()
            time.sleep(args.settle)
            current[repo] = sha
            mark = hub.mark()
            t0 = save_like_an_editor(manifest, manifest_text(current))
            part_at = None
            cdn_path = f"/cdn/lfs/{sha256}"

            def first_at(prefix: str, get_only: bool = True, mark: int = mark) -> float | None:
                """When the first request since `mark` for a path starting with `prefix`
                (only GET requests with `get_only`) arrived."""
                for at, method, path in hub.since(mark):
                    if path.startswith(prefix) and (method == "GET" or not get_only):
                        return at
                return None

            def entry_status(repo: str = repo) -> str | None:
                with contextlib.suppress(OSError, ValueError, KeyError):
                    return read_registry(registry)[repo]["status"]
                return None

            # Until the model is available, or both the CDN GET and a .part with bytes were
            # seen (the registry is read every 50 ms, the cache folder every 5 ms).
            avail_at = None
            deadline = t0 + 300
            polls = 0
            while True:
                now = time.monotonic()
                if now > deadline:
                    raise RuntimeError(f"{repo} not available 300s after the manifest save")
                if part_at is None and part_with_bytes(cache):
                    part_at = now
                if polls % 10 == 0 and entry_status() == "available":
                    avail_at = now
                    break
                if part_at is not None and first_at(cdn_path):
                    break
                polls += 1
                time.sleep(0.005)
            if avail_at is None:
                wait_for(f"{repo} available", lambda: entry_status() == "available", 300, 0.02)
                avail_at = time.monotonic()
            api_at = first_at(f"/api/models/{repo}/", get_only=False)
            resolve_at = first_at(f"/{repo}/resolve/")
            byte_at = first_at(cdn_path)
            if byte_at is None:
                raise RuntimeError(f"the hub never got a GET of {repo}'s file ({cdn_path})")

            def rel(at: float | None, t0: float = t0) -> float | None:
                return None if at is None else at - t0

            row = {
                "api": rel(api_at),
                "resolve": rel(resolve_at),
                "byte": rel(byte_at),
                "part": rel(part_at),
                "available": avail_at - t0,
            }
            saves.append(row)

            def fmt(v: float | None) -> str:
                return "-" if v is None else f"{v:.3f}s"

            print(
                f"manifest save {len(saves)}/{args.repeats} (+{repo}): first hub request "
                f"{fmt(row['api'])}, resolve GET {fmt(row['resolve'])}, file bytes (CDN GET) "
                f"{fmt(row['byte'])}, .part > 0 {fmt(row['part'])}, available "
                f"{fmt(row['available'])}",
                flush=True,
            )

        # -- 5. file deletion -> registry
        deletes: list[float] = []
        repairs: list[float] = []
        ids = list(models)
        victims = [ids[(k + 1) * len(ids) // (args.repeats + 1)] for k in range(args.repeats)]
        for repo in victims:
            daemon.wait_quiet()
            time.sleep(args.settle)
            entry = read_registry(registry)[repo]
            if entry["status"] != "available":
                raise RuntimeError(f"{repo} is {entry['status']} before the deletion test")
            name = entry["files"][0]["path"]
            victim = pathlib.Path(entry["path"]) / name
            t0 = time.monotonic()
            victim.unlink()
            seen = None
            error = None
            while time.monotonic() < t0 + args.delete_timeout:
                time.sleep(0.02)
                with contextlib.suppress(OSError, ValueError, KeyError):
                    e = read_registry(registry)[repo]
                    if e["status"] != "available" or name in (e.get("error") or ""):
                        seen, error = time.monotonic() - t0, e.get("error")
                        break
            deletes.append(math.inf if seen is None else seen)
            if seen is None:
                # Missed (a FAIL): ask for the repair, so the next deletion starts clean.
                status, body = daemon.call("POST", "/sync", {"ids": [repo]})
                if status != 202:
                    raise RuntimeError(f"POST /sync answered {status} {body}")

            def repaired(repo: str = repo, victim: pathlib.Path = victim) -> bool:
                with contextlib.suppress(OSError, ValueError, KeyError):
                    e = read_registry(registry)[repo]
                    return e["status"] == "available" and victim.is_file()
                return False

            wait_for(f"{repo} repaired", repaired, 120, 0.02)
            repairs.append(time.monotonic() - t0)
            shown = (
                f"registry shows it after {seen:.3f}s (error: {error!r})"
                if seen is not None
                else f"registry still shows it available after {args.delete_timeout:.0f}s, "
                "repaired by POST /sync"
            )
            print(
                f"delete {len(deletes)}/{args.repeats} ({repo}/{name}): {shown}; available "
                f"again after {repairs[-1]:.3f}s",
                flush=True,
            )

        daemon.wait_quiet()
        stop_s, code = daemon.stop()
        if code != 0:
            raise RuntimeError(f"mmd run exited with {code} on SIGTERM:\n{daemon.log_tail()}")
        info.append(f"mmd run stopped {stop_s:.2f}s after SIGTERM (exit code {code})")
        notes += thread_crashes(daemon.log_path)

        return report(
            args,
            rss=rss,
            idle_pct=idle_pct,
            idle_cpu=idle_cpu,
            idle_wall=idle_wall,
            idle_req=idle_req,
            hwm=hwm,
            noop=noop,
            noop_own=noop_own,
            noop_req=noop_req,
            ref=ref,
            saves=saves,
            deletes=deletes,
            repairs=repairs,
            populate=populate,
            info=info,
            notes=notes,
        )
    finally:
        if daemon is not None:
            if args.keep_log and daemon.log_path.exists():
                keep = pathlib.Path(tempfile.gettempdir()) / "mmd-bench-daemon.log"
                shutil.copy(daemon.log_path, keep)
                print(f"daemon log kept in {keep}", file=sys.stderr)
            daemon.stop()
        if hub is not None:
            hub.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def report(args: argparse.Namespace, **r: Any) -> int:
    med = statistics.median
    rows: list[tuple[str, str, str, bool]] = []

    def row(name: str, measured: str, target: str, ok: bool) -> None:
        rows.append((name, measured, target, ok))

    rss_max = max(r["rss"])
    row(
        f"idle RSS, max of {len(r['rss'])} samples",
        f"{rss_max:.1f} MB",
        f"< {TARGET_RSS_MB:.0f} MB",
        rss_max < TARGET_RSS_MB,
    )
    row(
        f"idle CPU over {r['idle_wall']:.0f}s",
        f"{r['idle_pct']:.2f} %",
        f"< {TARGET_CPU_PCT:.0f} % of a core",
        r["idle_pct"] < TARGET_CPU_PCT,
    )
    noop = med(r["noop"])
    row(
        f"no-op pass, median of {len(r['noop'])}",
        f"{noop:.3f} s",
        f"< {TARGET_NOOP_S} s",
        noop < TARGET_NOOP_S,
    )
    nreq = len(r["noop_req"])
    row("hub requests during no-op passes", f"{nreq}", "0", nreq == 0)
    byte = med(s["byte"] for s in r["saves"])
    row(
        f"manifest save -> first byte, median of {len(r['saves'])}",
        f"{byte:.3f} s",
        f"< {TARGET_FIRST_BYTE_S} s",
        byte < TARGET_FIRST_BYTE_S,
    )
    delete = med(r["deletes"])
    missed = sum(1 for d in r["deletes"] if math.isinf(d))
    row(
        f"file deleted -> registry, median of {len(r['deletes'])}",
        f"{delete:.3f} s" if not math.isinf(delete) else f"> {args.delete_timeout:.0f} s",
        f"< {TARGET_DELETE_S} s",
        delete < TARGET_DELETE_S and not missed,
    )
    if missed:
        r["notes"].append(
            f"{missed} of {len(r['deletes'])} deletions not in the registry within "
            f"{args.delete_timeout:.0f}s (see the daemon log: is the storage watch alive?)"
        )
    print()
    print(
        f"{args.models} pinned HuggingFace models ({args.file_bytes} B each) served on "
        "127.0.0.1; MB = 10^6 bytes; times on the monotonic clock."
    )
    print()
    print_targets(rows)

    ref_t = med(w for w, _ in r["ref"]) if r["ref"] else None
    ref_req = max(q for _, q in r["ref"]) if r["ref"] else 0
    print()
    print(f"info: populating mmd sync of {args.models} models: {r['populate']:.1f}s (no target)")
    if ref_t is not None:
        print(
            f"info: no-op one-shot `mmd sync` (whole process, same manifest), median of "
            f"{len(r['ref'])}: {ref_t:.3f}s, at most {ref_req} hub req; the daemon's no-op "
            f"pass is {ref_t / noop:.1f}x faster (its own duration_s: median "
            f"{med(r['noop_own']):.3f}s)"
        )
    print(
        f"info: idle: {r['idle_cpu']:.2f} CPU s in {r['idle_wall']:.1f}s, "
        f"{r['idle_req']} hub requests; peak RSS since start (VmHWM) {r['hwm']:.1f} MB"
    )
    if r["noop_req"]:
        seen = sorted({f"{m} {p}" for _, m, p in r["noop_req"]})
        print("info: hub requests during no-op passes: " + ", ".join(seen[:6]))
    for key, label in (
        ("api", "first request about the new repo"),
        ("resolve", "resolve GET of its file"),
        ("part", ".part with bytes in cache/"),
        ("available", "model available"),
    ):
        values = [s[key] for s in r["saves"] if s[key] is not None]
        if values:
            runs = ", ".join(f"{v:.3f}" for v in values)
            print(f"info: manifest save -> {label}: median {med(values):.3f}s ({runs})")
    print(
        f"info: file deleted -> model available again (repair pass): median "
        f"{med(r['repairs']):.3f}s ({', '.join(f'{v:.3f}' for v in r['repairs'])})"
    )
    for line in r["info"]:
        print(f"info: {line}")
    for line in r["notes"]:
        print(f"note: {line}")
    failed = [name for name, _, _, ok in rows if not ok]
    print()
    print(
        f"{len(rows) - len(failed)}/{len(rows)} targets met"
        + (f"; FAIL: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=1000, help="models in the manifest (1000)")
    parser.add_argument(
        "--file-bytes", type=int, default=1024, help="size of each model's file (1024)"
    )
    parser.add_argument(
        "--idle-seconds", type=int, default=60, help="idle sampling window (default 60)"
    )
    parser.add_argument("--noop-runs", type=int, default=5, help="no-op passes timed (5)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="manifest saves and file deletions (3 each)"
    )
    parser.add_argument(
        "--new-mib", type=int, default=64, help="size of each newly added model's file (64)"
    )
    parser.add_argument(
        "--ref-runs", type=int, default=3, help="no-op one-shot `mmd sync` references (3)"
    )
    parser.add_argument(
        "--settle", type=float, default=0.5, help="idle seconds before each save/deletion (0.5)"
    )
    parser.add_argument(
        "--delete-timeout",
        type=float,
        default=10.0,
        help="seconds a deletion may take to show before it counts as missed (10)",
    )
    parser.add_argument("--tmpdir", help="where to put the temp dir (default: system temp)")
    parser.add_argument(
        "--keep-log", action="store_true", help="copy the daemon's log out of the temp dir"
    )
    args = parser.parse_args(argv)
    if min(args.models, args.file_bytes, args.idle_seconds, args.noop_runs, args.repeats) < 1:
        parser.error("--models, --file-bytes, --idle-seconds, --noop-runs, --repeats: >= 1")
    if args.new_mib < 1 or args.ref_runs < 0:
        parser.error("--new-mib must be positive, --ref-runs >= 0")
    return run(lambda: bench(args))


if __name__ == "__main__":
    main_guard(main)
