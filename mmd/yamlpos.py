"""Safe YAML with positions: every value keeps its file:line:col, duplicate keys are errors.

PyYAML's composer already records marks on nodes; we walk its node tree instead of
constructing plain objects so that validation messages can point at the exact spot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MAX_FILE_BYTES = 1 << 20
# Aliases share nodes, so a tiny file can expand to billions of values when walked.
MAX_NODES = 200_000


class YamlError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class Node:
    """A YAML value with its position. `value` is dict[str, Node], list[Node] or a scalar."""

    value: Any
    file: str
    line: int  # 1-based
    column: int  # 1-based
    key_path: str  # "models.foo.revision"

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"

    def problem(self, message: str) -> str:
        label = f"{self.key_path}: " if self.key_path else ""
        return f"{self.where}: {label}{message}"

    def plain(self) -> Any:
        """The value without positions (for metadata copied as-is)."""
        if isinstance(self.value, dict):
            return {k: v.plain() for k, v in self.value.items()}
        if isinstance(self.value, list):
            return [v.plain() for v in self.value]
        return self.value


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class _Walker:
    def __init__(self, loader: yaml.SafeLoader, file: str) -> None:
        self.loader = loader
        self.file = file
        self.count = 0
        self.problems: list[str] = []
        # id(mapping node) -> how many of its pairs came from `<<:` merge keys. An
        # aliased mapping is walked again after flatten_mapping() already rewrote it.
        self.merged: dict[int, int] = {}
        # Collections being walked now: meeting one again means it contains itself.
        self.open: set[int] = set()

    def problem(self, node: yaml.Node, path: str, message: str) -> None:
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        label = f"{path}: " if path else ""
        self.problems.append(f"{self.file}:{line}:{col}: {label}{message}")

    def construct(self, node: yaml.Node, path: str) -> Any:
        try:
            return self.loader.construct_object(node)
        except (ValueError, OverflowError) as exc:
            # PyYAML lets these escape: `2024-02-30` (no such date), a 5000-digit int.
            # Forget the half-built node, or an alias to it reads as "recursive".
            self.loader.recursive_objects.pop(node, None)
            self.problem(node, path, f"cannot read value: {exc}")
            return None

    def walk(self, node: yaml.Node, path: str) -> Node:
        self.count += 1
        if self.count > MAX_NODES:
            raise YamlError([f"{self.file}: too many YAML values (alias expansion?); refusing"])
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        if isinstance(node, yaml.CollectionNode):
            if id(node) in self.open:
                # Found here rather than by exhausting the stack: a RecursionError is slow
                # and leaves no position to report.
                label = f"{path}: " if path else ""
                raise YamlError(
                    [f"{self.file}:{line}:{col}: {label}recursive alias (a value inside itself)"]
                )
            self.open.add(id(node))
            try:
                return self._collection(node, path, line, col)
            finally:
                self.open.discard(id(node))
        return Node(self.construct(node, path), self.file, line, col, path)

    def _collection(self, node: yaml.CollectionNode, path: str, line: int, col: int) -> Node:
        if isinstance(node, yaml.MappingNode):
            if id(node) not in self.merged:
                own = sum(1 for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge")
                self.loader.flatten_mapping(node)
                self.merged[id(node)] = len(node.value) - own
            n_merged = self.merged[id(node)]
            out: dict[str, Node] = {}
            # Keys that came from `<<:`: an explicit key overrides them, as YAML says.
            overridable: set[str] = set()
            for index, (key_node, value_node) in enumerate(node.value):
                kline, kcol = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                if not isinstance(key_node, yaml.ScalarNode):
                    # Never construct or str() a collection key: through aliases a few
                    # bytes of it expand to billions of values.
                    self.problem(
                        key_node, path, "a key must be a plain value, not a list or mapping"
                    )
                    continue
                key = self.construct(key_node, path)
                if not isinstance(key, str):
                    key = str(key)
                child_path = _join(path, key)
                if key in out and key not in overridable:
                    first = out[key]
                    self.problems.append(
                        f"{self.file}:{kline}:{kcol}: {child_path}: duplicate key "
                        f"(first defined at line {first.line})"
                    )
                    continue
                child = self.walk(value_node, child_path)
                # Point errors about a key at the key itself, where an editor would look.
                child.line, child.column = kline, kcol
                out[key] = child
                if index < n_merged:
                    overridable.add(key)
                else:
                    overridable.discard(key)
            return Node(out, self.file, line, col, path)
        items = [self.walk(item, _join(path, i)) for i, item in enumerate(node.value)]
        return Node(items, self.file, line, col, path)


def load_text(text: str, file: str, problems: list[str] | None = None) -> Node:
    """Parse YAML text into Nodes; raises YamlError listing every problem.

    With `problems` given, problems that still leave a usable tree (duplicate keys,
    unreadable values) are appended to it instead, so a caller can report them together
    with its own checks rather than one batch at a time.
    """
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return Node(None, file, 1, 1, "")
        walker = _Walker(loader, file)
        result = walker.walk(root, "")
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else file
        message = exc.problem or exc.context
        if exc.context and message and message.startswith("but "):
            # "but found another document" makes sense only after its context.
            message = f"{exc.context}, {message}"
        raise YamlError([f"{where}: invalid YAML: {message}"]) from None
    except yaml.YAMLError as exc:
        raise YamlError([f"{file}: invalid YAML: {exc}"]) from None
    except RecursionError:
        raise YamlError([f"{file}: YAML nested too deeply; refusing"]) from None
    finally:
        loader.dispose()
    if walker.problems:
        if problems is None:
            raise YamlError(walker.problems)
        problems.extend(walker.problems)
    return result


def load_file(path: Path, problems: list[str] | None = None) -> Node:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise YamlError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise YamlError([f"{path}: file is larger than {MAX_FILE_BYTES} bytes; refusing to parse"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None
    return load_text(text, str(path), problems)
