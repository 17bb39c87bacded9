"""The manifest (SPEC §1): YAML → validated ModelSpecs, every error with file:line:col.

Choices where SPEC is silent (also in the README):
- `defaults:` keys apply to a model only when its source accepts them; a default that
  no installed source accepts is an error.
- A relative `path:` (local source) is relative to the manifest's folder.
- `state: absent` needs no source keys, and may name a source that is not installed.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mmd.errors import ManifestError, UnsafePathError
from mmd.globs import glob_problem
from mmd.hookspecs import KeyRule, Source
from mmd.storage import validate_relpath
from mmd.types import ModelSpec, ModelType, State
from mmd.yamlpos import Node, YamlError, load_file, load_text

DEFAULT_SOURCE = "huggingface"
COMMON_KEYS = ("source", "type", "state", "metadata")
TOP_KEYS = ("version", "defaults", "models")
MAX_ID = 200
_ID_CHARS = re.compile(r"[A-Za-z0-9._\-/]+")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass
class Manifest:
    path: str
    models: dict[str, ModelSpec] = field(default_factory=dict)


def id_problem(model_id: str) -> str | None:
    if not model_id or len(model_id) > MAX_ID:
        return f"a model id must be 1-{MAX_ID} characters"
    if not _ID_CHARS.fullmatch(model_id):
        return "a model id may only contain letters, digits, '.', '_', '-' and one '/'"
    parts = model_id.split("/")
    if len(parts) > 2:
        return "a model id may contain at most one '/'"
    if any(part in ("", ".", "..") for part in parts):
        return "a model id cannot have an empty, '.' or '..' part"
    return None


def _kind_problem(rule: KeyRule, value: Any) -> str | None:
    kind = rule.kind
    if kind == "str":
        return None if isinstance(value, str) and value.strip() else "expected a string"
    if kind == "url":
        if not isinstance(value, str):
            return "expected a URL string"
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return f"expected an http(s) URL, got {value!r}"
        return None
    if kind == "sha256":
        ok = isinstance(value, str) and _SHA256.match(value) is not None
        return None if ok else "expected 64 hexadecimal characters (a sha256 digest)"
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        return None if ok else "expected a whole number of at least 0"
    if kind == "bool":
        return None if isinstance(value, bool) else "expected true or false"
    if kind == "globs":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            return "expected a glob or a list of globs"
        for item in items:
            if problem := glob_problem(item):
                return problem
        return None
    if kind == "path":
        return None if isinstance(value, str) and value.strip() else "expected a path"
    if kind == "name":
        if not isinstance(value, str):
            return "expected a file name"
        try:
            validate_relpath(value)
        except UnsafePathError as exc:
            return str(exc)
        return None if "/" not in value else "expected a file name without '/'"
    return f"source declares an unknown key kind {kind!r}"


class _Checker:
    def __init__(self, sources: Mapping[str, Source], base: Path) -> None:
        self.sources = sources
        self.base = base
        self.problems: list[str] = []

    def check_models(self, root: Node) -> dict[str, ModelSpec]:
        if not isinstance(root.value, dict):
            self.problems.append(root.problem("expected a mapping with a `models:` key"))
            return {}
        top = root.value
        for key, node in top.items():
            if key not in TOP_KEYS:
                self.problems.append(node.problem(f"unknown key (allowed: {', '.join(TOP_KEYS)})"))
        version = top["version"].value if "version" in top else 1
        # `True == 1` in Python; `version: true` is not version 1.
        if type(version) is not int or version != 1:
            self.problems.append(top["version"].problem("expected 1 (the only manifest version)"))
        defaults = self._defaults(top.get("defaults"))
        models_node = top.get("models")
        if models_node is None or models_node.value is None:
            return {}
        if not isinstance(models_node.value, dict):
            self.problems.append(models_node.problem("expected a mapping of model id -> spec"))
            return {}
        models: dict[str, ModelSpec] = {}
        for model_id, node in models_node.value.items():
            spec = self._model(model_id, node, defaults)
            if spec is not None:
                models[model_id] = spec
        return models

    def _defaults(self, node: Node | None) -> dict[str, Node]:
        if node is None or node.value is None:
            return {}
        if not isinstance(node.value, dict):
            self.problems.append(node.problem("expected a mapping"))
            return {}
        accepted = set(COMMON_KEYS)
        for source in self.sources.values():
            accepted.update(source.keys)
        for key, child in node.value.items():
            if key not in accepted:
                self.problems.append(child.problem("no installed source accepts this key"))
        return dict(node.value)

    def _model(self, model_id: str, node: Node, defaults: dict[str, Node]) -> ModelSpec | None:
        before = len(self.problems)
        if problem := id_problem(model_id):
            self.problems.append(node.problem(problem))
        if node.value is None:
            node.value = {}
        if not isinstance(node.value, dict):
            self.problems.append(node.problem("expected a mapping of settings"))
            return None
        own: dict[str, Node] = node.value
        source_name = own["source"].value if "source" in own else None
        if source_name is None and "source" in defaults:
            source_name = defaults["source"].value
        source_name = source_name or DEFAULT_SOURCE
        state = self._state(own.get("state") or defaults.get("state"))
        source = self.sources.get(source_name) if isinstance(source_name, str) else None
        if source is None and state is State.PRESENT:
            where = own.get("source") or defaults.get("source") or node
            known = ", ".join(sorted(self.sources)) or "none"
            self.problems.append(
                where.problem(f"unknown source {source_name!r} (installed: {known})")
                if "source" in own or "source" in defaults
                else node.problem(
                    f"source defaults to {DEFAULT_SOURCE!r}, which is not installed "
                    f"(installed: {known}); set `source:`"
                )
            )
        allowed = set(COMMON_KEYS) | (set(source.keys) if source else set())
        merged = {k: v for k, v in defaults.items() if k in allowed}
        merged.update(own)
        for key, child in own.items():
            if key not in allowed and source is not None:
                self.problems.append(
                    child.problem(
                        f"unknown key for source {source_name!r} "
                        f"(allowed: {', '.join(sorted(allowed))})"
                    )
                )
        model_type = self._type(merged.get("type"))
        metadata = merged.get("metadata")
        if metadata is not None and not isinstance(metadata.value, dict):
            self.problems.append(metadata.problem("expected a mapping"))
        plain_metadata = self._metadata(metadata) if metadata is not None else {}
        options: dict[str, Any] = {}
        if source is not None:
            options = self._options(source, merged, node, state)
        if len(self.problems) > before:
            return None
        return ModelSpec(
            model_id=model_id,
            source=str(source_name),
            model_type=model_type,
            state=state,
            options=options,
            metadata=plain_metadata,
            where=node.where,
        )

    def _options(
        self, source: Source, merged: dict[str, Node], node: Node, state: State
    ) -> dict[str, Any]:
        options: dict[str, Any] = {}
        for key, rule in source.keys.items():
            child = merged.get(key)
            if child is None:
                if rule.required and state is State.PRESENT:
                    self.problems.append(
                        node.problem(f"missing required key `{key}` for source {source.name!r}")
                    )
                continue
            # Check the plain value: a list's `.value` holds Nodes, not strings.
            value = child.plain()
            if problem := _kind_problem(rule, value):
                self.problems.append(child.problem(problem))
                continue
            if rule.kind == "path":
                value = str((self.base / Path(value).expanduser()).absolute())
            options[key] = value
        if source.validate is not None and state is State.PRESENT:
            for key, message in source.validate(options):
                self.problems.append((merged.get(key) or node).problem(message))
        return options

    def _metadata(self, node: Node) -> Any:
        """The value as JSON can hold it: metadata goes into the registry and API as-is."""
        if isinstance(node.value, dict):
            return {k: self._metadata(v) for k, v in node.value.items()}
        if isinstance(node.value, list):
            return [self._metadata(v) for v in node.value]
        # YAML reads `released: 2024-01-01` as a date, which json.dumps refuses.
        if isinstance(node.value, dt.date):
            return node.value.isoformat()
        if isinstance(node.value, bytes):
            self.problems.append(node.problem("expected text, a number or true/false"))
        return node.value

    def _state(self, node: Node | None) -> State:
        if node is None:
            return State.PRESENT
        try:
            return State(node.value)
        except ValueError:
            self.problems.append(node.problem("expected `present` or `absent`"))
            return State.PRESENT

    def _type(self, node: Node | None) -> ModelType | None:
        if node is None:
            return None
        try:
            return ModelType(node.value)
        except ValueError:
            choices = ", ".join(t.value for t in ModelType)
            self.problems.append(node.problem(f"unknown model type (one of: {choices})"))
            return ModelType.OTHER


def parse_manifest(
    root: Node, path: str, sources: Mapping[str, Source], problems: list[str] | None = None
) -> Manifest:
    """Check a parsed manifest; `problems` already found while parsing are reported too."""
    checker = _Checker(sources, Path(path).parent if path else Path.cwd())
    models = checker.check_models(root) if root.value is not None else {}
    # dict.fromkeys: a bad `defaults:` value is found once per model using it; say it once.
    problems = list(dict.fromkeys([*(problems or []), *checker.problems]))
    if problems:
        raise ManifestError(problems)
    return Manifest(path=path, models=models)


def load_manifest(path: Path, sources: Mapping[str, Source]) -> Manifest:
    """Read and check a manifest file; raises ManifestError listing every problem."""
    # Duplicate keys are collected, not raised, so they come with every other problem.
    problems: list[str] = []
    try:
        root = load_file(path, problems)
    except YamlError as exc:
        raise ManifestError(exc.problems) from None
    return parse_manifest(root, str(path), sources, problems)


def loads_manifest(text: str, sources: Mapping[str, Source], name: str = "<string>") -> Manifest:
    problems: list[str] = []
    try:
        root = load_text(text, name, problems)
    except YamlError as exc:
        raise ManifestError(exc.problems) from None
    return parse_manifest(root, name, sources, problems)
