"""The plugin author's kit (`mmd.testing`): its fixtures drive tiny source plugins
written in the test through real sync passes, and report broken plugins."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import mmd.sources.http
from mmd.errors import ChecksumError, DownloadError, SourceError
from mmd.hookspecs import KeyRule, Sink, Source, SourceContext, hookimpl
from mmd.plugins import Plugins
from mmd.types import ModelSpec, Release, RemoteFile
from tests.servers.fileserver import FileServer
from tests.servers.isolation import SCRUBBED_VARIABLES as SCRUBBED_BY_CONFTEST

if TYPE_CHECKING:
    # Imported at run time only inside tests: a module imported before pytest registers
    # it as a plugin cannot get pytest's assertion rewriting (and pytest warns).
    from mmd.testing import MmdStorage, SyncResult


def _kit_autoloaded() -> bool:
    """True once mmd's `pytest11` entry point is installed: pytest then loads mmd.testing
    as the plugin `mmd`, and naming it again here would register the module twice (pluggy
    refuses that)."""
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return False
    return any(ep.value == "mmd.testing" for ep in entry_points(group="pytest11"))


KIT_AUTOLOADED = _kit_autoloaded()
pytest_plugins = ["pytester"] if KIT_AUTOLOADED else ["pytester", "mmd.testing"]

ROOT = Path(__file__).resolve().parents[1]
Sync = Any  # the mmd_sync fixture: (manifest=None, *, plugins=(), args=(), check=True)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- a source served over HTTP by the core's transfer ----------------------------------


class WebSource:
    """`source: kitweb`: files on a server; a bearer token from the environment."""

    __name__ = "kitweb"

    def __init__(self, files: Mapping[str, bytes]) -> None:
        self.files = dict(files)
        self.resolved = 0

    def resolve(self, spec: ModelSpec, ctx: SourceContext) -> Release:
        self.resolved += 1
        token = ctx.env.get("KITWEB_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        base = spec.options["base"]
        files = tuple(
            RemoteFile(
                path=path,
                size=len(data),
                sha256=sha256(data),
                url=f"{base}/{path}",
                headers=headers,
            )
            for path, data in self.files.items()
        )
        return Release(version=spec.options.get("tag", "v1"), files=files, metadata={"base": base})

    @hookimpl
    def mmd_sources(self) -> list[Source]:
        keys = {"base": KeyRule("url", required=True), "tag": KeyRule("str")}
        return [Source(name="kitweb", resolve=self.resolve, keys=keys)]


def test_resolve_then_core_http_download(
    fileserver: FileServer, mmd_sync: Sync, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {"config.json": b'{"layers": 2}', "weights/model.bin": bytes(range(256)) * 800}
    for path, data in files.items():
        fileserver.add(f"m/{path}", data)
        fileserver.set_fault(f"m/{path}", require_auth="Bearer s3cret")
    monkeypatch.setenv("KITWEB_TOKEN", "s3cret")
    plugin = WebSource(files)
    manifest = {
        "team/tiny": {
            "source": "kitweb",
            "base": f"{fileserver.url}/m",
            "type": "text-generation",
            "metadata": {"owner": "kit"},
        }
    }

    result: SyncResult = mmd_sync(manifest, plugins=[plugin])
    assert result.exit_code == 0, result.stderr
    assert "ok     team/tiny: fetched 2 files" in result.stdout
    entry = result.entry("team/tiny")
    assert (entry["status"], entry["version"], entry["model_type"]) == (
        "available",
        "v1",
        "text-generation",
    )
    assert entry["metadata"] == {"base": f"{fileserver.url}/m", "owner": "kit"}
    assert {f["path"]: f["sha256"] for f in entry["files"]} == {
        path: sha256(data) for path, data in files.items()
    }
    assert result.files("team/tiny") == files
    assert result.read("team/tiny", "config.json") == files["config.json"]
    # The token went to the server in a header, and nowhere else.
    assert all(r.headers.get("Authorization") == "Bearer s3cret" for r in fileserver.requests)
    assert "s3cret" not in json.dumps(result.entries) + result.stdout + result.stderr

    # A second pass over the same storage: nothing to download.
    sent = fileserver.bytes_sent("m/weights/model.bin")
    again = mmd_sync(plugins=[plugin])
    assert again.exit_code == 0 and "1 model: 0 changed, 0 failed" in again.stdout
    assert fileserver.bytes_sent("m/weights/model.bin") == sent

    # A new version: only the changed file moves again.
    plugin.files["config.json"] = b'{"layers": 3}'
    fileserver.add("m/config.json", plugin.files["config.json"])
    manifest["team/tiny"]["tag"] = "v2"
    updated = mmd_sync(manifest, plugins=[plugin])
    assert "ok     team/tiny: updated 2 files" in updated.stdout, updated.stderr
    assert updated.read("team/tiny", "config.json") == b'{"layers": 3}'
    assert fileserver.bytes_sent("m/weights/model.bin") == sent


def test_a_builtin_or_installed_plugin_is_not_registered_twice(
    fileserver: FileServer, mmd_sync: Sync
) -> None:
    url = fileserver.add("tiny.gguf", b"gguf" * 100)
    result = mmd_sync({"tiny": {"source": "http", "url": url}}, plugins=[mmd.sources.http])
    assert result.exit_code == 0, result.stderr
    assert result.files("tiny") == {"tiny.gguf": b"gguf" * 100}


# -- a source with its own fetch ---------------------------------------------------------

CHUNK = 64 << 10


class BlobSource:
    """`source: kitblob`: bytes through its own `fetch` (as a signed-request store would),
    with a digest of its own (md5) checked across a resumed fetch through `Sink.existing()`.
    `rev` pins the version for good when it is a 40-hex commit."""

    __name__ = "kitblob"

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.md5 = hashlib.md5(data).hexdigest()
        self.fail_at: int | None = None
        self.resolved = 0
        self.offsets: list[int] = []

    def resolve(self, spec: ModelSpec, ctx: SourceContext) -> Release:
        self.resolved += 1
        file = RemoteFile(path="blob.bin", size=len(self.data))
        return Release(version=spec.options["rev"], files=(file,))

    def fetch(self, spec: ModelSpec, file: RemoteFile, sink: Sink, ctx: SourceContext) -> None:
        self.offsets.append(sink.offset)
        digest = hashlib.md5()
        for chunk in sink.existing():
            digest.update(chunk)
        pos = sink.offset
        while pos < len(self.data):
            if self.fail_at is not None and pos >= self.fail_at:
                self.fail_at = None
                raise DownloadError("kitblob: connection reset by peer", retryable=True)
            chunk = self.data[pos : pos + CHUNK]
            sink.write(chunk)
            digest.update(chunk)
            pos += len(chunk)
        if digest.hexdigest() != self.md5:
            raise ChecksumError(file.path, self.md5, digest.hexdigest(), algo="md5")

    def pinned_version(self, spec: ModelSpec) -> str | None:
        rev = str(spec.options["rev"])
        return rev if re.fullmatch(r"[0-9a-f]{40}", rev) else None

    @hookimpl
    def mmd_sources(self) -> list[Source]:
        return [
            Source(
                name="kitblob",
                resolve=self.resolve,
                fetch=self.fetch,
                pinned_version=self.pinned_version,
                keys={"rev": KeyRule("str", required=True)},
            )
        ]


def test_own_fetch_resumes_into_the_sink(mmd_sync: Sync) -> None:
    data = os.urandom(5 * CHUNK + 123)
    plugin = BlobSource(data)
    plugin.fail_at = 3 * CHUNK
    rev = "0123456789abcdef0123456789abcdef01234567"

    first = mmd_sync({"blob": {"source": "kitblob", "rev": rev}}, plugins=[plugin])
    assert first.exit_code == 1
    assert "FAILED blob: kitblob: connection reset by peer" in first.stdout
    assert first.entry("blob")["status"] == "error"

    second = mmd_sync(plugins=[plugin])
    assert second.exit_code == 0, second.stderr
    assert plugin.offsets == [0, 3 * CHUNK]  # resumed, not restarted
    assert second.files("blob") == {"blob.bin": data}
    (registered,) = second.entry("blob")["files"]
    assert registered == {"path": "blob.bin", "size": len(data), "sha256": sha256(data)}

    # Pinned and whole: the next pass does not even resolve.
    resolved = plugin.resolved
    third = mmd_sync(plugins=[plugin])
    assert third.exit_code == 0 and "0 changed" in third.stdout
    assert plugin.resolved == resolved


def test_own_digest_mismatch_fails_the_model(mmd_sync: Sync) -> None:
    plugin = BlobSource(b"x" * 1000)
    plugin.md5 = "0" * 32
    result = mmd_sync({"blob": {"source": "kitblob", "rev": "main"}}, plugins=[plugin])
    assert result.exit_code == 1
    assert result.entry("blob")["error"] == (
        f"blob.bin: md5 mismatch: expected {'0' * 32}, got {hashlib.md5(b'x' * 1000).hexdigest()}"
    )


# -- errors, validation ------------------------------------------------------------------


class RangeSource:
    """`source: kitrange`: `validate` across keys; resolve fails in two ways."""

    __name__ = "kitrange"

    def resolve(self, spec: ModelSpec, ctx: SourceContext) -> Release:
        if spec.options.get("lo") == 13:
            raise SourceError("range 13-20 not found", hint="ask for another range")
        raise RuntimeError("plugin bug")

    def validate(self, options: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        if "lo" in options and "hi" in options and options["hi"] < options["lo"]:
            yield "hi", "`hi` must be at least `lo`"

    @hookimpl
    def mmd_sources(self) -> list[Source]:
        keys = {"lo": KeyRule("int", required=True), "hi": KeyRule("int")}
        return [Source("kitrange", self.resolve, keys=keys, validate=self.validate)]


def test_manifest_problems_have_file_line_and_column(
    mmd_sync: Sync, mmd_storage: MmdStorage
) -> None:
    result = mmd_sync(
        """
        models:
          a:
            source: kitrange
            lo: 5
            hi: 2
          b:
            source: kitrange
            lo: -1
        """,
        plugins=[RangeSource()],
    )
    assert result.exit_code == 2
    manifest = str(mmd_storage.manifest)
    assert f"{manifest}:5:5: models.a.hi: `hi` must be at least `lo`" in result.stderr
    assert f"{manifest}:8:5: models.b.lo: expected a whole number of at least 0" in result.stderr
    assert result.entries == {}


def test_resolve_errors_are_one_line_and_do_not_stop_other_models(
    fileserver: FileServer, mmd_sync: Sync
) -> None:
    url = fileserver.add("ok.bin", b"ok")
    manifest = {
        "missing": {"source": "kitrange", "lo": 13},
        "buggy": {"source": "kitrange", "lo": 1},
        "fine": {"source": "http", "url": url},
    }
    result = mmd_sync(manifest, plugins=[RangeSource()])
    assert result.exit_code == 1
    assert result.entry("missing")["error"] == "range 13-20 not found (ask for another range)"
    assert result.entry("buggy")["error"] == "source 'kitrange' failed: RuntimeError: plugin bug"
    assert result.entry("fine")["status"] == "available"
    assert "3 models: 1 changed, 2 failed" in result.stdout


# -- the fixtures themselves ---------------------------------------------------------------


def test_mmd_plugins_loads_builtins_and_yours(mmd_plugins: Any) -> None:
    plugins: Plugins = mmd_plugins(RangeSource(), BlobSource(b""))
    assert {"http", "local", "huggingface", "kitrange", "kitblob"} <= set(plugins.sources)
    assert plugins.broken == []
    assert [i.sources for i in plugins.infos if i.name == "kitrange"] == [("kitrange",)]


def _resolve(spec: ModelSpec, ctx: SourceContext) -> Release:
    return Release(version="1", files=())


class Misspelt:
    __name__ = "misspelt"

    @hookimpl
    def mmd_sourcez(self) -> list[Source]:
        return []


class WrongArguments:
    __name__ = "wrongargs"

    @hookimpl
    def mmd_sources(self, config: object) -> list[Source]:
        return []


class Unmarked:
    __name__ = "unmarked"

    def mmd_sources(self) -> list[Source]:
        return [Source("unmarked", _resolve)]


class Raises:
    __name__ = "raises"

    @hookimpl
    def mmd_sources(self) -> list[Source]:
        raise ValueError("bad plugin")


class Returns:
    """A plugin returning whatever the test gives it."""

    __name__ = "returns"

    def __init__(self, *sources: object) -> None:
        self.sources = list(sources)

    @hookimpl
    def mmd_sources(self) -> list[object]:
        return self.sources


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        (Misspelt(), r"plugin misspelt: unknown hook 'mmd_sourcez'"),
        (WrongArguments(), r"plugin wrongargs: .*mmd_sources.*config"),
        (Unmarked(), r"plugin unmarked: no function is marked with @mmd.hookspecs.hookimpl"),
        (Raises(), r"plugin 'raises' failed in mmd_sources\(\): bad plugin"),
        (Returns("http"), r"plugin 'returns' failed in mmd_sources\(\): expected mmd.hookspecs"),
        (Returns(Source("cache", _resolve)), r"'cache' is a reserved folder"),
        (Returns(Source("a/b", _resolve)), r"source name 'a/b': use letters"),
        (
            Returns(Source("kitx", _resolve, keys={"type": KeyRule("str")})),
            r"source 'kitx': key 'type' is common to all sources",
        ),
        (
            Returns(Source("kitx", _resolve, keys={"u": KeyRule("uri")})),
            r"source 'kitx': key 'u': source declares an unknown key kind 'uri'",
        ),
        (
            Returns(Source("kitx", _resolve, fetch="no")),  # type: ignore[arg-type]
            r"source 'kitx': `fetch` must be callable",
        ),
    ],
)
def test_mmd_plugins_reports_a_broken_plugin(
    mmd_plugins: Any, plugin: object, message: str
) -> None:
    with pytest.raises(pytest.fail.Exception, match=message):
        mmd_plugins(plugin)
    # allow_broken: the same problem is listed, and mmd works with the other plugins.
    loaded: Plugins = mmd_plugins(plugin, allow_broken=True)
    assert re.search(message, "\n".join(loaded.broken) + "\n" + _problems(loaded))
    assert {"http", "local"} <= set(loaded.sources)


def _problems(plugins: Plugins) -> str:
    from mmd.testing import source_problems

    return "\n".join(p for s in plugins.sources.values() for p in source_problems(s))


def test_mmd_sync_reports_a_broken_plugin(mmd_sync: Sync) -> None:
    manifest = {"x": {"source": "raises"}}
    with pytest.raises(pytest.fail.Exception, match="bad plugin"):
        mmd_sync(manifest, plugins=[Raises()])
    # Unchecked, the command line itself logs the plugin, skips it, and says why.
    result = mmd_sync(manifest, plugins=[Raises()], check=False)
    assert result.exit_code == 2
    assert "plugin 'raises' failed in mmd_sources(): bad plugin; skipping it" in result.stderr
    assert "unknown source 'raises'" in result.stderr


def test_mmd_storage_isolates_the_environment(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("MODEL_STORAGE_DIR", "MMD_MANIFEST", "HF_TOKEN", "HTTPS_PROXY"):
        monkeypatch.setenv(name, "/somewhere/real")
    from mmd.testing import SCRUBBED_VARIABLES

    storage: MmdStorage = request.getfixturevalue("mmd_storage")
    assert set(SCRUBBED_BY_CONFTEST) <= set(SCRUBBED_VARIABLES)
    assert not {"MODEL_STORAGE_DIR", "MMD_MANIFEST", "HF_TOKEN", "HTTPS_PROXY"} & set(os.environ)
    assert os.environ["MMD_HOME"] == str(storage.root)
    assert storage.root.is_relative_to(tmp_path)
    settings = storage.context().settings
    assert (settings.storage_dir, settings.manifest) == (storage.storage, storage.manifest)
    assert settings.registry_file == storage.registry_file
    assert settings.hf_token is None
    assert storage.registry() == {}
    storage.write_manifest({"version": 1, "models": {"a": {"source": "http"}}})
    assert storage.manifest.read_text() == "version: 1\nmodels:\n  a:\n    source: http\n"


# -- the guide's example, run as its author would -----------------------------------------


def guide_files() -> dict[str, str]:
    """plugins/README.md's python blocks that start with a `# <path>` line."""
    text = (ROOT / "plugins" / "README.md").read_text()
    return {path: code for code, path in re.findall(r"```python\n(# (\S+)\n.*?)```", text, re.S)}


def test_the_guides_example_plugin_passes_its_tests(pytester: pytest.Pytester) -> None:
    files = guide_files()
    assert {"mmd_zoo/__init__.py", "tests/test_zoo.py"} <= set(files)
    for path, code in files.items():
        target = pytester.path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(code)
    pytester.syspathinsert()  # what `pip install -e .` does for the author
    kit = [] if KIT_AUTOLOADED else ["-p", "mmd.testing"]
    if importlib.util.find_spec("pytest_asyncio"):
        # Installed here for mmd's own tests; unset, it warns in every session.
        pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    result = pytester.runpytest_inprocess(*kit, "-p", "no:cacheprovider", "-q", "tests")
    result.assert_outcomes(passed=3)


def test_the_fixtures_are_documented_with_their_signatures(
    mmd_plugins: Any, mmd_sync: Sync
) -> None:
    from tests.test_hook_docs import GUIDE, signature_text

    for name, func in (("mmd_plugins", mmd_plugins), ("mmd_sync", mmd_sync)):
        shown = signature_text(func, annotations=False)
        call = name + shown[shown.index("(") :]
        assert f"`{call}`" in GUIDE, f"plugins/README.md: document `{call}`"
