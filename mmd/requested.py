"""`<storage_dir>/requested.yaml`: models asked for through `POST /models/download`.

The file has the manifest's own format (`models: {id: spec}`), so it is checked by the
same code and with the same messages. The daemon merges it under the manifest: an id the
manifest declares is the manifest's. A `DELETE` turns the entry into `state: absent`
until a pass has removed the model, then drops it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from mmd.errors import ManifestError, MmdError
from mmd.hookspecs import Source
from mmd.manifest import Manifest, load_manifest, loads_manifest
from mmd.registry import atomic_write

log = logging.getLogger(__name__)

NAME = "requested.yaml"


class RequestedModels:
    def __init__(self, storage_root: Path) -> None:
        self.path = storage_root / NAME
        self.specs: dict[str, dict[str, Any]] = {}

    def load(self) -> None:
        try:
            data = yaml.safe_load(self.path.read_text()) or {}
        except FileNotFoundError:
            return
        except (OSError, yaml.YAMLError) as exc:
            log.error("%s unreadable, ignoring API requests in it: %s", self.path, exc)
            return
        models = data.get("models") if isinstance(data, dict) else None
        self.specs = {str(k): dict(v) for k, v in (models or {}).items() if isinstance(v, dict)}

    def save(self) -> None:
        text = "# Written by mmd: models requested through the HTTP API.\n" + yaml.safe_dump(
            {"models": self.specs}, sort_keys=True, allow_unicode=True
        )
        atomic_write(self.path, text.encode())

    def manifest(self, sources: Mapping[str, Source]) -> Manifest:
        """The requests as a checked manifest; one bad entry must not hide the others."""
        if not self.path.is_file():
            return Manifest(path=str(self.path))
        try:
            return load_manifest(self.path, sources)
        except ManifestError as exc:
            log.error("%s: %s", self.path, "; ".join(exc.problems))
        except MmdError as exc:
            log.error("%s: %s", self.path, exc)
        good = {}
        for model_id, spec in self.specs.items():
            try:
                good.update(check_request(model_id, spec, sources).models)
            except MmdError:
                continue
        return Manifest(path=str(self.path), models=good)


def check_request(
    model_id: Any, spec: Mapping[str, Any], sources: Mapping[str, Source]
) -> Manifest:
    """Validate one requested model exactly as a manifest entry; raises ManifestError."""
    if not isinstance(model_id, str):
        raise ManifestError(["model_id: expected a string"])
    text = yaml.safe_dump({"models": {model_id: dict(spec)}}, sort_keys=False)
    return loads_manifest(text, sources, name="request")
