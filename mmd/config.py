"""Settings: defaults < config file < environment < command-line flags (SPEC §2)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmd import paths
from mmd.errors import ConfigError
from mmd.yamlpos import Node, YamlError, load_file


class Secret:
    """A string that never shows itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Schedule:
    interval_s: float | None = 900.0
    cron: str | None = None

    def describe(self) -> str:
        return f"cron {self.cron!r}" if self.cron else f"every {self.interval_s:g}s"


@dataclass(frozen=True)
class Settings:
    storage_dir: Path
    registry_file: Path
    manifest: Path
    hf_cache: Path
    hf_token: Secret | None = None
    github_token: Secret | None = None
    max_concurrent_downloads: int = 3
    download_timeout: float = 3600.0
    verify_checksums: bool = True
    schedule: Schedule = field(default_factory=Schedule)
    prune: bool = False
    api_host: str = "127.0.0.1"
    api_port: int = 8005
    api_token: Secret | None = None
    api_allow_link_local: bool = False
    retry_initial: float = 60.0
    retry_max: float = 3600.0
    rescan_interval: float = 300.0
    config_file: Path | None = None

    @property
    def cache_dir(self) -> Path:
        """Staging and partial downloads: always inside storage, so promotion is a rename."""
        return self.storage_dir / "cache"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 15m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"expected a duration like 30s, 15m or 1h, got {value!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    # YAML reads `.inf`/`.nan` as floats; NaN compares false to everything.
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("expected a duration greater than zero")
    return seconds


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def parse_positive_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a whole number")
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise ValueError(f"expected a number of at least 1, got {number}")
    return number


def parse_port(value: Any) -> int:
    """0 means any free port (the daemon announces the one it got in its lock file)."""
    if str(value).strip() == "0" and not isinstance(value, bool):
        return 0
    port = parse_positive_int(value)
    if port > 65535:
        raise ValueError(f"expected a port number up to 65535, got {port}")
    return port


def parse_schedule(value: Any) -> Schedule:
    """`{interval: 15m}`, `{cron: "*/15 * * * *"}`, or the env forms `interval: 15m`, `15m`."""
    if isinstance(value, str):
        text = value.strip()
        key, sep, rest = text.partition(":")
        if sep and key.strip() in {"interval", "cron"}:
            value = {key.strip(): rest.strip().strip("'\"")}
        elif len(text.split()) == 5:
            value = {"cron": text}
        else:
            value = {"interval": text}
    if not isinstance(value, dict) or len(value) != 1 or not value.keys() <= {"interval", "cron"}:
        raise ValueError("expected {interval: 15m} or {cron: '*/15 * * * *'}")
    if "cron" in value:
        cron = str(value["cron"]).strip()
        if len(cron.split()) != 5:
            raise ValueError(f"expected a five-field cron expression, got {cron!r}")
        # Check it as the scheduler will read it, so `mmd run` fails at start, not later.
        from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]

        try:
            CronTrigger.from_crontab(cron, timezone="UTC")
        except ValueError as exc:
            raise ValueError(f"bad cron expression {cron!r}: {exc}") from None
        return Schedule(interval_s=None, cron=cron)
    return Schedule(interval_s=parse_duration(value["interval"]))


def parse_path(value: Any) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a path")
    return Path(value).expanduser()


def parse_str(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a string")
    return value.strip()


def parse_token(value: Any) -> str:
    """A secret sent in an HTTP header. The message never contains the value."""
    token = parse_str(value)
    # Whitespace or control characters inside would break (or inject into) the header,
    # and HTTP libraries quote the whole header value in their exception text.
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in token):
        raise ValueError("a token cannot contain spaces or control characters")
    return token


@dataclass(frozen=True)
class _Key:
    env: str | None
    parse: Callable[[Any], Any]


# Config-file key -> (environment variable, parser). Order matters for nothing.
KEYS: dict[str, _Key] = {
    "storage_dir": _Key("MODEL_STORAGE_DIR", parse_path),
    "registry_file": _Key("MODEL_REGISTRY_FILE", parse_path),
    "manifest": _Key("MMD_MANIFEST", parse_path),
    "hf_token": _Key("HF_TOKEN", parse_token),
    "github_token": _Key("GITHUB_TOKEN", parse_token),
    "hf_cache": _Key("HF_HUB_CACHE", parse_path),
    "max_concurrent_downloads": _Key("MAX_CONCURRENT_DOWNLOADS", parse_positive_int),
    "download_timeout": _Key("DOWNLOAD_TIMEOUT", parse_duration),
    "verify_checksums": _Key("VERIFY_CHECKSUMS", parse_bool),
    "schedule": _Key("MMD_SCHEDULE", parse_schedule),
    "prune": _Key("MMD_PRUNE", parse_bool),
    "api.host": _Key("MODEL_API_HOST", parse_str),
    "api.port": _Key("MODEL_API_PORT", parse_port),
    "api.token_file": _Key(None, parse_path),
    "api.allow_link_local": _Key("MMD_API_ALLOW_LINK_LOCAL", parse_bool),
    "retry_initial": _Key("MMD_RETRY_INITIAL", parse_duration),
    "retry_max": _Key("MMD_RETRY_MAX", parse_duration),
    "rescan_interval": _Key("MMD_RESCAN_INTERVAL", parse_duration),
}


_SECRET_KEYS = ("hf_token", "github_token")


