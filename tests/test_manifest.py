"""The manifest (SPEC §1): what `mmd validate` tells a user, with file:line:col.

Sources are taken from the installed plugins, minus `huggingface`, so that these tests
say the same thing whether or not that plugin is installed yet.
"""

from __future__ import annotations

import re
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mmd.errors import ManifestError
from mmd.hookspecs import Source
from mmd.manifest import Manifest, load_manifest, loads_manifest
from mmd.plugins import load_plugins
from mmd.types import ModelType, State
from tests.conftest import ROOT, Home, Result

Run = Callable[..., Result]

SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
NAME = "m.yaml"


@pytest.fixture(scope="module")
def sources() -> dict[str, Source]:
    found = dict(load_plugins().sources)
    found.pop("huggingface", None)
    assert {"http", "local"} <= set(found)
    return found


def _text(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def parse(text: str, sources: dict[str, Source]) -> Manifest:
    return loads_manifest(_text(text), sources, NAME)


def problems(text: str, sources: dict[str, Source]) -> list[str]:
    with pytest.raises(ManifestError) as info:
        parse(text, sources)
    assert info.value.problems, "a ManifestError must list its problems"
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def one(text: str, sources: dict[str, Source]) -> str:
    found = problems(text, sources)
    assert len(found) == 1, found
    return found[0]


def validate(mmd: Run, path: Path) -> Result:
    return mmd("validate", str(path))


def write(tmp_path: Path, text: str, name: str = "models.yaml") -> Path:
    path = tmp_path / name
    path.write_text(_text(text))
    return path


# -- a good manifest ------------------------------------------------------------------

GOOD = f"""
version: 1
defaults:
  include: ["*.json", "*.safetensors"]
models:
  tiny-gguf:
    source: http
    url: https://example.com/files/tiny.gguf
    sha256: {SHA}
    size: 1234
    type: text-generation
    metadata:
      owner: team-a
      tags: [small, test]
  team/finetune-v3:
    source: local
    path: weights/finetune
    exclude: "*.bin"
  retired/model:
    state: absent
"""


def test_valid_manifest_validates(tmp_path: Path, mmd: Run) -> None:
    path = write(tmp_path, GOOD)
    result = validate(mmd, path)
    assert (result.code, result.err) == (0, "")
    assert result.out == f"{path}: ok, 3 models\n"


def test_valid_manifest_content(tmp_path: Path, sources: dict[str, Source]) -> None:
    path = write(tmp_path, GOOD)
    manifest = load_manifest(path, sources)
    assert manifest.path == str(path)
    assert list(manifest.models) == ["tiny-gguf", "team/finetune-v3", "retired/model"]

    tiny = manifest.models["tiny-gguf"]
    assert tiny.source == "http"
    assert tiny.model_type is ModelType.TEXT_GENERATION
    assert tiny.state is State.PRESENT
    # `include` is a default that http does not accept: it is simply not applied.
    assert dict(tiny.options) == {
        "url": "https://example.com/files/tiny.gguf",
        "sha256": SHA,
        "size": 1234,
    }
    assert tiny.metadata == {"owner": "team-a", "tags": ["small", "test"]}
    assert tiny.where == f"{path}:5:3"

    local = manifest.models["team/finetune-v3"]
    assert local.source == "local"
    assert local.model_type is None  # not declared: the registry says "other" (or the hub's tag)
    assert local.options["include"] == ["*.json", "*.safetensors"]  # from defaults
    assert local.options["exclude"] == "*.bin"
    # A relative path is relative to the manifest's folder, not to the cwd.
    assert local.options["path"] == str(tmp_path / "weights" / "finetune")
    assert local.metadata == {}

    retired = manifest.models["retired/model"]
    assert retired.state is State.ABSENT
    assert retired.options == {}


def test_own_key_overrides_default(sources: dict[str, Source]) -> None:
    manifest = parse(
        """
        defaults:
          include: "*.json"
          type: embedding
        models:
          a: {source: local, path: /srv/a, include: ["*.gguf"]}
          b: {source: local, path: /srv/b, type: other}
        """,
        sources,
    )
    assert manifest.models["a"].options["include"] == ["*.gguf"]
    assert manifest.models["a"].model_type is ModelType.EMBEDDING
    assert manifest.models["b"].options["include"] == "*.json"
    assert manifest.models["b"].model_type is ModelType.OTHER


def test_default_source_applies(sources: dict[str, Source]) -> None:
    manifest = parse(
        """
        defaults:
          source: http
        models:
          a: {url: "https://e.com/a.bin"}
        """,
        sources,
    )
    assert manifest.models["a"].source == "http"


def test_absolute_local_path_kept(sources: dict[str, Source]) -> None:
    manifest = parse("models:\n  a: {source: local, path: /mnt/shared/a}\n", sources)
    assert manifest.models["a"].options["path"] == "/mnt/shared/a"


def test_yaml_merge_keys_may_be_overridden(sources: dict[str, Source]) -> None:
    # YAML's `<<:` lets an explicit key override a merged one: not a duplicate.
    manifest = parse(
        """
        models:
          a: &base
            source: http
            url: https://e.com/a.bin
          b:
            <<: *base
            url: https://e.com/b.bin
        """,
        sources,
    )
    assert manifest.models["b"].options["url"] == "https://e.com/b.bin"
    assert manifest.models["a"].options["url"] == "https://e.com/a.bin"


def test_yaml_merge_keys_then_duplicate_is_error(sources: dict[str, Source]) -> None:
    problem = one(
        """
        models:
          a: &base {source: http, url: "https://e.com/a.bin"}
          b:
            <<: *base
            url: https://e.com/b.bin
            url: https://e.com/c.bin
        """,
        sources,
    )
    assert problem == f"{NAME}:6:5: models.b.url: duplicate key (first defined at line 5)"


# -- duplicates ----------------------------------------------------------------------


def test_duplicate_model_id_names_both_lines(tmp_path: Path, mmd: Run) -> None:
    path = write(
        tmp_path,
        """
        models:
          tiny:
            source: http
            url: https://example.com/a.gguf
          tiny:
            source: http
            url: https://example.com/b.gguf
        """,
    )
    result = validate(mmd, path)
    assert result.code == 1
    assert result.out == ""
    assert result.err == f"{path}:5:3: models.tiny: duplicate key (first defined at line 2)\n"


def test_duplicate_key_in_model_spec(sources: dict[str, Source]) -> None:
    problem = one(
        """
        models:
          tiny:
            source: http
            url: https://example.com/a.gguf
            url: https://example.com/b.gguf
        """,
        sources,
    )
    assert problem == f"{NAME}:5:5: models.tiny.url: duplicate key (first defined at line 4)"


# -- unknown keys and sources --------------------------------------------------------


def test_unknown_top_level_key(tmp_path: Path, mmd: Run) -> None:
    path = write(tmp_path, "version: 1\nmodles: {}\n")
    result = validate(mmd, path)
    assert result.code == 1
    assert result.err == (f"{path}:2:1: modles: unknown key (allowed: version, defaults, models)\n")


def test_unknown_key_in_model_lists_allowed(tmp_path: Path, mmd: Run) -> None:
    path = write(
        tmp_path,
        """
        models:
          tiny:
            source: http
            url: https://example.com/a.gguf
            revision: main
        """,
    )
    result = validate(mmd, path)
    assert result.code == 1
    assert result.err == (
        f"{path}:5:5: models.tiny.revision: unknown key for source 'http' (allowed: "
        "filename, metadata, sha256, size, source, state, type, url)\n"
    )


def test_unknown_key_in_local_model(sources: dict[str, Source]) -> None:
    problem = one("models:\n  a: {source: local, path: /x, url: https://e.com/}\n", sources)
    assert problem == (
        f"{NAME}:2:32: models.a.url: unknown key for source 'local' "
        "(allowed: exclude, include, metadata, path, source, state, type)"
    )


def test_unknown_source_lists_installed(tmp_path: Path, mmd: Run) -> None:
    path = write(tmp_path, "models:\n  a:\n    source: ftp\n    url: ftp://e.com/a\n")
    result = validate(mmd, path)
    installed = ", ".join(sorted(load_plugins().sources))
    assert result.code == 1
    assert (
        result.err
        == f"{path}:3:5: models.a.source: unknown source 'ftp' (installed: {installed})\n"
    )


def test_default_source_not_installed(sources: dict[str, Source]) -> None:
    problem = one("models:\n  openai-community/gpt2:\n    revision: main\n", sources)
    installed = ", ".join(sorted(sources))
    assert problem == (
        f"{NAME}:2:3: models.openai-community/gpt2: source defaults to 'huggingface', "
        f"which is not installed (installed: {installed}); set `source:`"
    )


def test_unknown_source_in_defaults(sources: dict[str, Source]) -> None:
    problem = one("defaults:\n  source: ftp\nmodels:\n  a: {}\n", sources)
    assert problem.startswith(f"{NAME}:2:3: defaults.source: unknown source 'ftp' (installed: ")


# -- missing and wrongly typed values ----------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "key"),
    [("{source: http}", "url"), ("{source: local, include: '*.json'}", "path")],
)
def test_missing_required_key(spec: str, key: str, sources: dict[str, Source]) -> None:
    source = "http" if key == "url" else "local"
    problem = one(f"models:\n  my-model: {spec}\n", sources)
    assert problem == (
        f"{NAME}:2:3: models.my-model: missing required key `{key}` for source '{source}'"
    )


