"""pytest fixtures for source plugin authors; `pip install mmd` brings them along.

mmd registers this module with pytest through the `pytest11` entry point, so a plugin's
own test suite gets, without any setup:

- `mmd_plugins(*plugins)`: mmd's loader with the built-in sources plus yours, after
  pluggy's `check_pending()` on each of yours and a check of every `Source` returned;
  anything wrong fails the test with one line per problem.
- `mmd_storage`: an isolated mmd installation (`$MMD_HOME`) in `tmp_path`, with every
  variable that could point mmd at a real setup removed from the environment.
- `mmd_sync(manifest, plugins=[...])`: write a manifest, run one `mmd sync` pass through
  the real command line, and get back the exit code, output, registry entries and bytes.

mmd itself never imports this module. It imports only pytest at import time (pytest loads
it in every session where mmd is installed); mmd's own modules are imported when a
fixture is used.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from mmd.hookspecs import Source, SourceContext
    from mmd.plugins import Plugins

__all__ = [
    "SCRUBBED_VARIABLES",
    "MmdStorage",
    "SyncResult",
    "load_checked_plugins",
    "mmd_plugins",
    "mmd_storage",
    "mmd_sync",
    "source_problems",
]

# Variables that would point mmd, huggingface_hub or a proxy at a developer's real setup.
# mmd's own tests keep tests/servers/isolation.py a subset of this list.
SCRUBBED_VARIABLES = (
    *("MMD_HOME", "MMD_CONFIG", "MMD_MANIFEST", "MMD_SCHEDULE", "MMD_PRUNE", "MMD_API_TOKEN"),
    *("MODEL_STORAGE_DIR", "MODEL_REGISTRY_FILE", "MODEL_API_HOST", "MODEL_API_PORT"),
    *("MAX_CONCURRENT_DOWNLOADS", "DOWNLOAD_TIMEOUT", "VERIFY_CHECKSUMS"),
    *("STATE_DIRECTORY", "CONFIGURATION_DIRECTORY", "CREDENTIALS_DIRECTORY"),
    *("HF_TOKEN", "HF_TOKEN_PATH", "HUGGING_FACE_HUB_TOKEN", "HF_HOME", "HF_HUB_CACHE"),
    *("HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT"),
    *("HF_HUB_ENABLE_HF_TRANSFER", "GITHUB_TOKEN", "GITHUB_API_URL"),
    *("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"),
    # A developer's real cloud credentials must not reach a plugin's tests.
    *("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"),
    *("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL"),
)

ManifestInput = Mapping[str, Any] | str


# -- plugins --------------------------------------------------------------------------


def source_problems(source: Source) -> list[str]:
    """What is wrong with one `Source` as a plugin returns it (empty when fine)."""
    from mmd.hookspecs import KeyRule, Source
    from mmd.manifest import COMMON_KEYS, _kind_problem
    from mmd.plugins import RESERVED_NAMES, SOURCE_NAME

    if not isinstance(source, Source):
        return [f"expected mmd.hookspecs.Source, got {source!r}"]
    name = source.name
    problems = []
    if not isinstance(name, str) or not SOURCE_NAME.fullmatch(name):
        problems.append(f"source name {name!r}: use letters, digits, '-' and '_'")
    elif name in RESERVED_NAMES:
        problems.append(f"source name {name!r} is a reserved folder of the storage")
    for attr in ("resolve", "fetch", "validate", "pinned_version"):
        value = getattr(source, attr)
        if not callable(value) and (attr == "resolve" or value is not None):
            problems.append(f"source {name!r}: `{attr}` must be callable, got {value!r}")
    for key, rule in source.keys.items():
        if not isinstance(rule, KeyRule):
            problems.append(f"source {name!r}: key {key!r} must be a KeyRule, got {rule!r}")
        elif key in COMMON_KEYS:
            problems.append(f"source {name!r}: key {key!r} is common to all sources")
        elif (problem := _kind_problem(rule, None)) and "unknown key kind" in problem:
            problems.append(f"source {name!r}: key {key!r}: {problem}")
    return problems


def _hook_problems(plugin: object) -> list[str]:
    """pluggy's own checks on one plugin, in a manager of its own (tox's check_pending)."""
    import pluggy

    from mmd import hookspecs
    from mmd.plugins import GROUP

    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    label = getattr(plugin, "__name__", None) or repr(plugin)
    try:
        pm.register(plugin)
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        return [f"plugin {label}: {' '.join(str(exc).split())}"]
    if not pm.get_hookcallers(plugin):
        return [f"plugin {label}: no function is marked with @mmd.hookspecs.hookimpl"]
    return []


def load_checked_plugins(
    *plugins: object, use_entry_points: bool = False, allow_broken: bool = False
) -> Plugins:
    """mmd's loader with the builtins plus `plugins`; fails the test on any problem.

    `use_entry_points` also loads every installed plugin (as `mmd` itself does);
    `allow_broken` returns what loaded instead of failing on a broken plugin.
    """
    from mmd.plugins import load_plugins

    checked = {id(plugin): _hook_problems(plugin) for plugin in plugins}
    problems = [p for found in checked.values() for p in found]
    if problems and not allow_broken:
        pytest.fail("\n".join(problems), pytrace=False)
    # A plugin pluggy refuses would make the loader raise: leave it out, reported.
    good = [plugin for plugin in plugins if not checked[id(plugin)]]
    loaded = load_plugins(_not_installed(good, use_entry_points), use_entry_points=use_entry_points)
    loaded.manager.check_pending()
    loaded.broken[:0] = problems
    problems = list(loaded.broken)
    problems += [p for source in loaded.sources.values() for p in source_problems(source)]
    if problems and not allow_broken:
        pytest.fail("\n".join(problems), pytrace=False)
    return loaded


def _not_installed(plugins: Sequence[object], use_entry_points: bool = True) -> list[object]:
    """Leave out plugins mmd's loader registers anyway (a built-in source, or an author's
    own package installed with `pip install -e .`): pluggy refuses one object twice."""
    from mmd.plugins import BUILTINS, GROUP

    installed = [sys.modules.get(module) for module in BUILTINS.values()]
    for ep in entry_points(group=GROUP) if use_entry_points else ():
        module = sys.modules.get(ep.module)
        if module is not None:
            installed.append(getattr(module, ep.attr, None) if ep.attr else module)
    return [p for p in plugins if not any(p is i for i in installed)]


@pytest.fixture
def mmd_plugins() -> Callable[..., Plugins]:
    """`mmd_plugins(*plugins, use_entry_points=False, allow_broken=False) -> Plugins`.

    A fresh plugin manager per call: the built-in sources plus `plugins` (modules or
    objects with `@hookimpl` functions), checked by pluggy and by `source_problems`.
    """
    return load_checked_plugins


# -- storage --------------------------------------------------------------------------


@dataclass(frozen=True)
class MmdStorage:
    """An isolated mmd installation: `$MMD_HOME` with `models.yaml` and `models/`."""

    root: Path

    @property
    def storage(self) -> Path:
        return self.root / "models"

    @property
    def manifest(self) -> Path:
        return self.root / "models.yaml"

    @property
    def config_file(self) -> Path:
        """Found by mmd without a flag; write settings such as `verify_checksums` here."""
        return self.root / "config.yaml"

    @property
    def registry_file(self) -> Path:
        return self.storage / "model_registry.json"

    def write_manifest(self, manifest: ManifestInput) -> Path:
        """Write `models.yaml` from YAML text (dedented) or a mapping.

        A mapping without a top-level `models` key is taken as the `models` mapping.
        """
        if isinstance(manifest, str):
            text = textwrap.dedent(manifest).lstrip()
        else:
            import yaml

            data = dict(manifest) if "models" in manifest else {"models": dict(manifest)}
            text = yaml.safe_dump({"version": 1, **data}, sort_keys=False)
        self.manifest.write_text(text)
        return self.manifest

    def registry(self) -> dict[str, dict[str, Any]]:
        """The registry's entries by model id, as JSON; empty before the first save."""
        if not self.registry_file.is_file():
            return {}
        models: dict[str, dict[str, Any]] = json.loads(self.registry_file.read_text())["models"]
        return models

    def context(self) -> SourceContext:
        """The `SourceContext` mmd would hand a source here, for calling `resolve` directly."""
        from mmd.config import load_settings
        from mmd.hookspecs import SourceContext

        flags = {"storage_dir": str(self.storage), "manifest": str(self.manifest)}
        return SourceContext(settings=load_settings(None, flags), env=dict(os.environ))


