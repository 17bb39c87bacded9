"""Apply a plan: stage, download, verify, switch in, and keep the registry true.

One failing model never stops the others. File transfers across all models are bounded
by `max_concurrent_downloads`. During an update the old version stays `available` (it
is still on disk and whole) until the new one is switched in.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmd.config import Settings
from mmd.errors import ChecksumError, DownloadError, MmdError, SourceError, UnsafePathError
from mmd.hookspecs import Source, SourceContext
from mmd.partfile import PartFile
from mmd.plan import Action, ActionKind
from mmd.plugins import Plugins
from mmd.registry import Registry, utc_now
from mmd.stage import (
    SourceSink,
    adopt_partial,
    finished_in,
    keep_only,
    load_done,
    mark_done,
    reusable_files,
    reuse_verified,
)
from mmd.storage import Storage, ensure_dirs
from mmd.types import (
    FileEntry,
    ModelEntry,
    ModelStatus,
    ModelType,
    RemoteFile,
    spec_digest,
)

if TYPE_CHECKING:
    # aiohttp costs ~0.1 s to import: a pass with nothing to download never loads it.
    import aiohttp

    from mmd.transfer import TransferOptions

log = logging.getLogger(__name__)


class SyncEvents:
    """Observer of a pass; the CLI draws progress bars from it, the daemon feeds its API.

    Methods are called on the event loop thread.
    """

    def status(self, entry: ModelEntry) -> None: ...

    def file_started(self, model_id: str, path: str, total: int | None, done: int) -> None: ...

    def file_progress(
        self, model_id: str, path: str, done: int, total: int | None, rate: float
    ) -> None: ...

    def file_finished(self, model_id: str, path: str) -> None: ...

    def verify_failed(self, model_id: str, path: str, reason: str) -> None: ...

    def retried(self, model_id: str, path: str) -> None: ...


@dataclass
class Outcome:
    model_id: str
    action: ActionKind
    ok: bool
    message: str


class Syncer:
    def __init__(
        self,
        settings: Settings,
        plugins: Plugins,
        registry: Registry,
        storage: Storage,
        events: SyncEvents | None = None,
        transfer: TransferOptions | None = None,
    ) -> None:
        self.settings = settings
        self.plugins = plugins
        self.registry = registry
        self.storage = storage
        self.events = events or SyncEvents()
        self._transfer = transfer
        self.ctx = SourceContext(settings=settings, env=dict(os.environ))
        self.slots = asyncio.Semaphore(settings.max_concurrent_downloads)
        self._session: aiohttp.ClientSession | None = None
        self._running: dict[str, asyncio.Task[Outcome]] = {}
        self._cancelled: set[str] = set()
        self._switched_in: set[str] = set()

    def running_ids(self) -> list[str]:
        """Models whose work in this pass is still going on."""
        return [i for i, t in self._running.items() if not t.done() and i not in self._switched_in]

    def cancel(self, model_id: str) -> bool:
        """Stop one model's work in this pass (its .part files are kept); False if idle."""
        task = self._running.get(model_id)
        if task is None or task.done() or model_id in self._switched_in:
            # Already switched in: only cleanup is left, and a later pass removes it whole.
            return False
        self._cancelled.add(model_id)
        task.cancel()
        return True

    @property
    def transfer(self) -> TransferOptions:
        if self._transfer is None:
            from mmd.transfer import TransferOptions

            self._transfer = TransferOptions(idle_timeout=self.settings.download_timeout)
        return self._transfer

    async def apply(self, actions: list[Action]) -> list[Outcome]:
        self.storage.prepare()
        for action in actions:
            if action.kind is ActionKind.FETCH:
                self._set(action, ModelStatus.PENDING, error=None)
        if any(a.kind in (ActionKind.FETCH, ActionKind.UPDATE) for a in actions):
            from mmd.transfer import new_session

            limit = self.settings.max_concurrent_downloads * 2
            async with new_session(self.transfer, limit=limit) as session:
                self._session = session
                try:
                    outcomes = await self._gather(actions)
                finally:
                    self._session = None
        else:
            outcomes = await self._gather(actions)
        await asyncio.to_thread(self.storage.empty_trash)
        return outcomes

    async def _gather(self, actions: list[Action]) -> list[Outcome]:
        tasks = [asyncio.ensure_future(self._one(a)) for a in actions]
        self._running = {a.model_id: t for a, t in zip(actions, tasks, strict=True)}
        try:
            # return_exceptions: one model cancelled through cancel() is an outcome, not
            # the end of the pass. Cancelling the pass itself still cancels every task.
            results = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._running = {}
        outcomes: list[Outcome] = []
        for action, result in zip(actions, results, strict=True):
            if isinstance(result, Outcome):
                outcomes.append(result)
            elif isinstance(result, asyncio.CancelledError):
                outcomes.append(Outcome(action.model_id, action.kind, False, "cancelled"))
            else:
                raise result
        return outcomes

    async def _one(self, action: Action) -> Outcome:
        try:
            if action.model_id in self._cancelled:
                raise asyncio.CancelledError
            if action.kind in (ActionKind.FETCH, ActionKind.UPDATE):
                message = await self._install(action)
            elif action.kind is ActionKind.REMOVE:
                message = await self._remove(action)
            elif action.kind is ActionKind.ERROR:
                self._fail(action, action.reason)
                return Outcome(action.model_id, action.kind, False, action.reason)
            else:
                self._refresh(action)
                return Outcome(action.model_id, action.kind, True, action.reason)
        except asyncio.CancelledError:
            # Interrupted (Ctrl-C, SIGTERM): nothing is downloading any more.
            entry = self.registry.get(action.model_id)
            if entry is not None and entry.status is ModelStatus.DOWNLOADING:
                self._set(action, ModelStatus.PENDING, error=None)
            raise
        except MmdError as exc:
            self._fail(action, str(exc))
            return Outcome(action.model_id, action.kind, False, str(exc))
        except Exception as exc:  # keep the other models going, say what broke
            log.error("%s: unexpected failure: %r", action.model_id, exc)
            log.debug("traceback", exc_info=True)
            message = f"unexpected {type(exc).__name__}: {exc}"
            self._fail(action, message)
            return Outcome(action.model_id, action.kind, False, message)
        return Outcome(action.model_id, action.kind, True, message)

    # -- registry bookkeeping -------------------------------------------------

    def _entry_for(self, action: Action) -> ModelEntry:
        entry = self.registry.get(action.model_id)
        # An available entry of another source stays until its replacement is switched in.
        if entry is not None and (
            entry.source == action.source or entry.status is ModelStatus.AVAILABLE
        ):
            return entry
        spec = action.spec
        return ModelEntry(
            model_id=action.model_id,
            source=action.source,
            model_type=str(spec.model_type or ModelType.OTHER) if spec else "other",
            path=str(self.storage.model_dir(action.source, action.model_id)),
            status=ModelStatus.PENDING,
            metadata=dict(spec.metadata) if spec else {},
        )

    def _set(self, action: Action, status: ModelStatus, error: str | None) -> ModelEntry:
        entry = self._entry_for(action)
        entry.status, entry.error = status, error
        self.registry.put(entry)
        self.registry.save()
        self.events.status(entry)
        return entry

    def _refresh(self, action: Action) -> None:
        """Nothing to download: still apply a cleared error, a new `type` or `metadata`."""
        entry = self.registry.get(action.model_id)
        spec = action.spec
        if entry is None or spec is None or entry.status is not ModelStatus.AVAILABLE:
            return
        if entry.source != spec.source:
            return
        changed = False
        if action.release is not None and entry.error:
            entry.error, changed = None, True
        if spec.model_type is not None and entry.model_type != spec.model_type:
            entry.model_type, changed = str(spec.model_type), True
        if any(entry.metadata.get(k) != v for k, v in spec.metadata.items()):
            entry.metadata, changed = {**entry.metadata, **spec.metadata}, True
        if changed:
            self.registry.put(entry)
            self.registry.save()
            self.events.status(entry)

    def _fail(self, action: Action, message: str) -> None:
        one_line = " ".join(message.split())
        log.error("%s: %s", action.model_id, one_line)
        current = self.registry.get(action.model_id)
        if (
            action.kind in (ActionKind.UPDATE, ActionKind.ERROR)
            and current is not None
            and current.status is ModelStatus.AVAILABLE
        ):
            # The old version is still whole on disk: keep serving it, record why not newer.
            what = "update failed" if action.kind is ActionKind.UPDATE else "check failed"
            self._set(action, ModelStatus.AVAILABLE, error=f"{what}: {one_line}")
        else:
            self._set(action, ModelStatus.ERROR, error=one_line)

    # -- install --------------------------------------------------------------

    async def _install(self, action: Action) -> str:
        assert action.spec is not None and action.release is not None
        spec, release = action.spec, action.release
        source = self.plugins.source(spec.source)
        previous = self.registry.get(spec.model_id)
        if action.kind is ActionKind.FETCH:
            self._set(action, ModelStatus.DOWNLOADING, error=None)
        stage = await asyncio.to_thread(
            self.storage.new_stage, spec.source, spec.model_id, release.version
        )
        files_dir = stage / "files"
        await asyncio.to_thread(ensure_dirs, stage, "files")
        done = load_done(stage)
        siblings = await asyncio.to_thread(self.storage.sibling_stages, stage)
        reusable = await asyncio.to_thread(finished_in, siblings)
        if previous:
            reusable.update(reusable_files(previous, self.storage))
        current = self.storage.model_dir(spec.source, spec.model_id)
        # Files in storage by path, for sources that give a validator instead of a sha256.
        kept = (
            {f.path: f for f in previous.files}
            if previous and previous.source == spec.source
            else {}
        )
        await asyncio.to_thread(self._check_space, release.files, done, reusable, files_dir)
        try:
            results = await asyncio.gather(
                *(
                    self._file(
                        action, source, f, files_dir, stage, done, reusable, current, kept, siblings
                    )
                    for f in release.files
                ),
                return_exceptions=True,
            )
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise _first_error(errors)
        except (SourceError, UnsafePathError) as exc:
            await asyncio.to_thread(self._drop_stage, stage)
            raise exc
        except DownloadError as exc:
            if not exc.retryable and not isinstance(exc, ChecksumError):
                await asyncio.to_thread(self._drop_stage, stage)
            raise
        files = [
            FileEntry(f.path, done[f.path]["size"], done[f.path]["sha256"], f.validator)
            for f in release.files
        ]
        await asyncio.to_thread(keep_only, files_dir, {f.path for f in release.files})
        target = await asyncio.to_thread(
            self.storage.promote, files_dir, spec.source, spec.model_id
        )
        entry = ModelEntry(
            model_id=spec.model_id,
            source=spec.source,
            model_type=_model_type(spec.model_type, release.model_type),
            path=str(target),
            status=ModelStatus.AVAILABLE,
            version=release.version,
            size_bytes=sum(f.size for f in files),
            download_date=utc_now(),
            files=files,
            error=None,
            metadata={**release.metadata, **spec.metadata},
            spec_digest=spec_digest(spec),
        )
        # Registry first, then the stage: a crash in between finds done.json and the
        # promoted files, and reuses them instead of downloading again.
        self.registry.put(entry)
        self.registry.save()
        self._switched_in.add(spec.model_id)
        self.events.status(entry)
        for old in [*siblings, stage]:
            await asyncio.to_thread(self._drop_stage, old)
        if previous is not None and previous.source != spec.source:
            await asyncio.to_thread(self.storage.remove_model, previous.source, spec.model_id)
        verb = "fetched" if action.kind is ActionKind.FETCH else "updated"
        count = f"{len(files)} file{'s' if len(files) != 1 else ''}"
        return f"{verb} {count}, {entry.size_bytes} bytes, version {release.version}"

    def _drop_stage(self, stage: Path) -> None:
        self.storage.discard(stage)
        self.storage.drop_empty_parents(stage.parent)

    def _check_space(
        self,
        files: tuple[RemoteFile, ...],
        done: dict[str, dict[str, Any]],
        reusable: dict[str, Path],
        files_dir: Path,
    ) -> None:
        needed = 0
        for f in files:
            if f.size is None or f.path in done or (f.sha256 and f.sha256 in reusable):
                continue
            part = files_dir / (f.path + ".part")
            have = part.stat().st_size if part.exists() else 0
            needed += max(0, f.size - have)
        if needed:
            self.storage.check_free_space(needed)

    async def _file(
        self,
        action: Action,
        source: Source,
        file: RemoteFile,
        files_dir: Path,
        stage: Path,
        done: dict[str, dict[str, Any]],
        reusable: dict[str, Path],
        current: Path,
        kept: Mapping[str, FileEntry],
        siblings: list[Path],
    ) -> None:
        final = files_dir / file.path
        if file.path in done and final.is_file():
            return
        parent = "/".join(file.path.split("/")[:-1])
        await asyncio.to_thread(ensure_dirs, files_dir, parent)
        known = file.sha256 or done.get(file.path, {}).get("sha256")
        stored = kept.get(file.path)
        if (
            not known
            and file.validator is not None
            and stored is not None
            and stored.validator == file.validator
            and stored.size == file.size
        ):
            known = stored.sha256  # unchanged at the source: check the copy we have
        if known or (file.git_sha1 and file.size is not None):
            candidates = [reusable.get(known) if known else None, current / file.path]
            digest = await asyncio.to_thread(
                reuse_verified,
                candidates,
                known,
                file,
                final,
                trust=not self.settings.verify_checksums,
            )
            if digest is not None:
                mark_done(stage, done, file.path, final.stat().st_size, digest)
                return
        if siblings and (file.sha256 is not None or source.fetch is None):
            # A sha256 or the transfer's If-Range catches bytes of another content.
            adopted = await asyncio.to_thread(adopt_partial, siblings, file.path, final, file.size)
            if adopted:
                log.info(
                    "%s: %s: keeping %d bytes from the previous version's download",
                    action.model_id,
                    file.path,
                    adopted,
                )
        async with self.slots:
            part = PartFile(final, file.path)
            blob_size = file.size if file.git_sha1 and not file.sha256 else None
            await asyncio.to_thread(part.open, blob_size)
            mid = action.model_id
            self.events.file_started(mid, file.path, file.size, part.offset)
            try:
                if source.fetch is not None:
                    try:
                        await self._fetch_with_source(action, source, file, part)
                    except ChecksumError as exc:  # a source's own digest check (S3 ETags)
                        self.events.verify_failed(mid, file.path, str(exc))
                        raise
                else:
                    from mmd.transfer import download

                    assert self._session is not None
                    await download(
                        self._session,
                        file,
                        part,
                        self.transfer,
                        lambda d, t, r: self.events.file_progress(mid, file.path, d, t, r),
                        on_retry=lambda: self.events.retried(mid, file.path),
                    )
                # Always checked: the hash is computed while writing, so it costs nothing.
                try:
                    digest = await asyncio.to_thread(
                        part.finish, file.sha256, file.size, file.git_sha1
                    )
                except ChecksumError as exc:
                    self.events.verify_failed(mid, file.path, str(exc))
                    raise
            finally:
                await asyncio.to_thread(part.close)
            mark_done(stage, done, file.path, part.offset, digest)
            self.events.file_finished(mid, file.path)

    async def _fetch_with_source(
        self, action: Action, source: Source, file: RemoteFile, part: PartFile
    ) -> None:
        assert action.spec is not None and source.fetch is not None
        sink = SourceSink(part, asyncio.get_running_loop(), self.events, action.model_id, file)
        task = asyncio.ensure_future(
            asyncio.to_thread(source.fetch, action.spec, file, sink, self.ctx)
        )
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            # The thread cannot be cancelled: make its next write fail, and wait for it
            # to return before the .part is closed under it.
            sink.stopped.set()
            await asyncio.gather(task, return_exceptions=True)
            raise
        except MmdError:
            raise
        except OSError as exc:
            raise DownloadError(f"{file.path}: {exc.strerror or exc}", retryable=False) from exc
        except Exception as exc:
            raise SourceError(f"source {source.name!r} failed fetching {file.path}: {exc}") from exc

    # -- remove ---------------------------------------------------------------

    async def _remove(self, action: Action) -> str:
        entry = self.registry.get(action.model_id)
        source = entry.source if entry else action.source
        await asyncio.to_thread(self.storage.remove_model, source, action.model_id)
        if entry is not None:
            entry.status, entry.files, entry.size_bytes, entry.error = (
                ModelStatus.DELETED,
                [],
                0,
                None,
            )
            self.registry.put(entry)
            self.registry.save()
            self.events.status(entry)
        return f"removed ({action.reason})"


def _first_error(errors: list[BaseException]) -> BaseException:
    # A checksum failure says more than the cancellations it may have caused.
    for exc in errors:
        if isinstance(exc, MmdError):
            return exc
    return errors[0]


def _model_type(declared: ModelType | None, suggested: str | None) -> str:
    """The manifest's type, else the source's suggestion when it is a known type."""
    if declared is not None:
        return str(declared)
    if suggested in {t.value for t in ModelType}:
        return str(suggested)
    return str(ModelType.OTHER)
