"""The systemd files in systemd/: systemd-analyze accepts them, the sandbox stays tight,
and the settings users and the daemon rely on are there (SPEC §8).

`systemd-analyze verify` checks that ExecStart's program exists, so each unit is copied
to a temporary folder with ExecStart pointing at the `mmd` installed here first.
Everything is skipped, with the reason, where systemd-analyze is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mmd import paths

ROOT = Path(__file__).resolve().parents[1]
SYSTEMD = ROOT / "systemd"
SYSTEM_UNIT = SYSTEMD / "mmd.service"
USER_UNIT = SYSTEMD / "user" / "mmd.service"
SYSUSERS = SYSTEMD / "mmd.sysusers"
TMPFILES = SYSTEMD / "mmd.tmpfiles"

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="creates root-owned files in a scratch root: needs root"
)

# Exposure as `systemd-analyze security` counts it, in tenths (20 = 2.0 "OK").
SYSTEM_THRESHOLD = 20
# The offline analysis of a user unit assumes root with every capability (User= is
# unset), so a user unit cannot get near 2.0; this only catches lost hardening
# (the same unit without its sandbox lines scores 9.8).
USER_THRESHOLD = 65

Unit = dict[str, list[tuple[str, str]]]


def parse_unit(text: str) -> Unit:
    """Sections of (key, value) pairs in file order; keys may repeat, as in systemd."""
    sections: Unit = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"setting outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a KEY=VALUE line: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: Unit, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def value(unit: Unit, section: str, key: str) -> str | None:
    """The effective value: the last assignment wins."""
    found = values(unit, section, key)
    return found[-1] if found else None


def seconds(text: str) -> float:
    """A systemd time span as used in these units: 60, 60s, 5min, 1min 30s."""
    units = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text)
    assert parts, f"not a time span: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def unescape(text: str) -> str:
    """C-style escapes as SetCredential= reads them."""
    return text.encode().decode("unicode_escape")


@pytest.fixture(scope="module")
def system_unit() -> Unit:
    return parse_unit(SYSTEM_UNIT.read_text())


@pytest.fixture(scope="module")
def user_unit() -> Unit:
    return parse_unit(USER_UNIT.read_text())


def installed_mmd() -> str:
    """The command line that starts the `mmd` installed here, for ExecStart=."""
    found = shutil.which("mmd")
    if found:
        return str(Path(found).resolve())
    return f"{Path(sys.executable).resolve()} -m mmd"


def runnable_copy(unit: Path, folder: Path) -> Path:
    """The unit with ExecStart= pointing at an existing program (verify checks it)."""
    text = unit.read_text()
    rewritten, count = re.subn(
        r"^ExecStart=\S+/mmd run$", f"ExecStart={installed_mmd()} run", text, flags=re.M
    )
    assert count == 1, "ExecStart= is not the expected `.../mmd run` line"
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / "mmd.service"
    copy.write_text(rewritten)
    return copy


@pytest.fixture
def analyze(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run systemd-analyze with a quiet, uncoloured log and, for --user, a runtime dir."""
    assert ANALYZE is not None
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = dict(os.environ)
    env.update(
        SYSTEMD_LOG_LEVEL="info",
        SYSTEMD_LOG_COLOR="0",
        SYSTEMD_LOG_TARGET="console",
        SYSTEMD_PAGER="",
        SYSTEMD_COLORS="0",
        # The user manager that --user sets up wants $XDG_RUNTIME_DIR; keep it (and the
        # home it would read user units from) inside the test's folder.
        XDG_RUNTIME_DIR=str(runtime),
        HOME=str(tmp_path),
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ANALYZE, *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    return run


def complaints(stderr: str, unit: Path) -> list[str]:
    """Lines of systemd-analyze's log that are about this unit file."""
    return [line for line in stderr.splitlines() if unit.name in line or str(unit) in line]


# ---- systemd-analyze -------------------------------------------------------------


@needs_analyze
def test_system_unit_verifies(analyze: Callable, tmp_path: Path) -> None:
    unit = runnable_copy(SYSTEM_UNIT, tmp_path / "system")
    # --recursive-errors=no: only this file is under test, not the host's own units.
    result = analyze("verify", "--man=no", "--generators=no", "--recursive-errors=no", str(unit))
    assert result.returncode == 0, result.stderr
    assert complaints(result.stderr, unit) == [], result.stderr


@needs_analyze
def test_system_unit_security_exposure_is_ok(analyze: Callable, tmp_path: Path) -> None:
    unit = runnable_copy(SYSTEM_UNIT, tmp_path / "system")
    result = analyze(
        "security", "--offline=true", f"--threshold={SYSTEM_THRESHOLD}", "--no-pager", str(unit)
    )
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert score, result.stdout + result.stderr
    assert result.returncode == 0, f"exposure {score.group(1)} > {SYSTEM_THRESHOLD / 10}"
    assert float(score.group(1)) <= SYSTEM_THRESHOLD / 10


@needs_analyze
def test_user_unit_verifies(analyze: Callable, tmp_path: Path) -> None:
    unit = runnable_copy(USER_UNIT, tmp_path / "user")
    result = analyze(
        "--user", "verify", "--man=no", "--generators=no", "--recursive-errors=no", str(unit)
    )
    if result.returncode != 0 and "Failed to initialize manager" in result.stderr:
        pytest.skip(f"no user manager can be set up here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert complaints(result.stderr, unit) == [], result.stderr


@needs_analyze
def test_user_unit_security_keeps_its_sandbox(analyze: Callable, tmp_path: Path) -> None:
    unit = runnable_copy(USER_UNIT, tmp_path / "user")
    result = analyze(
        "--user",
        "security",
        "--offline=true",
        f"--threshold={USER_THRESHOLD}",
        "--no-pager",
        str(unit),
    )
    if "Failed to initialize manager" in result.stderr:
        pytest.skip(f"no user manager can be set up here: {result.stderr.strip()}")
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert score, result.stdout + result.stderr
    assert result.returncode == 0, f"exposure {score.group(1)} > {USER_THRESHOLD / 10}"


@needs_analyze
def test_a_broken_unit_is_caught(analyze: Callable, tmp_path: Path) -> None:
    """The checks above can fail: a typo in a key is reported for this file."""
    unit = runnable_copy(SYSTEM_UNIT, tmp_path / "broken")
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict"))
    result = analyze("verify", "--man=no", "--generators=no", "--recursive-errors=no", str(unit))
    assert complaints(result.stderr, unit), result.stderr


# ---- What users and the daemon rely on -----------------------------------------


def test_system_unit_runs_mmd_as_a_notify_service(system_unit: Unit) -> None:
    assert value(system_unit, "Service", "Type") == "notify"
    assert value(system_unit, "Service", "NotifyAccess") == "main"
    assert value(system_unit, "Service", "ExecStart") == "/usr/local/bin/mmd run"
    assert value(system_unit, "Service", "User") == "mmd"
    assert value(system_unit, "Service", "Group") == "mmd"
    assert value(system_unit, "Install", "WantedBy") == "multi-user.target"


@pytest.mark.parametrize("which", ["system", "user"])
def test_reload_watchdog_restart_and_stop(which: str, system_unit: Unit, user_unit: Unit) -> None:
    unit = system_unit if which == "system" else user_unit
    reload = value(unit, "Service", "ExecReload") or ""
    assert reload.split()[0].endswith("kill") and "-HUP $MAINPID" in reload
    watchdog = value(unit, "Service", "WatchdogSec")
    assert watchdog and seconds(watchdog) > 0
    assert value(unit, "Service", "Restart") == "on-failure"
    # Exit code 2 is bad config or manifest: restarting cannot fix it.
    assert "2" in (value(unit, "Service", "RestartPreventExitStatus") or "").split()
    # The daemon stops within 10 s of SIGTERM; systemd must wait longer than that.
    assert seconds(value(unit, "Service", "TimeoutStopSec") or "0") > 10


def test_system_unit_directories(system_unit: Unit) -> None:
    assert value(system_unit, "Service", "StateDirectory") == "mmd"
    assert value(system_unit, "Service", "CacheDirectory") == "mmd"
    assert value(system_unit, "Service", "ConfigurationDirectory") == "mmd"
    assert value(system_unit, "Service", "ConfigurationDirectoryMode") == "0755"
    # Where mmd then looks, given the variables systemd sets for these directories.
    env = {"STATE_DIRECTORY": "/var/lib/mmd", "CONFIGURATION_DIRECTORY": "/etc/mmd"}
    assert paths.default_storage_dir(env) == Path("/var/lib/mmd/models")
    assert paths.default_manifest(env) == Path("/etc/mmd/models.yaml")
    assert paths.default_config_file(env) == Path("/etc/mmd/config.yaml")
    # huggingface_hub's own files go to the cache directory, not into storage.
    assert "HF_HOME=%C/mmd/hf" in values(system_unit, "Service", "Environment")


def test_system_unit_credentials_are_optional(system_unit: Unit, tmp_path: Path) -> None:
    loaded = dict(v.split(":", 1) for v in values(system_unit, "Service", "LoadCredential"))
    assert loaded["hf_token"] == "/etc/mmd/credentials/hf_token"
    assert loaded.get("api_token") == "/etc/mmd/credentials/api_token"
    fallbacks = dict(v.split(":", 1) for v in values(system_unit, "Service", "SetCredential"))
    for name in loaded:
        # A SetCredential= of the same name is what systemd uses when the file is
        # missing, instead of failing the start; mmd must read it as "no token".
        assert name in fallbacks, f"{name}: a missing file would fail the start"
        (tmp_path / name).write_text(unescape(fallbacks[name]))
        assert paths.credential({"CREDENTIALS_DIRECTORY": str(tmp_path)}, name) is None
    # Every credential file lives in the root-only folder the tmpfiles snippet makes.
    credentials = {str(Path(p).parent) for p in loaded.values()}
    assert credentials == {"/etc/mmd/credentials"}
    assert re.search(r"^d /etc/mmd/credentials\s+0700\s+root\s+root", TMPFILES.read_text(), re.M)


def test_system_unit_sandbox(system_unit: Unit) -> None:
    def setting(key: str) -> str | None:
        return value(system_unit, "Service", key)

    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "SystemCallArchitectures": "native",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "ProtectProc": "invisible",
        "ProcSubset": "pid",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "UMask": "0022",
    }
    assert {key: setting(key) for key in expected} == expected
    families = set((setting("RestrictAddressFamilies") or "").split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert values(system_unit, "Service", "SystemCallFilter")[0] == "@system-service"


def test_user_unit(user_unit: Unit) -> None:
    assert value(user_unit, "Service", "Type") == "notify"
    assert value(user_unit, "Service", "ExecStart") == "%h/.local/bin/mmd run"
    assert value(user_unit, "Service", "User") is None
    # In user units systemd 252 puts StateDirectory= under ~/.config: left out, so the
    # daemon uses the same storage as `mmd` typed in a shell.
    assert value(user_unit, "Service", "StateDirectory") is None
    assert value(user_unit, "Service", "ConfigurationDirectory") == "mmd"
    assert value(user_unit, "Service", "NoNewPrivileges") == "yes"
    assert value(user_unit, "Service", "MemoryDenyWriteExecute") == "yes"
    assert values(user_unit, "Service", "SystemCallFilter")[0] == "@system-service"
    assert value(user_unit, "Install", "WantedBy") == "default.target"


# ---- sysusers.d and tmpfiles.d -----------------------------------------------------


def test_sysusers_user_matches_the_unit(system_unit: Unit) -> None:
    lines = [
        line.split(maxsplit=2)
        for line in SYSUSERS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert len(lines) == 1 and lines[0][:2] == ["u", "mmd"]
    assert lines[0][2].endswith("/var/lib/mmd")
    assert value(system_unit, "Service", "User") == "mmd"


@needs_root
@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="no systemd-sysusers")
def test_sysusers_creates_the_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    entry = next(
        line.split(":")
        for line in (tmp_path / "etc/passwd").read_text().splitlines()
        if line.startswith("mmd:")
    )
    assert entry[5] == "/var/lib/mmd"
    assert entry[6].endswith("nologin")
    assert any(line.startswith("mmd:") for line in (tmp_path / "etc/group").read_text().split())


@needs_root
@pytest.mark.skipif(shutil.which("systemd-tmpfiles") is None, reason="no systemd-tmpfiles")
def test_tmpfiles_makes_a_root_only_credentials_folder(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-tmpfiles", f"--root={tmp_path}", "--create", str(TMPFILES)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    credentials = (tmp_path / "etc/mmd/credentials").stat()
    assert (credentials.st_mode & 0o777, credentials.st_uid) == (0o700, 0)
    assert (tmp_path / "etc/mmd").stat().st_mode & 0o777 == 0o755