def test_missing_required_key_through_cli(tmp_path: Path, mmd: Run) -> None:
    path = write(tmp_path, "models:\n  a:\n    source: http\n")
    result = validate(mmd, path)
    assert (result.code, result.err) == (
        1,
        f"{path}:2:3: models.a: missing required key `url` for source 'http'\n",
    )


HTTP = "source: http, url: 'https://example.com/a.bin'"


@pytest.mark.parametrize(
    ("spec", "key", "message"),
    [
        (
            "source: http, url: 'ftp://e.com/a'",
            "url",
            "expected an http(s) URL, got 'ftp://e.com/a'",
        ),
        ("source: http, url: 'https://'", "url", "expected an http(s) URL, got 'https://'"),
        ("source: http, url: 42", "url", "expected a URL string"),
        (f"{HTTP}, sha256: abc", "sha256", "expected 64 hexadecimal characters (a sha256 digest)"),
        (
            f"{HTTP}, sha256: '{SHA}0'",
            "sha256",
            "expected 64 hexadecimal characters (a sha256 digest)",
        ),
        (
            f"{HTTP}, sha256: '{'g' * 64}'",
            "sha256",
            "expected 64 hexadecimal characters (a sha256 digest)",
        ),
        (f"{HTTP}, size: -1", "size", "expected a whole number of at least 0"),
        (f"{HTTP}, size: big", "size", "expected a whole number of at least 0"),
        (f"{HTTP}, size: '12'", "size", "expected a whole number of at least 0"),
        (f"{HTTP}, size: true", "size", "expected a whole number of at least 0"),
        (f"{HTTP}, size: 1.5", "size", "expected a whole number of at least 0"),
        (f"{HTTP}, state: gone", "state", "expected `present` or `absent`"),
        (f"{HTTP}, metadata: [a, b]", "metadata", "expected a mapping"),
        (f"{HTTP}, metadata: note", "metadata", "expected a mapping"),
        (f"{HTTP}, filename: a/b.bin", "filename", "expected a file name without '/'"),
        (f"{HTTP}, filename: '..'", "filename", "has an empty, '.' or '..' part"),
        (f"{HTTP}, filename: '../x.bin'", "filename", "has an empty, '.' or '..' part"),
        (f"{HTTP}, filename: ''", "filename", "empty file name"),
        ("source: local, path: /x, include: '[abc'", "include", "unclosed '[' in glob '[abc'"),
        (
            "source: local, path: /x, include: ['*.json', 'w[0-9.bin']",
            "include",
            "unclosed '[' in glob 'w[0-9.bin'",
        ),
        ("source: local, path: /x, exclude: []", "exclude", "expected a glob or a list of globs"),
        ("source: local, path: /x, include: []", "include", "expected a glob or a list of globs"),
        ("source: local, path: /x, include: [1]", "include", "expected a non-empty glob string"),
        ("source: local, path: ''", "path", "expected a path"),
        ("source: local, path: [a]", "path", "expected a path"),
    ],
)
def test_bad_value(spec: str, key: str, message: str, sources: dict[str, Source]) -> None:
    line = f"  m: {{{spec}}}"
    column = line.rindex(f"{key}:") + 1  # the offending key is the last one in `spec`
    problem = one(f"models:\n{line}\n", sources)
    prefix = f"{NAME}:2:{column}: models.m.{key}: "
    assert problem.startswith(prefix), problem
    assert message in problem[len(prefix) :]