@pytest.fixture
def mmd_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MmdStorage:
    """A fresh `$MMD_HOME` in `tmp_path`; mmd's variables, tokens and proxies unset."""
    for name in SCRUBBED_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "mmd-home"
    root.mkdir()
    monkeypatch.setenv("MMD_HOME", str(root))
    # The built-in huggingface source must never reach the real hub from a test.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("GITHUB_API_URL", "http://127.0.0.1:9")  # nothing answers there
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return MmdStorage(root)


# -- one sync pass --------------------------------------------------------------------


@dataclass(frozen=True)
class SyncResult:
    """What one `mmd sync` pass did: exit code, output and the registry afterwards."""

    exit_code: int
    stdout: str
    stderr: str
    entries: dict[str, dict[str, Any]]

    def entry(self, model_id: str) -> dict[str, Any]:
        """One registry entry (as JSON); fails the test naming the ids there are."""
        if model_id not in self.entries:
            known = ", ".join(sorted(self.entries)) or "none"
            pytest.fail(f"no registry entry {model_id!r} (entries: {known})\n{self.stderr}")
        return self.entries[model_id]

    def read(self, model_id: str, path: str) -> bytes:
        """The bytes of one file of a model, from its folder in the storage."""
        return (Path(self.entry(model_id)["path"]) / path).read_bytes()

    def files(self, model_id: str) -> dict[str, bytes]:
        """Every file the registry lists for a model, by path, with its bytes."""
        return {f["path"]: self.read(model_id, f["path"]) for f in self.entry(model_id)["files"]}


