"""The plugin guide tells the truth about the plugin contract (as datasette's
`test_plugin_hooks_are_documented` does): every hook in mmd/hookspecs.py is in
plugins/README.md with its exact signature, every field and Sink method that crosses the
plugin boundary is documented with its type, and every hook is exercised by a test."""

from __future__ import annotations

import dataclasses
import enum
import importlib
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mmd import errors, hookspecs
from mmd.hookspecs import KeyRule, Sink, Source, SourceContext
from mmd.plugins import GROUP
from mmd.types import ModelSpec, Release, RemoteFile

TESTS = Path(__file__).resolve().parent
GUIDE_PATH = TESTS.parent / "plugins" / "README.md"
GUIDE = GUIDE_PATH.read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", GUIDE, re.S)

HOOKS = sorted(name for name, obj in vars(hookspecs).items() if hasattr(obj, f"{GROUP}_spec"))
DATACLASSES = [Source, KeyRule, SourceContext, ModelSpec, RemoteFile, Release]
ERRORS = [errors.SourceError, errors.OfflineError, errors.DownloadError, errors.ChecksumError]


class _Raw(str):
    """An annotation shown as written (`bytes`, not `'bytes'`): hookspecs.py and types.py
    use `from __future__ import annotations`, so every annotation is its source text."""

    def __repr__(self) -> str:
        return str(self)


def _shown(annotation: Any, keep: bool) -> Any:
    if not keep or annotation is inspect.Parameter.empty:
        return inspect.Parameter.empty
    return _Raw(annotation) if isinstance(annotation, str) else annotation


def signature_text(func: Callable[..., Any], *, annotations: bool = True) -> str:
    """`name(params) -> return` as the source spells it, without `self`.

    `annotations=False` leaves out the parameters' annotations (not the return's).
    """
    sig = inspect.signature(func)
    params = [
        p.replace(annotation=_shown(p.annotation, annotations))
        for p in sig.parameters.values()
        if p.name != "self"
    ]
    ret = _shown(sig.return_annotation, not inspect.isclass(func))  # a class: its __init__
    return f"{func.__name__}{sig.replace(parameters=params, return_annotation=ret)}"


def section(title: str) -> str:
    """The guide's text under the heading "### `title`" (or "### title"), up to the next."""
    heading = rf"^### (`?){re.escape(title)}\1\n"
    match = re.search(rf"{heading}(.*?)(?=^#{{2,3}} |\Z)", GUIDE, re.S | re.M)
    assert match, f"plugins/README.md has no section ### `{title}`"
    return match.group(2)


def table(text: str) -> dict[str, list[str]]:
    """Rows of the Markdown tables in `text`, by their first cell (without backticks)."""
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows[cells[0].strip("`")] = cells[1:]
    return rows


def default_text(field: dataclasses.Field[Any]) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "required"
    if isinstance(value, enum.Enum):
        return f"`{type(value).__name__}.{value.name}`"
    return f"`{value!r}`"


def test_the_hooks_are_found() -> None:
    assert "mmd_sources" in HOOKS  # the introspection finds the hooks at all


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_its_signature(hook: str) -> None:
    spec = f"@hookspec\ndef {signature_text(getattr(hookspecs, hook))}:"
    assert spec in section(hook), f"plugins/README.md: section `{hook}` lacks:\n{spec}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_documents_its_arguments_in_hookspecs(hook: str) -> None:
    func = getattr(hookspecs, hook)
    doc = inspect.getdoc(func) or ""
    assert doc, f"{hook} has no docstring"
    for name in inspect.signature(func).parameters:
        assert f":param {name}:" in doc, f"{hook}: document the argument {name!r}"
    assert ":return:" in doc


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook: str) -> None:
    # Implemented by a plugin some test loads (datasette greps its test plugins the same
    # way): an `@hookimpl`-decorated function of that name, not only the text.
    pattern = re.compile(rf"@hookimpl[^\n]*\n(?:\s*@[^\n]*\n)*\s*def {hook}\(")
    users = [
        path.name
        for path in TESTS.rglob("*.py")
        if path != Path(__file__).resolve() and pattern.search(path.read_text())
    ]
    assert users, f"no test implements the hook {hook}"


def test_the_callable_aliases_are_documented_as_defined() -> None:
    source = Path(hookspecs.__file__).read_text()
    aliases = re.findall(r"^\w+Fn = .+$", source, re.M)
    assert len(aliases) == 3
    for line in aliases:
        assert any(line in block for block in PYTHON_BLOCKS), f"document `{line}`"


@pytest.mark.parametrize("cls", DATACLASSES, ids=lambda c: c.__name__)
def test_every_field_is_documented_with_type_and_default(cls: type) -> None:
    rows = table(section(cls.__name__))
    fields = dataclasses.fields(cls)
    for field in fields:
        assert field.name in rows, f"{cls.__name__}.{field.name} is not documented"
        type_cell, default_cell = rows[field.name][:2]
        assert type_cell == f"`{field.type}`", f"{cls.__name__}.{field.name}: type"
        assert default_cell == default_text(field), f"{cls.__name__}.{field.name}: default"
    assert set(rows) == {f.name for f in fields}, f"{cls.__name__}: stale rows"


def test_every_sink_member_is_documented_with_its_signature() -> None:
    expected = set()
    for name, member in vars(Sink).items():
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            assert member.fget is not None
            expected.add(f"{name}: {member.fget.__annotations__['return']}")
        else:
            expected.add(signature_text(member))
    assert {"offset: int", "existing() -> Iterator[bytes]"} <= expected
    assert set(table(section("Sink"))) == expected


def test_the_errors_are_documented_with_their_signatures() -> None:
    rows = table(section("Errors"))
    assert set(rows) == {signature_text(cls, annotations=False) for cls in ERRORS}


def test_the_guides_imports_exist() -> None:
    """Every `from mmd... import ...` in the guide's code names something that exists."""
    found = 0
    for block in PYTHON_BLOCKS:
        for module, names in re.findall(r"^from (mmd[\w.]*) import (.+)$", block, re.M):
            imported = importlib.import_module(module)
            for name in names.split(","):
                assert hasattr(imported, name.strip()), f"{module} has no {name.strip()}"
                found += 1
    assert found >= 5


def test_the_guides_packaging_uses_the_entry_point_group() -> None:
    assert f"[project.entry-points.{GROUP}]" in GUIDE
    assert "plugins/mmd-s3" in GUIDE


def test_the_kit_is_documented() -> None:
    testing = importlib.import_module("mmd.testing")
    for name in testing.__all__:
        assert f"`{name}" in GUIDE, f"mmd.testing.{name} is not in plugins/README.md"