def test_bad_url_through_cli(tmp_path: Path, mmd: Run) -> None:
    path = write(tmp_path, "models:\n  foo:\n    source: http\n    url: file:///etc/passwd\n")
    result = validate(mmd, path)
    assert result.code == 1
    assert result.err == (
        f"{path}:4:5: models.foo.url: expected an http(s) URL, got 'file:///etc/passwd'\n"
    )


def test_unknown_model_type_lists_types(sources: dict[str, Source]) -> None:
    problem = one(
        f"models:\n  m:\n    {HTTP.replace(', ', chr(10) + '    ')}\n    type: chatbot\n", sources
    )
    assert problem.startswith(f"{NAME}:5:5: models.m.type: unknown model type (one of: ")
    for model_type in ModelType:
        assert model_type.value in problem


def test_url_without_file_name_needs_filename(sources: dict[str, Source]) -> None:
    problem = one("models:\n  m: {source: http, url: 'https://e.com/'}\n", sources)
    assert problem == (
        f"{NAME}:2:21: models.m.url: the URL has no file name in its path; set `filename`"
    )
    manifest = parse(
        "models:\n  m: {source: http, url: 'https://e.com/', filename: index.html}\n", sources
    )
    assert manifest.models["m"].options["filename"] == "index.html"


def test_model_spec_not_a_mapping(sources: dict[str, Source]) -> None:
    problem = one("models:\n  m: [source, http]\n", sources)
    assert problem == f"{NAME}:2:3: models.m: expected a mapping of settings"


