"""`source: s3` end to end: mmd's CLI against moto's S3 server (through a proxy)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import pytest
from conftest import BUCKET, MIB, S3, Home, Proxy, Result

Mmd = Callable[..., Result]


def payload(size: int, seed: bytes = b"x") -> bytes:
    """Deterministic bytes that do not repeat within a part."""
    block = hashlib.sha256(seed).digest() * (1 << 10)  # 32 KiB
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest() + block[: 32 << 10]
        counter += 1
    return bytes(out[:size])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_prefix_and_single_object(home: Home, mmd: Mmd, s3: S3, proxy: Proxy) -> None:
    files = {
        "config.json": b'{"model_type": "llama"}\n',
        "model.safetensors": payload(300_000, b"w"),
        "tokenizer/vocab.txt": b"a\nb\n",
        "tokenizer/special tokens+map.json": b"{}",  # a key that needs URL-encoding
        "empty.txt": b"",
    }
    for rel, data in files.items():
        s3.put(f"llama/7b/{rel}", data)
    s3.put("llama/7b/", b"")  # a "folder" marker, as consoles create them
    s3.put("llama/13b/config.json", b"{}")  # not below the prefix
    s3.put("llama/7b-extra.bin", b"nope")  # shares the string prefix, not the folder
    single = payload(50_000, b"gguf")
    s3.put("gguf/tiny.gguf", single)
    home.write_manifest(
        f"""
        models:
          llama-7b:
            source: s3
            url: s3://{BUCKET}/llama/7b/
            endpoint_url: {proxy.endpoint}
          tiny:
            source: s3
            url: s3://{BUCKET}/gguf/tiny.gguf
            endpoint_url: {proxy.endpoint}
            type: text-generation
        """
    )
    plan = mmd("plan")
    assert plan.code == 0, plan.text
    assert "llama-7b (5 files" in plan.out
    result = mmd("sync")
    assert result.code == 0, result.text
    assert home.model_files("llama-7b") == files
    assert home.model_files("tiny") == {"tiny.gguf": single}
    entry = home.entry("llama-7b")
    assert entry["status"] == "available"
    assert entry["version"].startswith("s3:")
    assert {f["path"]: f["sha256"] for f in entry["files"]} == {k: sha(v) for k, v in files.items()}
    assert entry["metadata"] == {"url": f"s3://{BUCKET}/llama/7b/", "endpoint_url": proxy.endpoint}
    assert home.entry("tiny")["model_type"] == "text-generation"
    # Every object was fetched with a Range request (so a resume is the same request).
    assert all(r.range and r.range.startswith("bytes=0-") for r in proxy.gets())

    proxy.log.clear()
    again = mmd("sync")
    assert again.code == 0, again.text
    assert proxy.gets() == []  # listed and found unchanged: nothing downloaded


def test_include_and_exclude(home: Home, mmd: Mmd, s3: S3, proxy: Proxy) -> None:
    for rel in ("config.json", "model.safetensors", "README.md", "onnx/model.onnx", "x.bin"):
        s3.put(f"m/{rel}", rel.encode())
    home.write_manifest(
        f"""
        models:
          m:
            source: s3
            url: s3://{BUCKET}/m/
            endpoint_url: {proxy.endpoint}
            include: ["*.json", "*.safetensors", "onnx/"]
            exclude: "onnx/"
          none:
            source: s3
            url: s3://{BUCKET}/m/
            endpoint_url: {proxy.endpoint}
            include: "*.gguf"
        """
    )
    result = mmd("sync")
    assert result.code == 1
    assert sorted(home.model_files("m")) == ["config.json", "model.safetensors"]
    error = home.entry("none")["error"]
    assert error == f"no objects below s3://{BUCKET}/m/ match include/exclude (at {proxy.endpoint})"
    assert "no objects below" in result.text


def test_changed_object_updates_the_model(home: Home, mmd: Mmd, s3: S3, proxy: Proxy) -> None:
    s3.put("m/config.json", b"{}")
    s3.put("m/weights.bin", payload(100_000, b"v1"))
    home.write_manifest(
        f"""
        models:
          m:
            source: s3
            url: s3://{BUCKET}/m/
            endpoint_url: {proxy.endpoint}
        """
    )
    assert mmd("sync").code == 0
    first = home.entry("m")["version"]

    new = payload(120_000, b"v2")
    s3.put("m/weights.bin", new)
    plan = mmd("plan")
    assert "update   m" in plan.out, plan.out
    before = len(proxy.gets())
    result = mmd("sync")
    assert result.code == 0, result.text
    assert home.model_files("m")["weights.bin"] == new
    # Only the changed object is downloaded: config.json keeps its ETag, so the copy in
    # storage is reused (after checking it still hashes to its recorded sha256).
    assert [r.path for r in proxy.gets()[before:]] == [f"/{BUCKET}/m/weights.bin"]
    assert {f["path"]: f.get("validator") for f in home.entry("m")["files"]}["config.json"]
    entry = home.entry("m")
    assert entry["version"] != first
    assert entry["size_bytes"] == 2 + len(new)

    # A new object below the prefix is an update too; a removed one goes away.
    s3.put("m/extra.json", b"[]")
    s3.client.delete_object(Bucket=BUCKET, Key="m/config.json")
    assert mmd("sync").code == 0
    assert sorted(home.model_files("m")) == ["extra.json", "weights.bin"]


def test_multipart_uploads_are_verified(home: Home, mmd: Mmd, s3: S3, proxy: Proxy) -> None:
    plain = payload(12 * MIB + 12345, b"mp")
    etag = s3.put_multipart("mp/model.bin", plain, part_size=5 * MIB)
    assert etag.endswith('-3"')  # really a multipart upload
    with_sha = payload(11 * MIB, b"sha")
    s3.put_multipart("mp/other.bin", with_sha, part_size=5 * MIB, ChecksumAlgorithm="SHA256")
    uneven = [payload(7 * MIB, b"p1"), payload(5 * MIB, b"p2"), payload(MIB, b"p3")]
    s3.put_parts("mp/uneven.bin", uneven)
    # A one-part multipart upload (aws s3 cp of exactly 8 MiB): its ETag ends in "-1".
    one = payload(6 * MIB, b"one")
    assert s3.put_parts("mp/one.bin", [one]).endswith('-1"')
    home.write_manifest(
        f"""
        models:
          mp:
            source: s3
            url: s3://{BUCKET}/mp/
            endpoint_url: {proxy.endpoint}
        """
    )
    result = mmd("sync")
    assert result.code == 0, result.text
    assert home.model_files("mp") == {
        "model.bin": plain,
        "other.bin": with_sha,
        "uneven.bin": b"".join(uneven),
        "one.bin": one,
    }
    heads = [r.path for r in proxy.log if r.method == "HEAD"]
    # Part 1's size for each; every part's size for the one with unequal parts.
    assert f"/{BUCKET}/mp/model.bin?partNumber=1" in heads
    assert f"/{BUCKET}/mp/uneven.bin?partNumber=3" in heads


def test_multipart_on_a_store_without_part_numbers(
    home: Home, mmd: Mmd, s3: S3, proxy: Proxy
) -> None:
    data = payload(20 * MIB + 7, b"8m")
    s3.put_multipart("mp/model.bin", data, part_size=8 * MIB)  # aws cli's part size
    home.write_manifest(
        f"""
        models:
          mp:
            source: s3
            url: s3://{BUCKET}/mp/
            endpoint_url: {proxy.endpoint}
        """
    )
    proxy.ignore_part_number = True  # HEAD ?partNumber=1 answers for the whole object
    result = mmd("sync")
    assert result.code == 0, result.text
    assert home.model_files("mp") == {"model.bin": data}


@pytest.mark.parametrize("multipart", [False, True], ids=["single-part", "multipart"])
def test_corrupted_bytes_are_caught(
    home: Home, mmd: Mmd, s3: S3, proxy: Proxy, multipart: bool
) -> None:
    data = payload(11 * MIB if multipart else 200_000, b"c")
    if multipart:
        s3.put_multipart("c/model.bin", data)
    else:
        s3.put("c/model.bin", data)
    s3.put("c/config.json", b"{}")
    home.write_manifest(
        f"""
        models:
          c:
            source: s3
            url: s3://{BUCKET}/c/
            endpoint_url: {proxy.endpoint}
        """
    )
    proxy.corrupt.add(f"/{BUCKET}/c/model.bin")
    result = mmd("sync")
    assert result.code == 1
    entry = home.entry("c")
    assert entry["status"] == "error"
    assert entry["error"].startswith("model.bin: etag mismatch: expected ")
    assert "etag mismatch" in result.text
    assert not (home.storage / "s3" / "c").exists()  # nothing published
    assert home.part_size() == 0  # the bad bytes are gone, a retry starts clean

    proxy.corrupt.clear()
    result = mmd("sync")
    assert result.code == 0, result.text
    assert home.model_files("c")["model.bin"] == data


def test_object_changed_between_resolve_and_fetch(
    home: Home, mmd: Mmd, s3: S3, proxy: Proxy
) -> None:
    s3.put("m/weights.bin", payload(100_000, b"old"))
    new = payload(90_000, b"new")
    home.write_manifest(
        f"""
        models:
          m:
            source: s3
            url: s3://{BUCKET}/m/
            endpoint_url: {proxy.endpoint}
        """
    )
    proxy.before_get = lambda path: s3.put("m/weights.bin", new)  # lands after the listing
    result = mmd("sync")
    assert result.code == 1
    assert "changed since it was resolved" in home.entry("m")["error"]
    result = mmd("sync")
    assert result.code == 0, result.text
    assert home.model_files("m") == {"weights.bin": new}


def test_pinned_sha256_of_one_object(home: Home, mmd: Mmd, s3: S3, proxy: Proxy) -> None:
    data = payload(70_000, b"pin")
    s3.put("one/model.gguf", data)
    home.write_manifest(
        f"""
        models:
          pinned:
            source: s3
            url: s3://{BUCKET}/one/model.gguf
            endpoint_url: {proxy.endpoint}
            sha256: {sha(data)}
          wrong:
            source: s3
            url: s3://{BUCKET}/one/model.gguf
            endpoint_url: {proxy.endpoint}
            sha256: {sha(b"other")}
        """
    )
    result = mmd("sync")
    assert result.code == 1
    assert home.entry("pinned")["version"] == f"sha256:{sha(data)}"
    assert home.entry("wrong")["error"] == (
        f"model.gguf: sha256 mismatch: expected {sha(b'other')}, got {sha(data)}"
    )
    proxy.log.clear()
    mmd("sync", "pinned")
    assert proxy.log == []  # pinned and whole: S3 is not asked at all


def test_full_object_sha256_checksum_is_recorded(
    home: Home, mmd: Mmd, s3: S3, proxy: Proxy
) -> None:
    data = payload(40_000, b"cs")
    s3.put("cs/model.bin", data, ChecksumAlgorithm="SHA256")
    s3.put("cs/plain.bin", b"plain")
    home.write_manifest(
        f"""
        models:
          cs:
            source: s3
            url: s3://{BUCKET}/cs/
            endpoint_url: {proxy.endpoint}
        """
    )
    plan = mmd("plan", "--json")
    assert plan.code == 0, plan.text
    # resolve asked only for the object that has a SHA256 checksum
    heads = [r.path for r in proxy.log if r.method == "HEAD"]
    assert heads == [f"/{BUCKET}/cs/model.bin"]
    assert mmd("sync").code == 0
    assert home.model_files("cs") == {"model.bin": data, "plain.bin": b"plain"}


def test_errors_are_one_clear_line(home: Home, mmd: Mmd, s3: S3, proxy: Proxy) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    s3.put("m/a.bin", b"a")
    home.write_manifest(
        f"""
        models:
          no-bucket:
            source: s3
            url: s3://missing-bucket/m/
            endpoint_url: {s3.endpoint}
          no-object:
            source: s3
            url: s3://{BUCKET}/m/b.bin
            endpoint_url: {s3.endpoint}
          no-folder:
            source: s3
            url: s3://{BUCKET}/m
            endpoint_url: {s3.endpoint}
          unreachable:
            source: s3
            url: s3://{BUCKET}/m/
            endpoint_url: http://127.0.0.1:{closed_port}
        """
    )
    result = mmd("sync")
    assert result.code == 1
    errors = {mid: home.entry(mid)["error"] for mid in home.registry()["models"]}
    assert errors["no-bucket"] == f"bucket missing-bucket does not exist at {s3.endpoint}"
    assert errors["no-object"] == (
        f"s3://{BUCKET}/m/b.bin not found at {s3.endpoint} "
        "(for every object below a prefix, end the url with `/`)"
    )
    assert errors["no-folder"].startswith(f"s3://{BUCKET}/m not found")
    assert errors["unreachable"] == (
        f"cannot reach http://127.0.0.1:{closed_port} for s3://{BUCKET}/m/: "
        "Failed to establish a new connection: [Errno 111] Connection refused"
    )
    for message in errors.values():
        assert "\n" not in message
        assert "test-secret-key" not in message


def test_access_denied_says_to_set_credentials(
    home: Home, mmd: Mmd, s3: S3, proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3.put("m/a.bin", b"a")
    home.write_manifest(
        f"""
        models:
          m:
            source: s3
            url: s3://{BUCKET}/m/
            endpoint_url: {proxy.endpoint}
        """
    )
    proxy.deny = True
    mmd("sync")
    error = home.entry("m")["error"]
    assert error.startswith(f"access denied to s3://{BUCKET}/m/ at {proxy.endpoint} with the")
    assert "`profile`" in error

    # Without any credentials mmd asks anonymously (public buckets), and says so.
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    mmd("sync")
    error = home.entry("m")["error"]
    assert "no AWS credentials were found" in error
    assert "AWS_ACCESS_KEY_ID" in error


def test_profile_from_the_credentials_file(
    home: Home, mmd: Mmd, s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    credentials = os.environ["AWS_SHARED_CREDENTIALS_FILE"]
    with open(credentials, "w") as fh:
        fh.write("[minio]\naws_access_key_id = AKIAMINIO\naws_secret_access_key = minio-secret\n")
    s3.put("m/a.bin", b"a")
    home.write_manifest(
        f"""
        models:
          m:
            source: s3
            url: s3://{BUCKET}/m/
            endpoint_url: {s3.endpoint}
            profile: minio
            region: eu-west-1
          other:
            source: s3
            url: s3://{BUCKET}/m/
            endpoint_url: {s3.endpoint}
            profile: nope
        """
    )
    result = mmd("sync")
    assert home.entry("m")["status"] == "available", result.text
    assert home.entry("other")["error"] == (
        "AWS profile 'nope' not found (define it in ~/.aws/config or ~/.aws/credentials "
        "(or AWS_CONFIG_FILE))"
    )


def test_manifest_checks(home: Home, mmd: Mmd) -> None:
    home.write_manifest(
        """
        models:
          a:
            source: s3
            url: https://example.com/x
          b:
            source: s3
            url: s3://bucket/prefix/
            sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
          c:
            source: s3
            url: s3://bucket/key
            bogus: 1
        """
    )
    result = mmd("validate")
    assert result.code == 1
    assert "models.a.url: expected an s3://bucket/prefix/ or s3://bucket/key URL" in result.err
    assert "models.b.sha256: `sha256` pins one object; this url is a prefix" in result.err
    assert "models.c.bogus" in result.err
