"""Settings (SPEC §2): file, environment, flags, defaults, and what a bad one says.

`load_settings(config, flags, env)` takes the environment as a dict, so these tests
never depend on (or change) the process environment, except the platformdirs one.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import platformdirs
import pytest

from mmd.config import Schedule, Secret, Settings, load_settings
from mmd.errors import ConfigError
from tests.conftest import Home, Result

Run = Callable[..., Result]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def error(**kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(**kwargs)
    assert info.value.exit_code == 2
    return info.value


@pytest.fixture
def base(tmp_path: Path) -> dict[str, str]:
    """An environment with its own MMD_HOME and nothing else set."""
    home = tmp_path / "base-home"
    home.mkdir()
    return {"MMD_HOME": str(home)}


def value(settings: Settings, key: str) -> Any:
    """The setting for a config-file key, secrets revealed."""
    if key == "api.token_file":
        return settings.api_token.reveal() if settings.api_token else None
    found = getattr(settings, key.replace(".", "_"))
    return found.reveal() if isinstance(found, Secret) else found


# -- every key, from each place -----------------------------------------------------------

# key: (YAML value in the file, expected), (env variable, its value, expected),
#      (flag value, expected)
CASES: dict[str, tuple[tuple[str, Any], tuple[str, str, Any], tuple[Any, Any]]] = {
    "storage_dir": (
        ("/srv/file/models", Path("/srv/file/models")),
        ("MODEL_STORAGE_DIR", "/srv/env/models", Path("/srv/env/models")),
        ("/srv/flag/models", Path("/srv/flag/models")),
    ),
    "registry_file": (
        ("/srv/file/reg.json", Path("/srv/file/reg.json")),
        ("MODEL_REGISTRY_FILE", "/srv/env/reg.json", Path("/srv/env/reg.json")),
        ("/srv/flag/reg.json", Path("/srv/flag/reg.json")),
    ),
    "manifest": (
        ("/etc/file/models.yaml", Path("/etc/file/models.yaml")),
        ("MMD_MANIFEST", "/etc/env/models.yaml", Path("/etc/env/models.yaml")),
        ("/etc/flag/models.yaml", Path("/etc/flag/models.yaml")),
    ),
    "hf_token": (
        ("hf_file_token", "hf_file_token"),
        ("HF_TOKEN", "hf_env_token", "hf_env_token"),
        ("hf_flag_token", "hf_flag_token"),
    ),
    "hf_cache": (
        ("/srv/file/cache", Path("/srv/file/cache")),
        ("HF_HUB_CACHE", "/srv/env/cache", Path("/srv/env/cache")),
        ("/srv/flag/cache", Path("/srv/flag/cache")),
    ),
    "max_concurrent_downloads": (
        ("5", 5),
        ("MAX_CONCURRENT_DOWNLOADS", "7", 7),
        (9, 9),
    ),
    "download_timeout": (
        ("10m", 600.0),
        ("DOWNLOAD_TIMEOUT", "90", 90.0),
        ("2h", 7200.0),
    ),
    "verify_checksums": (
        ("false", False),
        ("VERIFY_CHECKSUMS", "no", False),
        (False, False),
    ),
    "schedule": (
        ("{cron: '0 3 * * *'}", Schedule(interval_s=None, cron="0 3 * * *")),
        ("MMD_SCHEDULE", "interval: 5m", Schedule(interval_s=300.0)),
        ("1h", Schedule(interval_s=3600.0)),
    ),
    "prune": (
        ("true", True),
        ("MMD_PRUNE", "1", True),
        (True, True),
    ),
    "api.host": (
        ("0.0.0.0", "0.0.0.0"),
        ("MODEL_API_HOST", "::1", "::1"),
        ("192.0.2.1", "192.0.2.1"),
    ),
    "api.port": (
        ("9000", 9000),
        ("MODEL_API_PORT", "9001", 9001),
        ("9002", 9002),
    ),
}


def _file_text(key: str, yaml_value: str) -> str:
    if key.startswith("api."):
        return f"api:\n  {key[4:]}: {yaml_value}\n"
    return f"{key}: {yaml_value}\n"


@pytest.mark.parametrize("key", sorted(CASES))
def test_key_from_file(key: str, tmp_path: Path, base: dict[str, str]) -> None:
    (yaml_value, expected), _, _ = CASES[key]
    config = write(tmp_path / "config.yaml", _file_text(key, yaml_value))
    settings = load_settings(config=str(config), env=base)
    assert value(settings, key) == expected
    assert settings.config_file == config


@pytest.mark.parametrize("key", sorted(CASES))
def test_key_from_env(key: str, base: dict[str, str]) -> None:
    _, (name, text, expected), _ = CASES[key]
    settings = load_settings(env={**base, name: text})
    assert value(settings, key) == expected


@pytest.mark.parametrize("key", sorted(CASES))
def test_key_from_flag(key: str, base: dict[str, str]) -> None:
    _, _, (flag, expected) = CASES[key]
    settings = load_settings(flags={key: flag}, env=base)
    assert value(settings, key) == expected


@pytest.mark.parametrize("key", sorted(CASES))
def test_precedence_flag_env_file_default(key: str, tmp_path: Path, base: dict[str, str]) -> None:
    (yaml_value, from_file), (name, text, from_env), (flag, from_flag) = CASES[key]
    config = str(write(tmp_path / "config.yaml", _file_text(key, yaml_value)))
    default = value(load_settings(env=base), key)
    if key not in ("verify_checksums", "prune"):  # two values only: see the test below
        assert len({repr(default), repr(from_file), repr(from_env), repr(from_flag)}) == 4
    env = {**base, name: text}
    assert value(load_settings(config, {key: flag}, env), key) == from_flag
    assert value(load_settings(config, {key: None}, env), key) == from_env
    assert value(load_settings(config, {}, base), key) == from_file
    assert value(load_settings(None, {}, base), key) == default


def test_boolean_precedence_both_ways(tmp_path: Path, base: dict[str, str]) -> None:
    config = str(write(tmp_path / "config.yaml", "verify_checksums: false\nprune: true\n"))
    settings = load_settings(config, {}, {**base, "VERIFY_CHECKSUMS": "on", "MMD_PRUNE": "off"})
    assert (settings.verify_checksums, settings.prune) == (True, False)
    settings = load_settings(
        config, {"verify_checksums": False}, {**base, "VERIFY_CHECKSUMS": "on"}
    )
    assert settings.verify_checksums is False


def test_empty_env_variable_is_unset(tmp_path: Path, base: dict[str, str]) -> None:
    config = str(write(tmp_path / "config.yaml", "max_concurrent_downloads: 4\n"))
    settings = load_settings(config, env={**base, "MAX_CONCURRENT_DOWNLOADS": "  "})
    assert settings.max_concurrent_downloads == 4


# -- defaults ----------------------------------------------------------------------------


def test_defaults_with_mmd_home(tmp_path: Path) -> None:
    home = tmp_path / "h"
    settings = load_settings(env={"MMD_HOME": str(home)})
    assert settings.storage_dir == home / "models"
    assert settings.registry_file == home / "models" / "model_registry.json"
    assert settings.manifest == home / "models.yaml"
    assert settings.hf_cache == home / "models" / "cache"
    assert settings.cache_dir == home / "models" / "cache"
    assert settings.hf_token is None
    assert settings.max_concurrent_downloads == 3
    assert settings.download_timeout == 3600.0
    assert settings.verify_checksums is True
    assert settings.schedule == Schedule(interval_s=900.0, cron=None)
    assert settings.schedule.describe() == "every 900s"
    assert settings.prune is False
    assert (settings.api_host, settings.api_port) == ("127.0.0.1", 8005)
    assert settings.api_token is None
    assert settings.config_file is None


def test_mmd_home_config_file_is_found(tmp_path: Path) -> None:
    home = tmp_path / "h"
    config = write(home / "config.yaml", "prune: true\n")
    settings = load_settings(env={"MMD_HOME": str(home)})
    assert settings.config_file == config
    assert settings.prune is True


def test_storage_dir_moves_registry_and_cache(tmp_path: Path, base: dict[str, str]) -> None:
    settings = load_settings(flags={"storage_dir": str(tmp_path / "s")}, env=base)
    assert settings.registry_file == tmp_path / "s" / "model_registry.json"
    assert settings.hf_cache == tmp_path / "s" / "cache"


def test_defaults_under_systemd(tmp_path: Path) -> None:
    state, conf = tmp_path / "state", tmp_path / "conf"
    env = {"STATE_DIRECTORY": str(state), "CONFIGURATION_DIRECTORY": str(conf)}
    settings = load_settings(env=env)
    assert settings.storage_dir == state / "models"
    assert settings.registry_file == state / "models" / "model_registry.json"
    assert settings.manifest == conf / "models.yaml"
    assert settings.config_file is None
    config = write(conf / "config.yaml", "max_concurrent_downloads: 2\n")
    settings = load_settings(env=env)
    assert settings.config_file == config
    assert settings.max_concurrent_downloads == 2


def test_systemd_directory_lists_use_the_first(tmp_path: Path) -> None:
    env = {
        "STATE_DIRECTORY": f"{tmp_path / 'one'}:{tmp_path / 'two'}",
        "CONFIGURATION_DIRECTORY": f"{tmp_path / 'c1'}:{tmp_path / 'c2'}",
    }
    settings = load_settings(env=env)
    assert settings.storage_dir == tmp_path / "one" / "models"
    assert settings.manifest == tmp_path / "c1" / "models.yaml"


def test_defaults_fall_back_to_platformdirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # platformdirs reads the real environment (XDG_* on Linux): point it into tmp_path.
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdgconf"))
    settings = load_settings(env={})
    data = Path(platformdirs.user_data_dir("mmd"))
    conf = Path(platformdirs.user_config_dir("mmd"))
    assert settings.storage_dir == data / "models"
    assert settings.manifest == conf / "models.yaml"
    assert settings.config_file is None
    config = write(conf / "config.yaml", "prune: true\n")
    settings = load_settings(env={})
    assert settings.config_file == config
    assert settings.prune is True


# -- finding the config file ---------------------------------------------------------------


def test_config_file_discovery_order(tmp_path: Path) -> None:
    flag = write(tmp_path / "flag.yaml", "max_concurrent_downloads: 1\n")
    named = write(tmp_path / "named.yaml", "max_concurrent_downloads: 2\n")
    conf = tmp_path / "conf"
    systemd = write(conf / "config.yaml", "max_concurrent_downloads: 3\nprune: true\n")
    env = {"MMD_CONFIG": str(named), "CONFIGURATION_DIRECTORY": str(conf)}

    settings = load_settings(config=str(flag), env=env)
    # One file is read, not a merge of all of them.
    assert (settings.config_file, settings.max_concurrent_downloads, settings.prune) == (
        flag,
        1,
        False,
    )
    settings = load_settings(env=env)
    assert (settings.config_file, settings.max_concurrent_downloads) == (named, 2)
    settings = load_settings(env={"CONFIGURATION_DIRECTORY": str(conf)})
    assert (settings.config_file, settings.max_concurrent_downloads) == (systemd, 3)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_named_config_file_must_exist(how: str, tmp_path: Path, base: dict[str, str]) -> None:
    missing = tmp_path / "nope.yaml"
    if how == "flag":
        exc = error(config=str(missing), env=base)
    else:
        exc = error(env={**base, "MMD_CONFIG": str(missing)})
    assert str(exc) == f"config file {missing} does not exist"


def test_config_file_tilde_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    write(tmp_path / "mmd.yaml", "prune: true\n")
    assert load_settings(config="~/mmd.yaml", env={"MMD_HOME": str(tmp_path)}).prune is True


# -- a bad config file ------------------------------------------------------------------------


def test_unknown_key_in_file(tmp_path: Path, base: dict[str, str]) -> None:
    config = write(tmp_path / "config.yaml", "prune: false\nstroage_dir: /srv\n")
    message = str(error(config=str(config), env=base))
    assert message.startswith(f"{config}:2:1: stroage_dir: unknown setting (known: ")
    assert "storage_dir" in message
    assert "api.port" in message


def test_unknown_api_key_in_file(tmp_path: Path, base: dict[str, str]) -> None:
    config = write(tmp_path / "config.yaml", "api:\n  host: 127.0.0.1\n  hots: x\n")
    message = str(error(config=str(config), env=base))
    assert message.startswith(f"{config}:3:3: api.hots: unknown setting (known: ")


def test_api_not_a_mapping(tmp_path: Path, base: dict[str, str]) -> None:
    config = write(tmp_path / "config.yaml", "api: 8005\n")
    assert str(error(config=str(config), env=base)) == (
        f"{config}:1:1: api: expected a mapping (host, port, token_file, allow_link_local)"
    )


def test_empty_api_section_is_fine(tmp_path: Path, base: dict[str, str]) -> None:
    config = write(tmp_path / "config.yaml", "api:\n  # port: 9000\n")
    assert load_settings(config=str(config), env=base).api_port == 8005


@pytest.mark.parametrize("text", ["", "# all defaults\n"])
def test_empty_config_file(text: str, tmp_path: Path, base: dict[str, str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(text)
    settings = load_settings(config=str(config), env=base)
    assert settings.max_concurrent_downloads == 3
    assert settings.config_file == config


def test_config_not_a_mapping(tmp_path: Path, base: dict[str, str]) -> None:
    config = write(tmp_path / "config.yaml", "- prune\n")
    assert str(error(config=str(config), env=base)) == (
        f"{config}:1:1: expected a mapping of settings"
    )


def test_config_invalid_yaml(tmp_path: Path, base: dict[str, str]) -> None:
    config = write(tmp_path / "config.yaml", "prune: true\napi: {port: 1\n")
    message = str(error(config=str(config), env=base))
    assert message.startswith(f"{config}:3:1: invalid YAML: ")


def test_config_duplicate_key(tmp_path: Path, base: dict[str, str]) -> None:
    config = write(tmp_path / "config.yaml", "prune: true\nprune: false\n")
    assert str(error(config=str(config), env=base)) == (
        f"{config}:2:1: prune: duplicate key (first defined at line 1)"
    )


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        (
            "download_timeout: abc",
            "1:1: download_timeout",
            "expected a duration like 30s, 15m or 1h, got 'abc'",
        ),
        ("download_timeout: 0", "1:1: download_timeout", "expected a duration greater than zero"),
        (
            "download_timeout: .nan",
            "1:1: download_timeout",
            "expected a duration greater than zero",
        ),
        (
            "download_timeout: .inf",
            "1:1: download_timeout",
            "expected a duration greater than zero",
        ),
        (
            "max_concurrent_downloads: 0",
            "1:1: max_concurrent_downloads",
            "expected a number of at least 1, got 0",
        ),
        (
            "max_concurrent_downloads: 2.5",
            "1:1: max_concurrent_downloads",
            "expected a whole number, got 2.5",
        ),
        (
            "max_concurrent_downloads: true",
            "1:1: max_concurrent_downloads",
            "expected a whole number",
        ),
        ("verify_checksums: maybe", "1:1: verify_checksums", "expected true or false, got 'maybe'"),
        ("prune: 2", "1:1: prune", "expected true or false, got 2"),
        ("api:\n  port: 70000", "2:3: api.port", "expected a port number up to 65535, got 70000"),
        ("api:\n  port: -1", "2:3: api.port", "expected a number of at least 1, got -1"),
        ("api:\n  host: ''", "2:3: api.host", "expected a string"),
        ("storage_dir: ''", "1:1: storage_dir", "expected a path"),
        ("storage_dir: [a, b]", "1:1: storage_dir", "expected a path"),
        (
            "schedule: {every: 5m}",
            "1:1: schedule",
            "expected {interval: 15m} or {cron: '*/15 * * * *'}",
        ),
        (
            "schedule: {interval: 5m, cron: '* * * * *'}",
            "1:1: schedule",
            "expected {interval: 15m}",
        ),
        (
            "schedule: {cron: '* * *'}",
            "1:1: schedule",
            "expected a five-field cron expression, got '* * *'",
        ),
        ("schedule: {cron: '99 * * * *'}", "1:1: schedule", "bad cron expression '99 * * * *': "),
        (
            "schedule: {interval: soon}",
            "1:1: schedule",
            "expected a duration like 30s, 15m or 1h, got 'soon'",
        ),
    ],
)
def test_bad_value_in_file(
    text: str, where: str, message: str, tmp_path: Path, base: dict[str, str]
) -> None:
    config = write(tmp_path / "config.yaml", "# settings\n" + text + "\n")
    line, rest = where.split(":", 1)
    got = str(error(config=str(config), env=base))
    assert got.startswith(f"{config}:{int(line) + 1}:{rest}: {message}"), got


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("DOWNLOAD_TIMEOUT", "abc", "expected a duration like 30s, 15m or 1h, got 'abc'"),
        ("DOWNLOAD_TIMEOUT", "-5", "expected a duration like 30s, 15m or 1h, got '-5'"),
        ("MAX_CONCURRENT_DOWNLOADS", "0", "expected a number of at least 1, got 0"),
        ("MAX_CONCURRENT_DOWNLOADS", "three", "expected a whole number, got 'three'"),
        ("MODEL_API_PORT", "70000", "expected a port number up to 65535, got 70000"),
        ("MODEL_API_PORT", "http", "expected a whole number, got 'http'"),
        ("VERIFY_CHECKSUMS", "maybe", "expected true or false, got 'maybe'"),
        ("MMD_PRUNE", "sometimes", "expected true or false, got 'sometimes'"),
        ("MMD_SCHEDULE", "cron: * * *", "expected a five-field cron expression, got '* * *'"),
        ("MMD_SCHEDULE", "cron: 61 * * * *", "bad cron expression '61 * * * *': "),
        ("MMD_SCHEDULE", "*/0 * * * *", "bad cron expression '*/0 * * * *': "),
        ("MMD_SCHEDULE", "sometimes", "expected a duration like 30s, 15m or 1h, got 'sometimes'"),
        ("MMD_SCHEDULE", "interval: 0s", "expected a duration greater than zero"),
    ],
)
def test_bad_value_in_env(name: str, text: str, message: str, base: dict[str, str]) -> None:
    got = str(error(env={**base, name: text}))
    assert got.startswith(f"environment variable {name}: {message}"), got
    assert "\n" not in got


@pytest.mark.parametrize(
    ("key", "flag", "message"),
    [
        (
            "max_concurrent_downloads",
            "0",
            "--max-concurrent-downloads: expected a number of at least 1",
        ),
        ("download_timeout", "abc", "--download-timeout: expected a duration like 30s"),
        ("api.port", 70000, "--api.port: expected a port number up to 65535, got 70000"),
    ],
)
def test_bad_value_in_flag(key: str, flag: Any, message: str, base: dict[str, str]) -> None:
    assert str(error(flags={key: flag}, env=base)).startswith(message)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("interval: 15m", Schedule(interval_s=900.0)),
        ("interval: '90s'", Schedule(interval_s=90.0)),
        ("15m", Schedule(interval_s=900.0)),
        ("1.5h", Schedule(interval_s=5400.0)),
        ("600", Schedule(interval_s=600.0)),
        ("1d", Schedule(interval_s=86400.0)),
        ("cron: */5 * * * *", Schedule(interval_s=None, cron="*/5 * * * *")),
        ('cron: "0 3 * * mon-fri"', Schedule(interval_s=None, cron="0 3 * * mon-fri")),
        ("*/15 * * * *", Schedule(interval_s=None, cron="*/15 * * * *")),
    ],
)
def test_schedule_forms_in_env(text: str, expected: Schedule, base: dict[str, str]) -> None:
    assert load_settings(env={**base, "MMD_SCHEDULE": text}).schedule == expected


@pytest.mark.parametrize(
    ("yaml_value", "expected"),
    [
        ("{interval: 15m}", Schedule(interval_s=900.0)),
        ("{interval: 30}", Schedule(interval_s=30.0)),
        ("{cron: '*/5 * * * *'}", Schedule(interval_s=None, cron="*/5 * * * *")),
        ("15m", Schedule(interval_s=900.0)),
        ("'interval: 2h'", Schedule(interval_s=7200.0)),
        ("'*/5 * * * *'", Schedule(interval_s=None, cron="*/5 * * * *")),
    ],
)
def test_schedule_forms_in_file(
    yaml_value: str, expected: Schedule, tmp_path: Path, base: dict[str, str]
) -> None:
    config = write(tmp_path / "config.yaml", f"schedule: {yaml_value}\n")
    assert load_settings(config=str(config), env=base).schedule == expected


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30.0), ("1.5h", 5400.0), ("250ms", 0.25), ("90", 90.0)]
)
def test_download_timeout_units(text: str, seconds: float, base: dict[str, str]) -> None:
    assert load_settings(env={**base, "DOWNLOAD_TIMEOUT": text}).download_timeout == seconds


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("yes", True), ("ON", True), ("true", True), ("0", False), ("off", False)],
)
def test_boolean_spellings(text: str, expected: bool, base: dict[str, str]) -> None:
    assert load_settings(env={**base, "VERIFY_CHECKSUMS": text}).verify_checksums is expected


# -- paths ---------------------------------------------------------------------------


def test_relative_paths_in_file_are_next_to_the_file(
    tmp_path: Path, base: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # not where the file is
    folder = tmp_path / "etc" / "mmd"
    config = write(
        folder / "config.yaml",
        """
        storage_dir: data
        manifest: models.yaml
        registry_file: data/reg.json
        hf_cache: ../cache
        """,
    )
    settings = load_settings(config=str(config), env=base)
    assert settings.storage_dir == folder / "data"
    assert settings.manifest == folder / "models.yaml"
    assert settings.registry_file == folder / "data" / "reg.json"
    assert settings.hf_cache == folder / ".." / "cache"


def test_relative_paths_from_env_and_flags_are_from_cwd(
    tmp_path: Path, base: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(
        flags={"manifest": "m.yaml"}, env={**base, "MODEL_STORAGE_DIR": "store"}
    )
    assert settings.storage_dir == tmp_path / "store"
    assert settings.manifest.absolute() == tmp_path / "m.yaml"


def test_tilde_in_paths(
    tmp_path: Path, base: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = load_settings(env={**base, "MODEL_STORAGE_DIR": "~/models"})
    assert settings.storage_dir == tmp_path / "models"


# -- secrets ---------------------------------------------------------------------------------

HF_SECRET = "hf_SuperSecretValue123"
API_SECRET = "api-SuperSecretValue456"


def test_hf_token_from_env(base: dict[str, str]) -> None:
    settings = load_settings(env={**base, "HF_TOKEN": f"  {HF_SECRET}\n"})
    assert settings.hf_token is not None
    assert settings.hf_token.reveal() == HF_SECRET


def test_hf_token_from_credentials_directory(tmp_path: Path, base: dict[str, str]) -> None:
    creds = tmp_path / "creds"
    write(creds / "hf_token", HF_SECRET + "\n")
    env = {**base, "CREDENTIALS_DIRECTORY": str(creds)}
    settings = load_settings(env=env)
    assert settings.hf_token is not None
    assert settings.hf_token.reveal() == HF_SECRET
    # HF_TOKEN, when set, wins over the credential.
    settings = load_settings(env={**env, "HF_TOKEN": "hf_other"})
    assert settings.hf_token is not None
    assert settings.hf_token.reveal() == "hf_other"


def test_credentials_directory_without_token(tmp_path: Path, base: dict[str, str]) -> None:
    (tmp_path / "creds").mkdir()
    settings = load_settings(env={**base, "CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})
    assert settings.hf_token is None
    assert settings.api_token is None


def test_secrets_never_shown(tmp_path: Path, base: dict[str, str]) -> None:
    settings = load_settings(env={**base, "HF_TOKEN": HF_SECRET, "MMD_API_TOKEN": API_SECRET})
    for text in (repr(settings), str(settings), repr(settings.hf_token), str(settings.api_token)):
        assert HF_SECRET not in text
        assert API_SECRET not in text
        assert "SuperSecret" not in text
    assert "hf_token=Secret('***')" in repr(settings)
    assert f"{settings.hf_token}" == "Secret('***')"


@pytest.mark.parametrize(
    "bad",
    [f"{HF_SECRET} extra", f"{HF_SECRET}\nX-Injected: 1", f"{HF_SECRET}\x00", "hf\tSuperSecret"],
)
def test_bad_hf_token_never_echoed(bad: str, tmp_path: Path, base: dict[str, str]) -> None:
    exc = error(env={**base, "HF_TOKEN": bad})
    assert str(exc) == "environment variable HF_TOKEN: invalid value"

    config = write(tmp_path / "config.yaml", "hf_token: " + repr(bad).replace("'", '"') + "\n")
    exc = error(config=str(config), env=base)
    assert str(exc).startswith(f"{config}:1:1: hf_token: a token cannot contain spaces")

    creds = tmp_path / "creds"
    write(creds / "hf_token", bad)
    exc = error(env={**base, "CREDENTIALS_DIRECTORY": str(creds)})
    assert str(exc).startswith("credential hf_token: a token cannot contain spaces")

    exc = error(flags={"hf_token": bad}, env=base)
    for shown in (str(exc), repr(exc), exc.message, str(exc.hint)):
        assert "SuperSecret" not in shown


def test_hf_token_of_wrong_type_in_file(tmp_path: Path, base: dict[str, str]) -> None:
    config = write(tmp_path / "config.yaml", "hf_token: [a, b]\n")
    assert str(error(config=str(config), env=base)) == f"{config}:1:1: hf_token: expected a string"


def test_api_token_from_env(base: dict[str, str]) -> None:
    settings = load_settings(env={**base, "MMD_API_TOKEN": API_SECRET})
    assert settings.api_token is not None
    assert settings.api_token.reveal() == API_SECRET


def test_api_token_from_token_file(tmp_path: Path, base: dict[str, str]) -> None:
    folder = tmp_path / "etc"
    write(folder / "api_token", API_SECRET + "\n")
    # Relative to the config file, like every path in it.
    config = write(folder / "config.yaml", "api:\n  token_file: api_token\n")
    settings = load_settings(config=str(config), env=base)
    assert settings.api_token is not None
    assert settings.api_token.reveal() == API_SECRET
    # The token itself in MMD_API_TOKEN wins over the file.
    settings = load_settings(config=str(config), env={**base, "MMD_API_TOKEN": "from-env"})
    assert settings.api_token is not None
    assert settings.api_token.reveal() == "from-env"


def test_api_token_from_credentials_directory(tmp_path: Path, base: dict[str, str]) -> None:
    write(tmp_path / "creds" / "api_token", API_SECRET + "\n")
    settings = load_settings(env={**base, "CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})
    assert settings.api_token is not None
    assert settings.api_token.reveal() == API_SECRET


def test_unreadable_token_file(tmp_path: Path, base: dict[str, str]) -> None:
    config = write(tmp_path / "config.yaml", f"api:\n  token_file: {tmp_path / 'missing'}\n")
    exc = error(config=str(config), env=base)
    assert (
        str(exc)
        == f"api.token_file {tmp_path / 'missing'}: cannot read (No such file or directory)"
    )


def test_empty_token_file_means_no_token(tmp_path: Path, base: dict[str, str]) -> None:
    (tmp_path / "tok").write_text("\n")
    config = write(tmp_path / "config.yaml", f"api:\n  token_file: {tmp_path / 'tok'}\n")
    assert load_settings(config=str(config), env=base).api_token is None


# -- through the command line ----------------------------------------------------------------


def test_cli_bad_config_file_exits_2(home: Home, mmd: Run) -> None:
    config = write(home.root / "config.yaml", "max_concurrent_downloads: 0\n")
    home.write_manifest("models: {}\n")
    result = mmd("validate")
    assert result.code == 2
    assert result.out == ""
    assert result.err == (
        f"mmd: {config}:1:1: max_concurrent_downloads: expected a number of at least 1, got 0\n"
    )


def test_cli_missing_config_exits_2(tmp_path: Path, mmd: Run) -> None:
    result = mmd("validate", "--config", str(tmp_path / "nope.yaml"))
    assert (result.code, result.err) == (
        2,
        f"mmd: config file {tmp_path / 'nope.yaml'} does not exist\n",
    )


def test_cli_bad_env_exits_2(mmd: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_API_PORT", "70000")
    result = mmd("validate")
    assert (result.code, result.err) == (
        2,
        "mmd: environment variable MODEL_API_PORT: expected a port number up to 65535, got 70000\n",
    )


def test_cli_bad_hf_token_not_echoed(mmd: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", f"{HF_SECRET} oops")
    result = mmd("validate")
    assert result.code == 2
    assert result.err == "mmd: environment variable HF_TOKEN: invalid value\n"
    assert "SuperSecret" not in result.out + result.err


def test_cli_flags_win(tmp_path: Path, home: Home, mmd: Run) -> None:
    manifest = write(tmp_path / "other.yaml", "models: {}\n")
    write(home.root / "config.yaml", f"manifest: {tmp_path / 'elsewhere.yaml'}\n")
    result = mmd("validate", "--manifest", str(manifest))
    assert (result.code, result.out) == (0, f"{manifest}: ok, 0 models\n")