def find_config_file(explicit: str | None, env: Mapping[str, str]) -> tuple[Path | None, bool]:
    """The config file to read, and whether the user named it (then it must exist)."""
    if explicit:
        return Path(explicit).expanduser(), True
    if named := env.get("MMD_CONFIG"):
        return Path(named).expanduser(), True
    candidate = paths.default_config_file(env)
    return (candidate if candidate.is_file() else None), False


def _flatten_file(root: Node) -> dict[str, tuple[Any, Node]]:
    if root.value is None:
        return {}
    if not isinstance(root.value, dict):
        raise ConfigError(root.problem("expected a mapping of settings"))
    flat: dict[str, tuple[Any, Node]] = {}
    problems: list[str] = []
    for key, node in root.value.items():
        if key == "api" and isinstance(node.value, dict):
            for sub, subnode in node.value.items():
                flat[f"api.{sub}"] = (subnode.plain(), subnode)
        elif key == "api":
            # `api:` with every sub-key commented out is empty, not an unknown setting.
            if node.value is not None:
                problems.append(
                    node.problem("expected a mapping (host, port, token_file, allow_link_local)")
                )
        else:
            flat[key] = (node.plain(), node)
    for key, (_, node) in flat.items():
        if key not in KEYS:
            known = ", ".join(sorted(KEYS))
            problems.append(node.problem(f"unknown setting (known: {known})"))
    if problems:
        raise ConfigError("\n".join(problems))
    return flat


def load_settings(
    config: str | None = None,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings; raises ConfigError (exit 2) naming the file, key or variable."""
    env = paths.environ() if env is None else env
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    config_file, must_exist = find_config_file(config, env)
    raw: dict[str, Any] = {}
    if config_file is not None:
        if must_exist and not config_file.is_file():
            raise ConfigError(f"config file {config_file} does not exist")
        try:
            for key, (value, node) in _flatten_file(load_file(config_file)).items():
                try:
                    raw[key] = KEYS[key].parse(value)
                except ValueError as exc:
                    raise ConfigError(node.problem(str(exc))) from None
                # A relative path in the file means next to the file, as in the manifest:
                # the daemon's working directory is `/` under systemd.
                if isinstance(raw[key], Path) and not raw[key].is_absolute():
                    raw[key] = config_file.absolute().parent / raw[key]
        except YamlError as exc:
            raise ConfigError("\n".join(exc.problems)) from None
    for key, spec in KEYS.items():
        if spec.env and env.get(spec.env, "").strip():
            try:
                raw[key] = spec.parse(env[spec.env])
            except ValueError as exc:
                # Never echo the value of a secret variable back.
                reason = "invalid value" if key in _SECRET_KEYS else str(exc)
                raise ConfigError(f"environment variable {spec.env}: {reason}") from None
    for key, value in flags.items():
        try:
            raw[key] = KEYS[key].parse(value)
        except ValueError as exc:
            raise ConfigError(f"--{key.replace('_', '-')}: {exc}") from None
    return _build(raw, env, config_file)


def _build(raw: dict[str, Any], env: Mapping[str, str], config_file: Path | None) -> Settings:
    storage = Path(raw.get("storage_dir") or paths.default_storage_dir(env)).absolute()
    hf_token = raw.get("hf_token")
    if hf_token is None and (loaded := paths.credential(env, "hf_token")):
        try:
            hf_token = parse_token(loaded)
        except ValueError as exc:
            raise ConfigError(f"credential hf_token: {exc}") from None
    github_token = raw.get("github_token")
    if github_token is None and (loaded := paths.credential(env, "github_token")):
        try:
            github_token = parse_token(loaded)
        except ValueError as exc:
            raise ConfigError(f"credential github_token: {exc}") from None
    api_token = env.get("MMD_API_TOKEN", "").strip() or None
    if api_token is None and "api.token_file" in raw:
        try:
            api_token = raw["api.token_file"].read_text().strip() or None
        except OSError as exc:
            raise ConfigError(
                f"api.token_file {raw['api.token_file']}: cannot read ({exc.strerror})"
            ) from None
    if api_token is None:
        api_token = paths.credential(env, "api_token")
    return Settings(
        storage_dir=storage,
        registry_file=Path(raw.get("registry_file") or storage / "model_registry.json").absolute(),
        manifest=Path(raw.get("manifest") or paths.default_manifest(env)),
        hf_cache=Path(raw.get("hf_cache") or storage / "cache"),
        hf_token=Secret(hf_token) if hf_token else None,
        github_token=Secret(github_token) if github_token else None,
        max_concurrent_downloads=raw.get("max_concurrent_downloads", 3),
        download_timeout=raw.get("download_timeout", 3600.0),
        verify_checksums=raw.get("verify_checksums", True),
        schedule=raw.get("schedule", Schedule()),
        prune=raw.get("prune", False),
        api_host=raw.get("api.host", "127.0.0.1"),
        api_port=raw.get("api.port", 8005),
        api_token=Secret(api_token) if api_token else None,
        api_allow_link_local=raw.get("api.allow_link_local", False),
        retry_initial=raw.get("retry_initial", 60.0),
        retry_max=max(raw.get("retry_max", 3600.0), raw.get("retry_initial", 60.0)),
        rescan_interval=raw.get("rescan_interval", 300.0),
        config_file=config_file,
    )