def test_bad_value_in_defaults_is_reported_once(sources: dict[str, Source]) -> None:
    found = problems(
        """
        defaults:
          include: "[x"
        models:
          a: {source: local, path: /a}
          b: {source: local, path: /b}
          c: {source: http, url: "https://e.com/c.bin"}
        """,
        sources,
    )
    assert found == [f"{NAME}:2:3: defaults.include: unclosed '[' in glob '[x'"]


# -- model ids -------------------------------------------------------------------------


CHARS = "a model id may only contain letters, digits, '.', '_', '-' and one '/'"
PARTS = "a model id cannot have an empty, '.' or '..' part"


@pytest.mark.parametrize(
    ("model_id", "message"),
    [
        ("../x", PARTS),
        ("..", PARTS),
        (".", PARTS),
        ("x/..", PARTS),
        ("/abs", PARTS),
        ("a/", PARTS),
        ("a/b/c", "a model id may contain at most one '/'"),
        ("a//b", "a model id may contain at most one '/'"),
        ("a" * 201, "a model id must be 1-200 characters"),
        ("", "a model id must be 1-200 characters"),
        ("a b", CHARS),
        ("a\\b", CHARS),
        ("modèle", CHARS),
        ("a:b", CHARS),
    ],
)
def test_bad_model_id(model_id: str, message: str, sources: dict[str, Source]) -> None:
    quoted = model_id.replace("\\", "\\\\")
    problem = one(f'models:\n  "{quoted}": {{state: absent}}\n', sources)
    assert problem == f"{NAME}:2:3: models.{model_id}: {message}"


def test_bad_model_id_through_cli(tmp_path: Path, mmd: Run) -> None:
    path = write(tmp_path, "models:\n  ../escape:\n    source: local\n    path: /srv/x\n")
    result = validate(mmd, path)
    assert (result.code, result.err) == (1, f"{path}:2:3: models.../escape: {PARTS}\n")


@pytest.mark.parametrize(
    "model_id", ["a" * 200, "a" * 100 + "/" + "b" * 99, "x", "Org_1/Model-v2.5", "a.b"]
)
def test_good_model_id(model_id: str, sources: dict[str, Source]) -> None:
    assert len(model_id) <= 200
    manifest = parse(f"models:\n  {model_id}: {{{HTTP}}}\n", sources)
    assert list(manifest.models) == [model_id]


# -- the file as a whole ----------------------------------------------------------------


