"""Where things live by default.

Order for every default: `$MMD_HOME` (one folder for everything: handy for tests and
containers), then systemd's `$STATE_DIRECTORY`/`$CONFIGURATION_DIRECTORY`, then the
platformdirs user folders.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import platformdirs

APP = "mmd"


def _first_dir(value: str | None) -> Path | None:
    # systemd passes a colon-separated list when a unit names several directories.
    if not value:
        return None
    return Path(value.split(":")[0])


def default_storage_dir(env: Mapping[str, str]) -> Path:
    if home := env.get("MMD_HOME"):
        return Path(home) / "models"
    if state := _first_dir(env.get("STATE_DIRECTORY")):
        return state / "models"
    return Path(platformdirs.user_data_dir(APP)) / "models"


def default_config_dir(env: Mapping[str, str]) -> Path:
    if home := env.get("MMD_HOME"):
        return Path(home)
    if conf := _first_dir(env.get("CONFIGURATION_DIRECTORY")):
        return conf
    return Path(platformdirs.user_config_dir(APP))


def default_manifest(env: Mapping[str, str]) -> Path:
    return default_config_dir(env) / "models.yaml"


def default_config_file(env: Mapping[str, str]) -> Path:
    return default_config_dir(env) / "config.yaml"


def credential(env: Mapping[str, str], name: str) -> str | None:
    """A secret from systemd's `LoadCredential=` folder, if the unit provides one."""
    folder = env.get("CREDENTIALS_DIRECTORY")
    if not folder:
        return None
    try:
        return (Path(folder) / name).read_text().strip() or None
    except OSError:
        return None


def environ() -> Mapping[str, str]:
    return os.environ
