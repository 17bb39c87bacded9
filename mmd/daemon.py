"""`mmd run`: the long-running daemon.

One asyncio loop holds everything: the APScheduler reconcile and rescan jobs, the
watchdog hand-offs, the aiohttp API, signals and sd_notify. Every reason to reconcile
(schedule, manifest edit, SIGHUP, `POST /sync`, a damaged model) becomes a request to
one pass runner, so two passes never run at once and requests arriving during a pass
are merged into the next one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mmd import __version__
from mmd.audit import AuditLog
from mmd.backoff import RetryBackoff
from mmd.config import Settings
from mmd.diskwatch import DiskMonitor
from mmd.errors import ConfigError, ManifestError, MmdError, StorageLockedError
from mmd.hookspecs import SourceContext
from mmd.live import Fanout, LiveState
from mmd.lock import StorageLock
from mmd.manifest import Manifest, load_manifest
from mmd.metrics import Metrics
from mmd.plan import ActionKind, plan
from mmd.plugins import Plugins
from mmd.registry import Registry, utc_now
from mmd.requested import RequestedModels
from mmd.storage import RESERVED_TOP, Storage
from mmd.sync import Outcome, Syncer
from mmd.systemd import Notifier
from mmd.types import ModelEntry, ModelSpec, State, spec_digest
from mmd.urls import is_loopback
from mmd.watch import Debounced, Watchers

log = logging.getLogger(__name__)

# Settings that name resources held for the daemon's life: a reload cannot move them.
_FIXED = ("storage_dir", "registry_file", "api_host", "api_port")
STOP_BUDGET_S = 8.0


@dataclass
class PassRequest:
    reason: str
    ids: frozenset[str] | None = None  # None: every model
    force: bool = False  # retry failing models now, whatever their backoff says

    def merge(self, other: PassRequest) -> PassRequest:
        ids = None if self.ids is None or other.ids is None else self.ids | other.ids
        reason = self.reason if other.reason == self.reason else f"{self.reason}, {other.reason}"
        return PassRequest(reason, ids, self.force or other.force)


@dataclass
class PassReport:
    number: int
    reason: str
    started_at: str
    finished_at: str | None = None
    duration_s: float | None = None
    error: str | None = None
    outcomes: list[Outcome] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        changes = [o for o in self.outcomes if not o.ok or o.action is not ActionKind.NOTHING]
        return {
            "number": self.number,
            "reason": self.reason,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_s": self.duration_s,
            "error": self.error,
            "models": len(self.outcomes),
            "failed": sum(1 for o in self.outcomes if not o.ok),
            "changes": [o.__dict__ | {"action": str(o.action)} for o in changes],
        }


class Daemon:
    def __init__(
        self,
        settings: Settings,
        plugins: Plugins,
        reload_settings: Callable[[], Settings],
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.plugins = plugins
        self.reload_settings = reload_settings
        self.notifier = notifier or Notifier()
        self.storage = Storage(settings.storage_dir)
        self.lock = StorageLock(settings.storage_dir)
        self.registry = Registry(settings.registry_file)
        self.live = LiveState(self.registry)
        self.requested = RequestedModels(self.storage.root)
        self._syncer: Syncer | None = None
        self._listing: dict[tuple[str | None, ...], tuple[int, bytes]] = {}
        self.backoff = RetryBackoff(settings.retry_initial, settings.retry_max)
        self.manifest: Manifest | None = None
        self.manifest_error: str | None = None
        self.started = time.monotonic()
        self.api_url: str | None = None
        self.passes_started = 0
        self.passes_completed = 0
        self.current: PassReport | None = None
        self.last: PassReport | None = None
        # The last few reports, so `mmd sync` finds its own pass even when others follow.
        self.recent: collections.deque[PassReport] = collections.deque(maxlen=16)
        self._pending: PassRequest | None = None
        self._wanted = asyncio.Event()
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self._tasks: list[asyncio.Task[Any]] = []
        self._runner: asyncio.Task[None] | None = None
        self._scheduler: Any = None
        self._api: Any = None
        self._status_sent = ""
        self._reloading = asyncio.Lock()
        self._started = False

    # -- requests -------------------------------------------------------------

    def request_pass(
        self, reason: str, ids: Sequence[str] | None = None, force: bool = False
    ) -> int:
        """Ask for a pass; returns the number of the pass that will serve the request."""
        request = PassRequest(reason, frozenset(ids) if ids else None, force)
        self._pending = request if self._pending is None else self._pending.merge(request)
        self._wanted.set()
        return self.passes_started + 1

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    # -- life cycle -----------------------------------------------------------

    async def run(self) -> int:
        """Serve until stopped; 0 after a clean stop. Startup errors raise MmdError."""
        check_bind(self.settings)
        loop = asyncio.get_running_loop()
        # Signals first: a SIGHUP while the registry is being rebuilt must not kill us.
        for sig, action in (
            (signal.SIGTERM, lambda: self.stop("SIGTERM")),
            (signal.SIGINT, lambda: self.stop("SIGINT")),
            (signal.SIGHUP, self._on_sighup),
        ):
            loop.add_signal_handler(sig, action)
        await asyncio.to_thread(self.storage.prepare)
        try:
            if not await self._take_lock():
                return 0  # stopped while waiting
            await self._start(loop)
            await self._stop.wait()
            log.info("stopping (%s)", self._stop_reason)
            self.notifier.stopping()
        finally:
            await self._shutdown()
        return 0

    async def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.manifest = await asyncio.to_thread(self._read_manifest)
        known = (
            [(s.source, s.model_id) for s in self.manifest.models.values()] if self.manifest else []
        )
        self.registry = await asyncio.to_thread(
            Registry.load, self.settings.registry_file, self.storage, known
        )
        self.live.registry = self.registry
        self.metrics = Metrics(self.registry, self.storage.root)
        self.audit = AuditLog(self.storage.root / "audit.log")
        self.audit.remember(self.registry.query())
        self.events = Fanout(self.live, self.metrics, self.audit)
        await asyncio.to_thread(self.requested.load)
        self.monitor = DiskMonitor(self.registry, self.storage, self.events, self._on_damage)
        await self.monitor.baseline()
        self._disk_check = Debounced(loop, 0.3, self._spawn_disk_check)
        self._manifest_edit = Debounced(loop, 0.3, self._on_manifest_edit)

        from mmd.api import start_api

        self._api, self.api_url = await start_api(self, self.settings)
        self.lock.announce(self.api_url)

        self.watchers = Watchers(loop)
        self._start_watches()
        self._watch_thread_deaths(loop)
        self._start_scheduler()
        self._runner = asyncio.create_task(self._run_passes(), name="passes")
        self._tasks.append(asyncio.create_task(self._tick(), name="status"))
        self._started = True
        self.notifier.ready(self.status_line())
        log.info(
            "mmd %s running: storage %s, manifest %s, API %s, schedule %s",
            __version__,
            self.storage.root,
            self.settings.manifest,
            self.api_url,
            self.settings.schedule.describe(),
        )

    def _start_watches(self) -> None:
        self.watchers.watch_manifest(self.settings.manifest, self._manifest_edit.poke)
        self.watchers.watch_storage(self.storage.root, _ignored, self._on_storage_event)

    def _watch_thread_deaths(self, loop: asyncio.AbstractEventLoop) -> None:
        """Restart the file watches when one of watchdog's threads dies.

        watchdog 7's inotify reader can die on a KeyError after a folder that held a
        watch is exchanged (renameat2) and then deleted, which is how a repaired or
        updated model is switched in. Without this, the watch would go silent until the
        periodic rescan.
        """
        previous = threading.excepthook

        def hook(args: threading.ExceptHookArgs) -> None:
            name = args.thread.name if args.thread is not None else "?"
            log.warning(
                "file watch thread %s died (%s: %s); restarting the watches",
                name,
                args.exc_type.__name__,
                args.exc_value,
            )
            if not loop.is_closed():
                loop.call_soon_threadsafe(self._restart_watches)

        threading.excepthook = hook
        self._restore_excepthook = previous

    def _restart_watches(self) -> None:
        if self._stop.is_set():
            return

        async def restart() -> None:
            await asyncio.to_thread(self.watchers.stop)
            self._start_watches()
            await self._on_rescan()  # whatever happened while nobody watched

        self._tasks.append(asyncio.create_task(restart()))

    def _start_scheduler(self) -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]

        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._scheduler.add_job(
            self._on_schedule,
            _trigger(self.settings),
            id="reconcile",
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
            next_run_time=datetime.now(UTC),  # a pass at start
        )
        self._scheduler.add_job(
            self._on_rescan,
            "interval",
            seconds=self.settings.rescan_interval,
            id="rescan",
            coalesce=True,
            max_instances=1,
        )
        self._scheduler.start()

    async def _shutdown(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        tasks = [t for t in [self._runner, *self._tasks] if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            # Cancelling a pass closes (and fsyncs) every .part, so the next start resumes.
            _, late = await asyncio.wait(tasks, timeout=STOP_BUDGET_S)
            if late:
                log.warning("%d tasks did not stop in time", len(late))
        if getattr(self, "watchers", None) is not None:
            # Not through the default thread pool: stuck metadata calls may fill it.
            self.watchers.stop(join=False)
        if getattr(self, "_restore_excepthook", None) is not None:
            threading.excepthook = self._restore_excepthook
        if self._api is not None:
            await self._api.cleanup()
        if self._started:  # never write a registry this process did not load
            with contextlib.suppress(OSError):
                self.registry.save()
        if getattr(self, "audit", None) is not None:
            self.audit.close()
        self.lock.release()

    async def _take_lock(self) -> bool:
        """The storage lock. Another daemon: refuse. A one-off `mmd sync`: wait for it.

        systemd gets STATUS= saying why, and EXTEND_TIMEOUT_USEC= so a long sync does not
        count as a failed start. False when stopped while waiting.
        """
        told = False
        while True:
            try:
                self.lock.acquire()
                return True
            except StorageLockedError:
                if self.lock.daemon_url() is not None:
                    raise StorageLockedError(
                        f"storage {self.storage.root} is already managed by mmd pid "
                        f"{self.lock.holder()}",
                        hint="one daemon per storage; stop it first, or use another --storage-dir",
                    ) from None
            text = f"waiting for mmd pid {self.lock.holder()} to release {self.storage.root}"
            if not told:
                log.info("%s", text)
                told = True
            self.notifier.status(text)
            self.notifier.extend_timeout(30.0)
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=1.0)
                return False
            except TimeoutError:
                continue

    def _on_sighup(self) -> None:
        if not getattr(self, "_started", False):
            log.info("SIGHUP before start-up finished: the config is read as it starts")
            return
        self._tasks.append(asyncio.create_task(self.reload()))

    async def reload(self) -> None:
        """SIGHUP: read config and manifest again; what needs a restart says so."""
        async with self._reloading:
            await self._reload()

    async def _reload(self) -> None:
        self.notifier.reloading()
        log.info("reloading config and manifest (SIGHUP)")
        try:
            new = await asyncio.to_thread(self.reload_settings)
            check_bind(dataclasses.replace(new, api_host=self.settings.api_host))
        except MmdError as exc:
            log.error("config not reloaded, keeping the running one: %s", exc)
        else:
            moved = [k for k in _FIXED if getattr(new, k) != getattr(self.settings, k)]
            if moved:
                log.warning("%s changed: takes effect after a restart", ", ".join(moved))
                new = dataclasses.replace(new, **{k: getattr(self.settings, k) for k in moved})
            old, self.settings = self.settings, new
            changed = [
                f.name
                for f in dataclasses.fields(new)
                if f.name != "config_file" and getattr(new, f.name) != getattr(old, f.name)
            ]
            log.info("config reloaded: %s", ", ".join(changed) + " changed" if changed else "same")
            self.backoff.initial, self.backoff.maximum = new.retry_initial, new.retry_max
            if new.schedule != old.schedule and self._scheduler is not None:
                self._scheduler.reschedule_job("reconcile", trigger=_trigger(new))
                log.info("schedule now %s", new.schedule.describe())
            if new.rescan_interval != old.rescan_interval and self._scheduler is not None:
                self._scheduler.reschedule_job(
                    "rescan", trigger="interval", seconds=new.rescan_interval
                )
            if new.manifest != old.manifest:
                self.watchers.watch_manifest(new.manifest, self._manifest_edit.poke)
        self.request_pass("reload", force=True)
        self.notifier.ready(self.status_line())

    # -- event handlers (on the loop) ------------------------------------------

    async def _on_schedule(self) -> None:
        self.request_pass("schedule")

    async def _on_rescan(self) -> None:
        try:
            await self.monitor.rescan()
        except Exception:  # the next rescan tries again
            log.exception("storage rescan failed")

    def _on_manifest_edit(self) -> None:
        log.info("manifest %s changed", self.settings.manifest)
        self._tasks.append(asyncio.create_task(self._manifest_changed()))

    async def _manifest_changed(self) -> None:
        """Check the edit now (errors show at once, not after a running pass), stop
        downloads the edit made pointless, and ask for a pass."""
        old = self.manifest
        new = await asyncio.to_thread(self._read_manifest)
        if new is not None and new is not old:
            self.manifest = new
            if self._syncer is not None and old is not None:
                for model_id in self._syncer.running_ids():
                    before, after = old.models.get(model_id), new.models.get(model_id)
                    if before is None or not _obsolete(before, after):
                        continue
                    if self._syncer.cancel(model_id):
                        log.info("%s: download stopped: the manifest changed it", model_id)
        self.request_pass("manifest changed", force=True)

    def _on_storage_event(self, rel: str) -> None:
        self.monitor.hint(rel)
        self._disk_check.poke()

    def _spawn_disk_check(self) -> None:
        self._tasks.append(asyncio.create_task(self._check_disk()))

    async def _check_disk(self) -> None:
        try:
            await self.monitor.check()
        except Exception:  # the next event or the rescan tries again
            log.exception("storage check failed")
        if self.monitor.pending_outside(self.monitor.busy):
            # A custom/ folder still being copied in: look again once it settles.
            await asyncio.sleep(1.0)
            self._disk_check.poke()
        self._tasks[:] = [t for t in self._tasks if not t.done()]

    def _on_damage(self, model_id: str) -> None:
        self.request_pass(f"repair {model_id}", ids=[model_id])

    # -- passes ---------------------------------------------------------------

    async def _run_passes(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            request, self._pending = self._pending, None
            if request is not None:
                await self._pass(request)

    def _read_manifest(self) -> Manifest | None:
        """The manifest now, or the last good one when it is missing or invalid."""
        path = self.settings.manifest
        try:
            if not path.is_file():
                raise ConfigError(f"manifest {path} does not exist")
            manifest = load_manifest(path, self.plugins.sources)
        except ManifestError as exc:
            problem = "; ".join(exc.problems)
        except MmdError as exc:
            problem = str(exc)
        except OSError as exc:
            problem = f"manifest {path}: {exc.strerror or exc}"
        else:
            if self.manifest_error:
                log.info("manifest %s is valid again", path)
            self.manifest_error = None
            return manifest
        if problem != self.manifest_error:
            kept = "keeping the last good one" if self.manifest else "no models to manage yet"
            for line in problem.split("; "):
                log.error("%s", line)
            log.error("manifest not applied: %s", kept)
        self.manifest_error = problem
        return self.manifest

    async def _pass(self, request: PassRequest) -> None:
        self.passes_started += 1
        report = PassReport(self.passes_started, request.reason, utc_now())
        self.current = report
        started = time.monotonic()
        try:
            self.manifest = await asyncio.to_thread(self._read_manifest)
            wanted = await asyncio.to_thread(self._merged)
            if wanted is None:
                report.error = self.manifest_error
                return
            only = None
            if request.ids is not None:
                only = [i for i in request.ids if i in wanted.models]
            deferred = {} if request.force else self.backoff.deferred()
            ctx = SourceContext(settings=self.settings, env=dict(os.environ))
            actions = await plan(
                wanted,
                self.registry,
                self.storage,
                self.plugins,
                ctx,
                only=only,
                prune=self.settings.prune,
                deferred=deferred,
            )
            changing = {a.model_id for a in actions if a.kind is not ActionKind.NOTHING}
            self.monitor.busy = changing
            try:
                self._syncer = Syncer(
                    self.settings, self.plugins, self.registry, self.storage, self.events
                )
                report.outcomes = await self._syncer.apply(actions)
            finally:
                self._syncer = None
                self.monitor.busy = set()
                await self.monitor.baseline(sorted(changing))
                self._disk_check.poke()
            await self._forget_removed(report.outcomes)
            for o in report.outcomes:
                if o.model_id in deferred and o.action is ActionKind.NOTHING:
                    continue
                if o.ok:
                    self.backoff.succeeded(o.model_id)
                else:
                    wait = self.backoff.failed(o.model_id)
                    log.info("%s: next scheduled retry in %.0fs", o.model_id, wait)
        except asyncio.CancelledError:
            report.error = "interrupted: the daemon is stopping"
            raise
        except Exception as exc:  # a pass must never take the daemon down
            log.exception("pass %d failed", report.number)
            report.error = f"{type(exc).__name__}: {exc}"
        finally:
            report.finished_at = utc_now()
            report.duration_s = round(time.monotonic() - started, 3)
            self.metrics.pass_seconds.observe(report.duration_s)
            self.current, self.last = None, report
            self.recent.append(report)
            self.passes_completed = report.number
            self._log_pass(report)

    def _merged(self) -> Manifest | None:
        """The manifest with API requests under it: an id the manifest declares is its own."""
        requested = self.requested.manifest(self.plugins.sources)
        if self.manifest is None and not requested.models:
            return None
        base = self.manifest or Manifest(path=str(self.settings.manifest))
        return Manifest(path=base.path, models={**requested.models, **base.models})

    async def _forget_removed(self, outcomes: list[Outcome]) -> None:
        """Drop `state: absent` requests once the pass has removed their model."""
        done = [
            o.model_id
            for o in outcomes
            if o.ok
            and o.model_id in self.requested.specs
            and self.requested.specs[o.model_id].get("state") == "absent"
            and o.action in (ActionKind.REMOVE, ActionKind.NOTHING)
        ]
        if done:
            for model_id in done:
                del self.requested.specs[model_id]
            await asyncio.to_thread(self.requested.save)

    # -- API requests -----------------------------------------------------------

    def requested_has(self, model_id: str) -> bool:
        return model_id in self.requested.specs

    async def add_request(self, model_id: str, spec: dict[str, Any]) -> None:
        self.requested.specs[model_id] = spec
        await asyncio.to_thread(self.requested.save)

    async def remove_request(self, model_id: str) -> None:
        """Mark a request absent (the next pass removes the files) and stop its download."""
        self.requested.specs[model_id] = {**self.requested.specs[model_id], "state": "absent"}
        await asyncio.to_thread(self.requested.save)
        if self._syncer is not None and self._syncer.cancel(model_id):
            log.info("%s: download cancelled (DELETE through the API)", model_id)

    def cached_listing(self, key: tuple[str | None, str | None, str | None]) -> bytes:
        """`GET /models` bodies, serialised once per registry change and filter."""
        cached = self._listing.get(key)
        if cached is not None and cached[0] == self.registry.generation:
            return cached[1]
        entries = self.registry.query(*key)
        listed = b", ".join(self.registry.encoded(e) for e in entries)
        body = b'{"models": [' + listed + b'], "count": ' + str(len(entries)).encode() + b"}"
        if len(self._listing) > 64:
            self._listing.clear()
        self._listing[key] = (self.registry.generation, body)
        return body

    def model_status(self, entry: ModelEntry) -> dict[str, Any]:
        progress = self.live.progress.get(entry.model_id)
        return {
            "model_id": entry.model_id,
            "status": str(entry.status),
            "error": entry.error,
            "version": entry.version,
            "progress": progress.to_json() if progress is not None else None,
        }

    def _log_pass(self, report: PassReport) -> None:
        counts: dict[str, int] = {}
        for o in report.outcomes:
            key = "failed" if not o.ok else str(o.action)
            counts[key] = counts.get(key, 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no models"
        level = logging.INFO
        if report.error or counts.get("failed"):
            level = logging.WARNING
        elif not any(k != "nothing" for k in counts):
            level = logging.DEBUG  # a quiet no-op pass every 15 minutes is not news
        log.log(
            level,
            "pass %d (%s) done in %.2fs: %s%s",
            report.number,
            report.reason,
            report.duration_s or 0.0,
            summary,
            f"; {report.error}" if report.error else "",
        )

    # -- status ---------------------------------------------------------------

    def status_line(self) -> str:
        text = self.live.summary()
        if self.manifest_error:
            text += f"; manifest invalid: {self.manifest_error.split('; ')[0]}"
        return text

    async def _tick(self) -> None:
        """STATUS= when it changes (at most once a second) and WATCHDOG=1 from this loop.

        The watchdog ping comes from the loop, not a thread: a frozen loop misses it and
        systemd restarts the service.
        """
        interval = self.notifier.watchdog_interval()
        next_ping = time.monotonic()
        while True:
            now = time.monotonic()
            if interval is not None and now >= next_ping:
                self.notifier.watchdog()
                next_ping = now + interval
            line = self.status_line()
            if line != self._status_sent:
                self.notifier.status(line)
                self._status_sent = line
            await asyncio.sleep(min(1.0, interval or 1.0))

    def health(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for entry in self.registry.models.values():
            counts[str(entry.status)] = counts.get(str(entry.status), 0) + 1
        running = self._runner is not None and not self._runner.done()
        watchers = getattr(self, "watchers", None)
        return {
            # "error" (served as 503) when passes can no longer run: restart the daemon.
            "status": "ok" if running else "error",
            "watches": watchers.alive() if watchers is not None else {},
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started, 1),
            "storage_dir": str(self.storage.root),
            "manifest": {"path": str(self.settings.manifest), "error": self.manifest_error},
            "models": counts,
            "summary": self.status_line(),
            "passes": {
                "started": self.passes_started,
                "completed": self.passes_completed,
                "running": self.current.to_json() if self.current else None,
                "last": self.last.to_json() if self.last else None,
                "recent": [r.to_json() for r in self.recent],
            },
        }


def _obsolete(before: ModelSpec, after: ModelSpec | None) -> bool:
    """A download for `before` is no use once the manifest says `after`."""
    return (
        after is None
        or after.state is State.ABSENT
        or after.source != before.source
        or spec_digest(after) != spec_digest(before)
        or after.options.get("revision") != before.options.get("revision")
    )


def _ignored(rel: str) -> bool:
    return rel.split("/")[0] in RESERVED_TOP


def _trigger(settings: Settings) -> Any:
    from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]
    from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]

    schedule = settings.schedule
    if schedule.cron:
        return CronTrigger.from_crontab(schedule.cron)  # the node's local time, as cron does
    assert schedule.interval_s is not None
    return IntervalTrigger(seconds=schedule.interval_s)


def check_bind(settings: Settings) -> None:
    """Refuse to serve the API beyond this machine without a token."""
    host = settings.api_host
    if not is_loopback(host) and settings.api_token is None:
        raise ConfigError(
            f"api.host {host} is not a loopback address and no API token is set",
            hint="set MMD_API_TOKEN or api.token_file, or listen on 127.0.0.1",
        )


def run_daemon(daemon: Daemon) -> int:
    """Run the loop; never wait on a stuck worker thread past the stop budget.

    A metadata call to a hub cannot be interrupted from Python; it holds no file open for
    writing, so it is left behind rather than delaying the stop systemd is waiting for.
    """
    loop = asyncio.new_event_loop()
    try:
        code = loop.run_until_complete(daemon.run())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        executor = getattr(loop, "_default_executor", None)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        loop.close()
    deadline = time.monotonic() + 1.0
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    for thread in others:
        if not thread.daemon:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() and not t.daemon for t in others):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