@contextlib.contextmanager
def _kept_logging() -> Iterator[None]:
    """`mmd.cli.main` sets up logging for a process; give the test its own back."""
    root = logging.getLogger()
    names = ("mmd", "apscheduler", "watchdog")
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in names}
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name in names:
            logging.getLogger(name).setLevel(levels[name])


@pytest.fixture
def mmd_sync(mmd_storage: MmdStorage) -> Callable[..., SyncResult]:
    """`mmd_sync(manifest=None, *, plugins=(), args=(), check=True) -> SyncResult`.

    Writes `manifest` (YAML text or a mapping; None keeps the current one) into
    `mmd_storage`, then runs `mmd sync [args]` in this process, with `plugins` registered
    next to the installed ones. `check` first runs `mmd_plugins`' checks on `plugins`.
    Call it again for a second pass over the same storage. Call it from a synchronous
    test: the command line runs its own event loop.
    """

    def sync(
        manifest: ManifestInput | None = None,
        *,
        plugins: Sequence[object] = (),
        args: Sequence[str] = (),
        check: bool = True,
    ) -> SyncResult:
        from mmd.cli import main

        if check:
            load_checked_plugins(*plugins)
        if manifest is not None:
            mmd_storage.write_manifest(manifest)
        argv = ["sync", "--manifest", str(mmd_storage.manifest)]
        argv += ["--storage-dir", str(mmd_storage.storage), *args]
        out, err = io.StringIO(), io.StringIO()
        with _kept_logging(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv, plugins=_not_installed(plugins))
        return SyncResult(code, out.getvalue(), err.getvalue(), mmd_storage.registry())

    return sync
