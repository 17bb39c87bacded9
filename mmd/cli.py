"""`mmd` command line (SPEC §5). Thin: parses, calls the core, prints.

Exit codes: 0 ok, 1 a model or check failed, 2 usage or config error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmd import __version__
from mmd.client import DaemonClient
from mmd.config import Settings, load_settings
from mmd.errors import ConfigError, ManifestError, MmdError, StorageLockedError
from mmd.hookspecs import SourceContext
from mmd.lock import StorageLock
from mmd.logs import setup_logging
from mmd.manifest import Manifest, load_manifest
from mmd.plan import Action, ActionKind, plan
from mmd.plugins import Plugins, load_plugins
from mmd.progress import ProgressBars
from mmd.registry import Registry
from mmd.storage import Storage, hash_file
from mmd.sync import Outcome, Syncer
from mmd.types import ModelEntry, ModelStatus

log = logging.getLogger("mmd")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="F", help="config file (default: see README)")
    common.add_argument("--manifest", metavar="F", help="manifest file (models.yaml)")
    common.add_argument("--storage-dir", metavar="D", help="model storage folder")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser = argparse.ArgumentParser(
        prog="mmd", description="Keep a node's models in the state a manifest asks for."
    )
    parser.add_argument("--version", action="version", version=f"mmd {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)

    verbs.add_parser(
        "run", parents=[common], help="the daemon: schedule, watchers, API; until SIGTERM"
    )
    sync = verbs.add_parser("sync", parents=[common], help="one reconcile pass now")
    sync.add_argument("ids", nargs="*", metavar="ID", help="only these models")
    sync.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    sync.add_argument("--json", action="store_true", help="machine-readable result")
    sync.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for another mmd to release the storage",
    )
    p = verbs.add_parser("plan", parents=[common], help="what sync would do")
    p.add_argument("ids", nargs="*", metavar="ID", help="only these models")
    p.add_argument("--json", action="store_true")
    ls = verbs.add_parser("list", parents=[common], help="models in the registry")
    ls.add_argument("--status", choices=[s.value for s in ModelStatus])
    ls.add_argument("--type", dest="model_type", metavar="T")
    ls.add_argument("--source", metavar="S")
    ls.add_argument("--json", action="store_true")
    show = verbs.add_parser("show", parents=[common], help="one model's registry entry")
    show.add_argument("id", metavar="ID")
    show.add_argument("--json", action="store_true")
    verify = verbs.add_parser("verify", parents=[common], help="re-hash files on disk")
    verify.add_argument("ids", nargs="*", metavar="ID")
    verify.add_argument("--json", action="store_true")
    verify.add_argument("--wait", type=float, default=0.0, metavar="SECONDS")
    validate = verbs.add_parser("validate", parents=[common], help="check a manifest")
    validate.add_argument("path", nargs="?", metavar="MANIFEST")
    plugins = verbs.add_parser("plugins", parents=[common], help="installed source plugins")
    plugins.add_argument("--json", action="store_true")
    return parser


class Cli:
    def __init__(self, args: argparse.Namespace, extra_plugins: Sequence[object]) -> None:
        self.args = args
        self.settings: Settings = self.load_settings()
        self.plugins: Plugins = load_plugins(extra_plugins)
        self.storage = Storage(self.settings.storage_dir)

    def load_settings(self) -> Settings:
        flags = {"storage_dir": self.args.storage_dir, "manifest": self.args.manifest}
        return load_settings(self.args.config, flags)

    def out(self, text: str = "") -> None:
        print(text, flush=True)

    def manifest(self, path: Path | None = None) -> Manifest:
        path = path or self.settings.manifest
        if not path.is_file():
            raise ConfigError(
                f"manifest {path} does not exist", hint="pass --manifest F or set MMD_MANIFEST"
            )
        return load_manifest(path, self.plugins.sources)

    def registry(self, manifest: Manifest | None, persist: bool) -> Registry:
        known = [(s.source, s.model_id) for s in manifest.models.values()] if manifest else []
        return Registry.load(self.settings.registry_file, self.storage, known, persist=persist)

    def ctx(self) -> SourceContext:
        return SourceContext(settings=self.settings, env=dict(os.environ))

    def check_ids(self, manifest: Manifest, ids: list[str]) -> list[str] | None:
        unknown = [i for i in ids if i not in manifest.models]
        if unknown:
            raise ConfigError(f"not in the manifest: {', '.join(unknown)}")
        return ids or None

    # -- verbs ----------------------------------------------------------------

    def cmd_validate(self) -> int:
        path = Path(self.args.path) if self.args.path else self.settings.manifest
        try:
            manifest = self.manifest(path)
        except ManifestError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            return 1
        self.out(f"{path}: ok, {len(manifest.models)} models")
        return 0

    def cmd_plan(self) -> int:
        manifest = self.manifest()
        only = self.check_ids(manifest, self.args.ids)
        registry = self.registry(manifest, persist=False)
        actions = asyncio.run(self._plan(manifest, registry, only))
        if self.args.json:
            self.out(json.dumps([a.to_json() for a in actions], indent=1))
        else:
            for a in actions:
                self.out(f"{a.kind.value:8} {a.model_id}{_files_note(a)}: {a.reason}")
        return 1 if any(a.kind is ActionKind.ERROR for a in actions) else 0

    def cmd_sync(self) -> int:
        manifest = self.manifest()
        only = self.check_ids(manifest, self.args.ids)
        if self.args.dry_run:
            return self.cmd_plan()
        probe = StorageLock(self.settings.storage_dir)
        if probe.probe() and (url := probe.daemon_url()):
            # The daemon is the only writer: ask it for the pass instead.
            client = DaemonClient(url, self.settings)
            return client.sync(only, probe.holder(), self, self.settings.manifest)
        self.storage.prepare()
        try:
            probe.acquire()
        except StorageLockedError:
            if url := probe.daemon_url():
                client = DaemonClient(url, self.settings)
                return client.sync(only, probe.holder(), self, self.settings.manifest)
            probe = StorageLock(self.settings.storage_dir, wait=self.args.wait)
            probe.acquire()
        try:
            registry = self.registry(manifest, persist=True)
            outcomes = asyncio.run(self._sync(manifest, registry, only))
        finally:
            probe.release()
        return self.report(outcomes)

    def report(self, outcomes: Sequence[Outcome], total: int | None = None) -> int:
        """Print a pass's outcomes; `total` counts models whose outcome is not listed."""
        failed = [o for o in outcomes if not o.ok]
        if self.args.json:
            self.out(json.dumps([o.__dict__ | {"action": str(o.action)} for o in outcomes]))
        else:
            for o in outcomes:
                if o.action is ActionKind.NOTHING:
                    continue
                mark = "ok    " if o.ok else "FAILED"
                self.out(f"{mark} {o.model_id}: {o.message}")
            changed = sum(1 for o in outcomes if o.ok and o.action is not ActionKind.NOTHING)
            count = len(outcomes) if total is None else total
            models = f"{count} model{'s' if count != 1 else ''}"
            self.out(f"{models}: {changed} changed, {len(failed)} failed")
        return 1 if failed else 0

    async def _plan(
        self, manifest: Manifest, registry: Registry, only: list[str] | None
    ) -> list[Action]:
        return await plan(
            manifest,
            registry,
            self.storage,
            self.plugins,
            self.ctx(),
            only=only,
            prune=self.settings.prune,
        )

    async def _sync(
        self, manifest: Manifest, registry: Registry, only: list[str] | None
    ) -> list[Outcome]:
        actions = await self._plan(manifest, registry, only)
        with ProgressBars(enabled=not self.args.json) as bars:
            syncer = Syncer(self.settings, self.plugins, registry, self.storage, bars)
            return await syncer.apply(actions)

    def cmd_run(self) -> int:
        from mmd.daemon import Daemon, run_daemon

        return run_daemon(Daemon(self.settings, self.plugins, reload_settings=self.load_settings))

    def cmd_list(self) -> int:
        registry = self.registry(None, persist=False)
        entries = registry.query(self.args.status, self.args.model_type, self.args.source)
        if self.args.json:
            self.out(json.dumps([e.to_json() for e in entries], indent=1))
            return 0
        if not entries:
            self.out("no models")
            return 0
        rows = [("ID", "SOURCE", "TYPE", "STATUS", "SIZE", "VERSION")]
        rows += [
            (
                e.model_id,
                e.source,
                e.model_type,
                e.status.value,
                _human(e.size_bytes),
                (e.version or "-")[:24],
            )
            for e in entries
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            self.out("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        return 0

    def cmd_show(self) -> int:
        entry = self.registry(None, persist=False).get(self.args.id)
        if entry is None:
            print(f"mmd: no model {self.args.id!r} in the registry", file=sys.stderr)
            return 1
        if self.args.json:
            self.out(json.dumps(entry.to_json(), indent=1))
            return 0
        for key, value in entry.to_json().items():
            if key == "files":
                self.out(f"files: {len(value)}")
                for f in value:
                    self.out(f"  {f['path']}  {f['size']}  {f['sha256'] or '-'}")
            else:
                self.out(f"{key}: {json.dumps(value) if isinstance(value, dict) else value}")
        return 0

    def cmd_verify(self) -> int:
        with StorageLock(self.settings.storage_dir, wait=self.args.wait):
            registry = self.registry(None, persist=True)
            ids = self.args.ids or [
                e.model_id for e in registry.query(status=ModelStatus.AVAILABLE)
            ]
            unknown = [i for i in ids if registry.get(i) is None]
            if unknown:
                raise ConfigError(f"not in the registry: {', '.join(unknown)}")
            results = {}
            for model_id in ids:
                entry = registry.get(model_id)
                assert entry is not None
                problem = _verify_entry(entry)
                results[model_id] = problem
                if problem:
                    entry.status, entry.error = ModelStatus.ERROR, problem
                    registry.save()
        if self.args.json:
            self.out(json.dumps({k: {"ok": v is None, "error": v} for k, v in results.items()}))
        else:
            for model_id, problem in results.items():
                self.out(
                    f"{'ok    ' if problem is None else 'FAILED'} {model_id}"
                    + (f": {problem}" if problem else "")
                )
        return 1 if any(results.values()) else 0

    def cmd_plugins(self) -> int:
        infos = self.plugins.infos
        if self.args.json:
            self.out(
                json.dumps(
                    {"plugins": [i.__dict__ for i in infos], "broken": self.plugins.broken},
                    indent=1,
                )
            )
            return 0
        for info in infos:
            version = f"{info.distribution or '?'} {info.version or ''}".strip()
            self.out(f"{info.name}: sources {', '.join(info.sources) or '-'} ({version})")
        for problem in self.plugins.broken:
            self.out(f"broken: {problem}")
        return 0


def _verify_entry(entry: ModelEntry) -> str | None:
    folder = Path(entry.path)
    for f in entry.files:
        path = folder / f.path
        if not path.is_file():
            return f"{f.path} is missing"
        size = path.stat().st_size
        if size != f.size:
            return f"{f.path}: size {size}, expected {f.size}"
        if f.sha256:
            actual = hash_file(path)
            if actual != f.sha256:
                return f"{f.path}: sha256 mismatch: expected {f.sha256}, got {actual}"
    return None


def _files_note(action: Action) -> str:
    if action.release is None or action.kind not in (ActionKind.FETCH, ActionKind.UPDATE):
        return ""
    count = len(action.release.files)
    size = f", {_human(action.total_bytes)}" if action.total_bytes is not None else ""
    return f" ({count} file{'s' if count != 1 else ''}{size})"


def _human(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def main(argv: Sequence[str] | None = None, *, plugins: Sequence[object] = ()) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    setup_logging(args.verbose, daemon=args.verb == "run")
    try:
        cli = Cli(args, plugins)
        handler: Any = getattr(cli, f"cmd_{args.verb}")
        return int(handler())
    except ManifestError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    except MmdError as exc:
        print(f"mmd: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        # Storage or registry not writable, a path that is a file: one line, no traceback.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"mmd: {where}{exc.strerror or exc}", file=sys.stderr)
        log.debug("traceback", exc_info=True)
        return 1
    except KeyboardInterrupt:
        print("mmd: interrupted; partial downloads are kept and resume next time", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())