def test_invalid_yaml_syntax(tmp_path: Path, mmd: Run) -> None:
    path = write(tmp_path, "models:\n  a: {source: http\n  b: {}\n")
    result = validate(mmd, path)
    assert result.code == 1
    assert re.fullmatch(rf"{re.escape(str(path))}:3:\d+: invalid YAML: .+\n", result.err)


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("models:\n\tx: 1\n", "2:1", "found character '\\t' that cannot start any token"),
        ("models: a: b\n", "1:10", "mapping values are not allowed here"),
        ("models: [1, 2\n", "2:1", "expected ',' or ']'"),
        ("a: 1\n---\nb: 2\n", "2:1", "expected a single document in the stream, but found"),
        ("models: *nowhere\n", "1:9", "found undefined alias"),
    ],
)
def test_invalid_yaml_messages(
    text: str, where: str, message: str, sources: dict[str, Source]
) -> None:
    problem = one(text, sources)
    assert problem.startswith(f"{NAME}:{where}: invalid YAML: "), problem
    assert message in problem


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "42\n"])
def test_top_level_not_a_mapping(text: str, sources: dict[str, Source]) -> None:
    assert one(text, sources) == f"{NAME}:1:1: expected a mapping with a `models:` key"


@pytest.mark.parametrize("text", ["models: [a, b]\n", "models: text\n"])
def test_models_not_a_mapping(text: str, sources: dict[str, Source]) -> None:
    assert one(text, sources) == f"{NAME}:1:1: models: expected a mapping of model id -> spec"


@pytest.mark.parametrize("version", ["2", "'1'", "true", "1.0", "null"])
def test_only_version_1(version: str, tmp_path: Path, mmd: Run) -> None:
    path = write(tmp_path, f"version: {version}\nmodels: {{}}\n")
    result = validate(mmd, path)
    assert (result.code, result.err) == (
        1,
        f"{path}:1:1: version: expected 1 (the only manifest version)\n",
    )


@pytest.mark.parametrize(
    "text", ["", "\n", "# nothing yet\n", "models:\n", "version: 1\nmodels:\n", "models: {}\n"]
)
def test_empty_manifest_is_ok(text: str, tmp_path: Path, mmd: Run) -> None:
    path = write(tmp_path, "x")
    path.write_text(text)
    result = validate(mmd, path)
    assert (result.code, result.out, result.err) == (0, f"{path}: ok, 0 models\n", "")


def test_default_manifest_path_is_used(home: Home, mmd: Run) -> None:
    home.write_manifest(f"models:\n  a: {{{HTTP}}}\n")
    result = mmd("validate")
    assert (result.code, result.out) == (0, f"{home.manifest}: ok, 1 models\n")


def test_missing_manifest_is_usage_error(tmp_path: Path, mmd: Run) -> None:
    result = validate(mmd, tmp_path / "nope.yaml")
    assert result.code == 2
    assert result.err.startswith(f"mmd: manifest {tmp_path / 'nope.yaml'} does not exist")
    assert result.err.count("\n") == 1


def _bomb(levels: int = 9) -> str:
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    previous = "a"
    for name in "bcdefghijklmnop"[: levels - 1]:
        refs = ", ".join([f"*{previous}"] * 9)
        lines.append(f"{name}: &{name} [{refs}]")
        previous = name
    return "\n".join(lines) + "\n"


def test_alias_bomb_refused_quickly(tmp_path: Path, mmd: Run) -> None:
    path = write(tmp_path, "models:\n  " + _bomb().replace("\n", "\n  ").rstrip() + "\n")
    start = time.monotonic()
    result = validate(mmd, path)
    assert time.monotonic() - start < 2
    assert result.code == 1
    assert result.err == f"{path}: too many YAML values (alias expansion?); refusing\n"


def test_alias_bomb_in_a_key_refused_quickly(sources: dict[str, Source]) -> None:
    # A collection used as a key is never expanded (str() of it would be the bomb).
    anchors = ["&a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True):
        anchors.append(f"&{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    text = "models:\n  ? [" + ", ".join(anchors) + "]\n  : {state: absent}\n"
    start = time.monotonic()
    problem = one(text, sources)
    assert time.monotonic() - start < 2
    assert problem == f"{NAME}:2:5: models: a key must be a plain value, not a list or mapping"


def test_small_alias_use_is_fine(sources: dict[str, Source]) -> None:
    manifest = parse(
        """
        models:
          a: {source: local, path: /a, include: &globs ["*.json", "*.txt"]}
          b: {source: local, path: /b, include: *globs}
        """,
        sources,
    )
    assert manifest.models["b"].options["include"] == ["*.json", "*.txt"]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("a: &a [*a]\n", "1:4: a[0]"),
        ("models: &m {x: *m}\n", "1:9: models.x"),
        ("models:\n  x: &x\n    metadata: {again: [*x]}\n", "2:6: models.x.metadata.again[0]"),
    ],
)
def test_recursive_alias(text: str, where: str, tmp_path: Path, mmd: Run) -> None:
    path = write(tmp_path, text)
    result = validate(mmd, path)
    assert result.code == 1
    assert result.err == f"{path}:{where}: recursive alias (a value inside itself)\n"


