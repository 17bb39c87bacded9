"""The plugin loader: entry points, broken plugins, duplicate source names, `mmd plugins`."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mmd.errors import PluginError
from mmd.plugins import load_plugins
from tests.conftest import Home, Result
from tests.sources_for_tests import StaticSource

Mmd = Callable[..., Result]


def install_fake_distribution(
    site: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]
) -> None:
    """A real installed distribution (dist-info + entry_points.txt) on sys.path."""
    info = site / f"{dist}-1.2.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[mmd]\n{lines}")
    for name, code in modules.items():
        (site / f"{name}.py").write_text(code)


GOOD_PLUGIN = """
from mmd.hookspecs import Source, hookimpl
from mmd.types import Release, RemoteFile

def resolve(spec, ctx):
    return Release(version="1", files=())

@hookimpl
def mmd_sources():
    return [Source(name="{name}", resolve=resolve)]
"""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    for name in [m for m in sys.modules if m.startswith("mmdtest_")]:
        del sys.modules[name]


def test_builtins_are_listed(mmd: Mmd) -> None:
    result = mmd("plugins", "--json")
    assert result.code == 0
    data = json.loads(result.out)
    sources = {s for p in data["plugins"] for s in p["sources"]}
    assert {"http", "local"} <= sources
    assert data["broken"] == []
    assert "http: sources http (mmd " in mmd("plugins").out


def test_third_party_plugin_from_entry_point(site: Path, mmd: Mmd) -> None:
    install_fake_distribution(
        site,
        "mmd-extra",
        {"extra": "mmdtest_extra"},
        {"mmdtest_extra": GOOD_PLUGIN.format(name="extra")},
    )
    plugins = load_plugins()
    assert "extra" in plugins.sources
    (info,) = [i for i in plugins.infos if i.name == "extra"]
    assert (info.distribution, info.version, info.sources) == ("mmd-extra", "1.2.3", ("extra",))
    assert "extra: sources extra (mmd-extra 1.2.3)" in mmd("plugins").out


def test_broken_plugins_are_logged_and_skipped(
    site: Path, mmd: Mmd, home: Home, caplog: pytest.LogCaptureFixture
) -> None:
    install_fake_distribution(
        site,
        "mmd-broken",
        {
            "gone": "mmdtest_missing_module",
            "crashy": "mmdtest_crashy",
            "typo": "mmdtest_typo",
            "raises": "mmdtest_raises",
        },
        {
            "mmdtest_crashy": "raise RuntimeError('boom at import')\n",
            "mmdtest_typo": (
                "from mmd.hookspecs import hookimpl\n@hookimpl\ndef mmd_sourcez():\n    return []\n"
            ),
            "mmdtest_raises": (
                "from mmd.hookspecs import hookimpl\n"
                "@hookimpl\ndef mmd_sources():\n    raise ValueError('bad plugin')\n"
            ),
        },
    )
    plugins = load_plugins()
    assert {"http", "local"} <= set(plugins.sources)
    text = "\n".join(plugins.broken)
    assert "'gone'" in text and "mmdtest_missing_module" in text
    assert "'crashy'" in text and "boom at import" in text
    assert "'typo'" in text and "mmd_sourcez" in text
    assert "'raises'" in text and "bad plugin" in text
    assert "boom at import" in caplog.text

    # The tool keeps working with the good plugins.
    home.write_manifest("models: {}\n")
    assert mmd("validate").code == 0
    listed = mmd("plugins")
    assert listed.code == 0 and "broken: plugin 'crashy'" in listed.out


def test_two_plugins_claiming_one_source_name(site: Path, mmd: Mmd, home: Home) -> None:
    install_fake_distribution(
        site,
        "mmd-rival",
        {"rival": "mmdtest_rival"},
        {"mmdtest_rival": GOOD_PLUGIN.format(name="http")},
    )
    with pytest.raises(PluginError) as info:
        load_plugins()
    assert "'rival'" in str(info.value) and "'http'" in str(info.value)
    home.write_manifest("models: {}\n")
    result = mmd("validate")
    assert result.code == 2
    assert "source 'http' is provided by two plugins" in result.err


def test_extra_plugin_objects_register(mmd: Mmd, home: Home) -> None:
    home.write_manifest("models:\n  x:\n    source: static\n")
    assert mmd("validate").code == 1
    assert mmd("validate", plugins=[StaticSource("static", [])]).code == 0


def test_a_plugin_taking_a_builtin_name_is_reported_not_obeyed(site: Path, mmd: Mmd) -> None:
    install_fake_distribution(
        site,
        "evil-http",
        {"http": "mmdtest_evil"},
        {"mmdtest_evil": GOOD_PLUGIN.format(name="zoo")},
    )
    plugins = load_plugins()
    assert plugins.sources["http"].description == "one file from an http(s) URL"
    assert "zoo" not in plugins.sources
    assert any("uses the name of mmd's built-in 'http' source" in b for b in plugins.broken)
    assert "broken: plugin 'http' (mmdtest_evil, from evil-http)" in mmd("plugins").out
