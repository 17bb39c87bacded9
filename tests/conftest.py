"""Shared fixtures: every test gets its own MMD_HOME and talks only to 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from mmd.cli import main
from tests.servers.fileserver import fileserver, fileserver2  # noqa: F401
from tests.servers.github import github  # noqa: F401
from tests.servers.hfhub import hf_endpoint, hfhub  # noqa: F401
from tests.servers.isolation import SCRUBBED_VARIABLES

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Home:
    """An isolated mmd installation: $MMD_HOME with models.yaml and models/."""

    root: Path

    @property
    def storage(self) -> Path:
        return self.root / "models"

    @property
    def manifest(self) -> Path:
        return self.root / "models.yaml"

    @property
    def registry_file(self) -> Path:
        return self.storage / "model_registry.json"

    def write_manifest(self, text: str) -> Path:
        self.manifest.write_text(textwrap.dedent(text).lstrip())
        return self.manifest

    def registry(self) -> dict:
        return json.loads(self.registry_file.read_text())

    def entry(self, model_id: str) -> dict:
        return self.registry()["models"][model_id]


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    for name in SCRUBBED_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "home"
    root.mkdir()
    monkeypatch.setenv("MMD_HOME", str(root))
    # huggingface_hub must never reach the real hub from a test.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return Home(root)


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def mmd(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run `mmd ARGS` in this process (plugins= registers extra plugin objects)."""

    def run(*args: str, plugins: Sequence[object] = ()) -> Result:
        capsys.readouterr()
        code = main(list(args), plugins=plugins)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def mmd_process(*args: str, env: dict[str, str] | None = None, **kw: object) -> subprocess.Popen:
    """Start `python -m mmd ARGS` as a real process with the test's environment."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.Popen(
        [sys.executable, "-m", "mmd", *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen]]:
    started: list[subprocess.Popen] = []

    def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        proc = mmd_process(*args, env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