def test_nesting_too_deep(tmp_path: Path, mmd: Run) -> None:
    path = write(tmp_path, "models: " + "[" * 5000 + "]" * 5000 + "\n")
    result = validate(mmd, path)
    assert (result.code, result.err) == (1, f"{path}: YAML nested too deeply; refusing\n")


def test_file_over_1_mib_refused_before_parsing(tmp_path: Path, mmd: Run) -> None:
    path = tmp_path / "big.yaml"
    # Broken YAML: were it parsed, the message would be about syntax, not size.
    path.write_text("models: [\n" + "#" * (1 << 20))
    result = validate(mmd, path)
    assert result.code == 1
    assert result.err == f"{path}: file is larger than 1048576 bytes; refusing to parse\n"


def test_file_of_exactly_1_mib_is_read(tmp_path: Path, mmd: Run) -> None:
    path = tmp_path / "big.yaml"
    head = "models: {}\n"
    path.write_text(head + "#" * ((1 << 20) - len(head)))
    assert path.stat().st_size == 1 << 20
    assert validate(mmd, path).code == 0


def test_non_utf8_file(tmp_path: Path, mmd: Run) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("models:\n  café: {state: absent}\n".encode("latin-1"))
    result = validate(mmd, path)
    assert result.code == 1
    assert result.err == f"{path}: not UTF-8 text (byte 13)\n"


def test_utf8_bom_is_fine(tmp_path: Path, mmd: Run) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfmodels: {}\n")
    assert validate(mmd, path).code == 0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2024-02-30", "cannot read value: day is out of range for month"),
        ("1" * 5000, "cannot read value: Exceeds the limit (4300 digits)"),
    ],
    ids=["impossible-date", "huge-int"],
)
def test_unreadable_scalar_is_a_problem_not_a_crash(
    value: str, message: str, sources: dict[str, Source]
) -> None:
    problem = one(
        f"models:\n  m:\n    {HTTP.replace(', ', chr(10) + '    ')}\n"
        f"    metadata: {{released: {value}}}\n",
        sources,
    )
    assert problem.startswith(f"{NAME}:5:26: models.m.metadata.released: {message}"), problem


def test_metadata_is_kept_as_json_can_hold_it(sources: dict[str, Source]) -> None:
    manifest = parse(
        f"""
        models:
          m:
            {HTTP.replace(", ", chr(10) + "            ")}
            metadata:
              released: 2024-01-31
              at: 2024-01-31 10:00:00
              nested: {{list: [1, 2.5, true, null, "x"], 2: two}}
        """,
        sources,
    )
    assert manifest.models["m"].metadata == {
        "released": "2024-01-31",
        "at": "2024-01-31T10:00:00",
        "nested": {"list": [1, 2.5, True, None, "x"], "2": "two"},
    }


def test_binary_metadata_refused(sources: dict[str, Source]) -> None:
    problem = one(f"models:\n  m: {{{HTTP}, metadata: {{blob: !!binary aGk=}}}}\n", sources)
    assert problem.startswith(f"{NAME}:2:66: models.m.metadata.blob: expected text, a number")


# -- state, defaults -------------------------------------------------------------------


def test_absent_needs_no_source_keys(sources: dict[str, Source]) -> None:
    manifest = parse(
        """
        models:
          gone/one: {state: absent}
          gone/two: {state: absent, source: http}
          gone/three: {state: absent, source: github}
        """,
        sources,
    )
    assert {m.state for m in manifest.models.values()} == {State.ABSENT}
    assert manifest.models["gone/one"].source == "huggingface"
    assert manifest.models["gone/two"].source == "http"
    assert manifest.models["gone/three"].source == "github"


def test_absent_still_checks_unknown_keys_of_known_source(sources: dict[str, Source]) -> None:
    problem = one("models:\n  a: {state: absent, source: http, revision: x}\n", sources)
    assert problem.startswith(f"{NAME}:2:36: models.a.revision: unknown key for source 'http'")


