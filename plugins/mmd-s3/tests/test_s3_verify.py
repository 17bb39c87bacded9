"""The digest arithmetic of mmd_s3.verify, on small inputs."""

from __future__ import annotations

import base64
import hashlib
import zlib

from mmd_s3 import verify

MIB = 1 << 20


def multipart_etag(parts: list[bytes]) -> str:
    inner = b"".join(hashlib.md5(p).digest() for p in parts)
    return f'"{hashlib.md5(inner).hexdigest()}-{len(parts)}"'


def run(checks: list[verify.Check], layout: list[int], data: bytes, chunk: int = 7):
    digests = verify.Digests(checks, layout)
    for i in range(0, len(data), chunk):  # chunks that straddle part boundaries
        digests.update(data[i : i + chunk])
    digests.finish()
    return verify.failed(checks, digests)


def test_etag_shapes() -> None:
    assert verify.etag_parts('"5d41402abc4b2a76b9719d911017c592"') == 1
    assert verify.etag_parts('"5D41402ABC4B2A76B9719D911017C592-12"') == 12
    assert verify.etag_parts('"not-an-md5"') is None
    assert verify.etag_parts(None) is None


def test_multipart_etag_and_composite_sha256() -> None:
    data = bytes(range(256)) * 40
    parts = [data[:4000], data[4000:8000], data[8000:]]
    sha = hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).digest()
    head = {
        "ETag": multipart_etag(parts),
        "ChecksumSHA256": base64.b64encode(sha).decode() + "-3",
        "ContentLength": len(data),
    }
    checks = verify.checks_for(head, sha256_known=False)
    assert [c.label for c in checks] == ["sha256 composite checksum", "etag"]
    assert run(checks, verify.uniform_parts(len(data), 4000), data) is None
    bad = run(checks, verify.uniform_parts(len(data), 4000), data[:-1] + b"\0")
    assert bad is not None and bad[0].label == "sha256 composite checksum"
    # Wrong part boundaries fail too: the part size matters.
    assert run(checks, verify.uniform_parts(len(data), 5000), data) is not None
    # A store that leaves the "-N" off a composite checksum is still understood.
    head["ChecksumSHA256"] = base64.b64encode(sha).decode()
    assert verify.full_object_sha256(head) is None
    checks = verify.checks_for(head, sha256_known=False)
    assert run(checks, verify.uniform_parts(len(data), 4000), data) is None


def test_single_part_and_full_object_sha256() -> None:
    data = b"hello"
    head = {
        "ETag": f'"{hashlib.md5(data).hexdigest()}"',
        "ChecksumSHA256": base64.b64encode(hashlib.sha256(data).digest()).decode(),
    }
    assert verify.full_object_sha256(head) == hashlib.sha256(data).hexdigest()
    checks = verify.checks_for(head, sha256_known=True)
    assert [(c.label, c.multipart) for c in checks] == [("etag", False)]
    assert run(checks, [len(data)], data) is None
    assert run(checks, [len(data)], b"hellO") == (checks[0], hashlib.md5(b"hellO").hexdigest())


def test_kms_objects_need_a_checksum() -> None:
    data = b"secret weights"
    head = {"ETag": '"0123456789abcdef0123456789abcdef"', "ServerSideEncryption": "aws:kms"}
    assert verify.checks_for(head, sha256_known=False) == []
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    checks = verify.checks_for({**head, "ChecksumCRC32": crc}, sha256_known=False)
    assert [c.label for c in checks] == ["crc32 checksum"]
    assert run(checks, [len(data)], data) is None
    assert run(checks, [len(data)], data.upper()) is not None
    sha1 = base64.b64encode(hashlib.sha1(data).digest()).decode()
    checks = verify.checks_for({**head, "ChecksumSHA1": sha1}, sha256_known=False)
    assert [c.label for c in checks] == ["sha1 checksum"]
    assert run(checks, [len(data)], data) is None
    assert run(checks, [len(data)], data.upper()) is not None


def test_guessed_part_sizes() -> None:
    # 100 MiB in 13 parts: only 8 MiB parts (aws cli's default) make 13.
    assert verify.guessed_part_sizes(100 * MIB, 13)[0] == 8 * MIB
    for part in verify.guessed_part_sizes(100 * MIB + 5, 7):
        assert -(-(100 * MIB + 5) // part) == 7
    assert verify.uniform_parts(11, 5) == [5, 5, 1]
    assert verify.uniform_parts(10, 5) == [5, 5]
