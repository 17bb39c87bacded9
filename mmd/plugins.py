"""The one plugin loader: entry points in group `mmd`, resilient to broken plugins."""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import pluggy

from mmd import hookspecs
from mmd.errors import ConfigError, PluginError
from mmd.hookspecs import Source

log = logging.getLogger(__name__)

GROUP = "mmd"
# Registered directly when mmd runs from a checkout that was never pip-installed.
# Source names are folders in storage; these are taken by mmd itself.
RESERVED_NAMES = frozenset({"cache", "custom"})
SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")

BUILTINS = {
    "http": "mmd.sources.http",
    "local": "mmd.sources.local",
    "huggingface": "mmd.sources.huggingface",
    "github": "mmd.sources.github",
}


@dataclass(frozen=True)
class PluginInfo:
    name: str
    module: str
    distribution: str | None
    version: str | None
    sources: tuple[str, ...]


@dataclass
class Plugins:
    """Loaded plugins and the sources they provide, keyed by source name."""

    manager: pluggy.PluginManager
    sources: dict[str, Source] = field(default_factory=dict)
    infos: list[PluginInfo] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)

    def source(self, name: str) -> Source:
        try:
            return self.sources[name]
        except KeyError:
            known = ", ".join(sorted(self.sources)) or "none"
            raise ConfigError(f"unknown source {name!r} (installed: {known})") from None


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    return pm


def load_plugins(extra: Iterable[object] = (), *, use_entry_points: bool = True) -> Plugins:
    """Load every plugin; a plugin that fails to import or answer is logged and skipped.

    `extra` registers plugin objects directly (tests, embedding). Two plugins that
    claim one source name make a PluginError naming both.
    """
    pm = _new_manager()
    dists: dict[str, tuple[str | None, str | None]] = {}
    broken: list[str] = []
    if use_entry_points:
        for ep in entry_points(group=GROUP):
            if ep.name in BUILTINS and ep.value != BUILTINS[ep.name]:
                # Another distribution taking a built-in's name would silently replace it.
                broken.append(
                    f"plugin {ep.name!r} ({ep.value}, from {ep.dist.name if ep.dist else '?'}) "
                    f"uses the name of mmd's built-in {ep.name!r} source"
                )
                log.warning("%s; skipping it", broken[-1])
                continue
            if pm.has_plugin(ep.name) or pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
            except Exception as exc:
                broken.append(f"plugin {ep.name!r} ({ep.value}) failed to load: {exc}")
                log.warning("%s; skipping it", broken[-1])
                continue
            dist = ep.dist
            dists[ep.name] = (dist.name if dist else None, dist.version if dist else None)
    for name, module in BUILTINS.items():
        if not pm.has_plugin(name):
            pm.register(importlib.import_module(module), name=name)
            dists[name] = ("mmd", _own_version())
    for index, plugin in enumerate(extra):
        if pm.is_registered(plugin):
            continue  # also installed (an author's `pip install -e .`): one copy is enough
        name = getattr(plugin, "__name__", None) or f"extra-{index}"
        if pm.has_plugin(name):
            name = f"{name}-extra-{index}"
        pm.register(plugin, name=name)
    _drop_invalid(pm, broken)
    plugins = Plugins(manager=pm, broken=broken)
    _collect_sources(plugins, dists)
    return plugins


def _own_version() -> str:
    from mmd import __version__

    return __version__


def _drop_invalid(pm: pluggy.PluginManager, broken: list[str]) -> None:
    """Unregister plugins that implement hooks mmd does not know (typos, newer API)."""
    for name, plugin in list(pm.list_name_plugin()):
        if plugin is None:
            continue
        unknown = [
            caller.name for caller in pm.get_hookcallers(plugin) or [] if caller.spec is None
        ]
        if unknown:
            broken.append(f"plugin {name!r} implements unknown hooks {sorted(unknown)}")
            log.warning("%s; skipping it", broken[-1])
            pm.unregister(plugin)


def _collect_sources(plugins: Plugins, dists: dict[str, tuple[str | None, str | None]]) -> None:
    owners: dict[str, str] = {}
    pm = plugins.manager
    for impl in reversed(pm.hook.mmd_sources.get_hookimpls()):
        plugin_name = impl.plugin_name
        try:
            provided: list[Source] = list(impl.function())  # type: ignore[call-overload]
            for source in provided:
                if not isinstance(source, Source) or not source.name:
                    raise TypeError(f"expected mmd.hookspecs.Source, got {source!r}")
                # The name is a folder in storage: a safe one, and none mmd uses.
                if not SOURCE_NAME.fullmatch(source.name):
                    raise TypeError(
                        f"source name {source.name!r}: use letters, digits, '-' and '_'"
                    )
                if source.name in RESERVED_NAMES:
                    raise TypeError(
                        f"source name {source.name!r} is a reserved folder of the storage"
                    )
        except Exception as exc:
            plugins.broken.append(f"plugin {plugin_name!r} failed in mmd_sources(): {exc}")
            log.warning("%s; skipping it", plugins.broken[-1])
            continue
        for source in provided:
            if source.name in owners:
                raise PluginError(
                    f"source {source.name!r} is provided by two plugins: "
                    f"{owners[source.name]!r} and {plugin_name!r}",
                    hint="uninstall one of them",
                )
            owners[source.name] = plugin_name
            plugins.sources[source.name] = source
        dist, version = dists.get(plugin_name, (None, None))
        module = getattr(impl.plugin, "__name__", type(impl.plugin).__name__)
        plugins.infos.append(
            PluginInfo(plugin_name, module, dist, version, tuple(s.name for s in provided))
        )