def test_default_no_source_accepts(sources: dict[str, Source]) -> None:
    problem = one("defaults:\n  revision: main\nmodels:\n  a: {source: local, path: /a}\n", sources)
    assert problem == f"{NAME}:2:3: defaults.revision: no installed source accepts this key"


def test_default_no_source_accepts_through_cli(tmp_path: Path, mmd: Run) -> None:
    path = write(tmp_path, "defaults:\n  colour: blue\nmodels: {}\n")
    result = validate(mmd, path)
    assert (result.code, result.err) == (
        1,
        f"{path}:2:3: defaults.colour: no installed source accepts this key\n",
    )


def test_defaults_not_a_mapping(sources: dict[str, Source]) -> None:
    assert (
        one("defaults: [a]\nmodels: {}\n", sources) == f"{NAME}:1:1: defaults: expected a mapping"
    )


def test_default_applies_only_to_sources_accepting_it(sources: dict[str, Source]) -> None:
    manifest = parse(
        f"""
        defaults:
          exclude: ["*.bin"]
          sha256: {SHA}
        models:
          web: {{source: http, url: "https://e.com/w.gguf"}}
          disk: {{source: local, path: /srv/disk}}
        """,
        sources,
    )
    assert dict(manifest.models["web"].options) == {"url": "https://e.com/w.gguf", "sha256": SHA}
    assert dict(manifest.models["disk"].options) == {"path": "/srv/disk", "exclude": ["*.bin"]}


def test_relative_local_path_resolved_against_manifest_folder(
    tmp_path: Path, sources: dict[str, Source], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc" / "mmd"
    folder.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write(
        folder, "models:\n  a: {source: local, path: data/a}\n  b: {source: local, path: .}\n"
    )
    manifest = load_manifest(path, sources)
    assert manifest.models["a"].options["path"] == str(folder / "data" / "a")
    assert Path(manifest.models["b"].options["path"]).resolve() == folder


# -- many problems at once ------------------------------------------------------------------


def test_every_problem_is_reported(tmp_path: Path, mmd: Run) -> None:
    path = write(
        tmp_path,
        """
        version: 1
        colour: blue
        models:
          a:
            source: http
            url: ftp://e.com/a
          a/b/c:
            state: absent
          b:
            source: local
            path: /srv/b
            include: "[oops"
          a:
            source: http
            url: https://e.com/a
          c:
            source: http
            url: https://e.com/c
            size: -5
            sizes: 5
        """,
    )
    result = validate(mmd, path)
    assert result.code == 1
    lines = result.err.splitlines()
    expected = [
        f"{path}:13:3: models.a: duplicate key (first defined at line 4)",
        f"{path}:2:1: colour: unknown key (allowed: version, defaults, models)",
        f"{path}:6:5: models.a.url: expected an http(s) URL, got 'ftp://e.com/a'",
        f"{path}:7:3: models.a/b/c: a model id may contain at most one '/'",
        f"{path}:12:5: models.b.include: unclosed '[' in glob '[oops'",
    ]
    for line in expected:
        assert line in lines, (line, lines)
    assert any(line.startswith(f"{path}:20:5: models.c.sizes: unknown key") for line in lines)
    assert f"{path}:19:5: models.c.size: expected a whole number of at least 0" in lines
    assert len(lines) == 7, lines


def test_problems_in_two_models_both_reported(sources: dict[str, Source]) -> None:
    found = problems("models:\n  a: {source: http}\n  b: {source: local}\n", sources)
    assert found == [
        f"{NAME}:2:3: models.a: missing required key `url` for source 'http'",
        f"{NAME}:3:3: models.b: missing required key `path` for source 'local'",
    ]


# -- the shipped examples -----------------------------------------------------------------


def test_example_files(mmd: Run) -> None:
    """config/*.example.yaml are what operators copy: they must be valid as shipped."""
    from mmd.config import load_settings

    models = ROOT / "config" / "models.example.yaml"
    config = ROOT / "config" / "config.example.yaml"
    result = validate(mmd, models)
    assert result.code == 0, result.err
    assert result.out.startswith(f"{models}: ok, ")
    settings = load_settings(config=str(config), env={"MMD_HOME": str(ROOT / "nonexistent")})
    assert settings.config_file == config
