"""What S3 says about an object's bytes, and recomputing it from the bytes we got.

boto3 checks nothing on a GET (we turn its own response validation off: it cannot follow
a ranged, resumed download). So every object is checked here, against what S3 gave:

- the ETag: the MD5 of the bytes for a single-part upload; for a multipart upload
  `md5(md5(part 1) + md5(part 2) + ...)-N`, which needs the part boundaries;
- a composite `ChecksumSHA256` / `ChecksumCRC32` of a multipart upload: the same shape
  with sha256 or crc32 parts (base64, `-N` suffix);
- a full-object `ChecksumSHA256` goes into `RemoteFile.sha256` for the core to check;
  a full-object `ChecksumCRC32` is used here when nothing better exists.

The ETag is not an MD5 for SSE-KMS and SSE-C objects; those need a checksum.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_MD5 = re.compile(r"[0-9a-f]{32}")
_MULTIPART = re.compile(r"([0-9a-f]{32})-(\d+)")
_SUFFIX = re.compile(r"^(.*)-(\d+)$")


def plain_etag(etag: str | None) -> str:
    return (etag or "").strip().strip('"').lower()


def etag_parts(etag: str | None) -> int | None:
    """How many parts an ETag says the object was uploaded in: 1 (a plain MD5), N, or
    None when the ETag has neither shape (another store's opaque ETag)."""
    value = plain_etag(etag)
    if _MD5.fullmatch(value):
        return 1
    match = _MULTIPART.fullmatch(value)
    return int(match.group(2)) if match else None


def multipart_etag(etag: str | None) -> bool:
    """An ETag of the `md5-of-part-md5s-N` shape, N = 1 included (one-part uploads)."""
    return _MULTIPART.fullmatch(plain_etag(etag)) is not None


def sha256_hex(b64: str) -> str | None:
    """A full-object `ChecksumSHA256` (base64) as hex; None for a composite or bad one."""
    if _SUFFIX.match(b64.strip()):
        return None
    try:
        raw = base64.b64decode(b64.strip(), validate=True)
    except ValueError:
        return None
    return raw.hex() if len(raw) == 32 else None


def full_object_sha256(head: Mapping[str, Any]) -> str | None:
    """The object's sha256 from a HEAD, when S3 has one over the whole object.

    A multipart upload can only carry a composite SHA256 (a sha256 of part sha256s), and
    some stores leave its `-N` suffix off: an object whose ETag says multipart never has
    a full-object SHA256.
    """
    value = head.get("ChecksumSHA256")
    if not value or head.get("ChecksumType") == "COMPOSITE":
        return None
    if multipart_etag(head.get("ETag")) or head.get("PartsCount", 1) > 1:
        return None
    return sha256_hex(str(value))


class _Crc32:
    """hashlib's interface over zlib.crc32."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes | memoryview) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


def _new(algo: str) -> Any:
    if algo == "crc32":
        return _Crc32()
    if algo == "md5":
        return hashlib.md5(usedforsecurity=False)
    return hashlib.new(algo)


@dataclass(frozen=True)
class Check:
    """One digest to compare: `label` is what ChecksumError names."""

    label: str
    expected: str
    algo: str  # "md5", "sha1", "sha256" or "crc32"
    multipart: bool  # per part, then a digest of the part digests
    encoding: str  # "hex" (ETag) or "base64" (x-amz-checksum-*)

    def compute(self, digests: Digests) -> str:
        if self.multipart:
            combined = _new(self.algo)
            for part in digests.parts[self.algo]:
                combined.update(part)
            raw = combined.digest()
            count = len(digests.parts[self.algo])
            return f"{self._encode(raw)}-{count}"
        return self._encode(digests.whole[self.algo].digest())

    def _encode(self, raw: bytes) -> str:
        return raw.hex() if self.encoding == "hex" else base64.b64encode(raw).decode()

    def matches(self, actual: str) -> bool:
        if self.multipart and self.encoding == "base64":
            # Some stores give composite checksums without the "-N" suffix.
            expected = _SUFFIX.sub(r"\1", self.expected)
            return _SUFFIX.sub(r"\1", actual) == expected and (
                not _SUFFIX.match(self.expected) or actual == self.expected
            )
        return actual == self.expected


def checks_for(head: Mapping[str, Any], *, sha256_known: bool) -> list[Check]:
    """The checks a HEAD (with ChecksumMode=ENABLED) allows, strongest first.

    `sha256_known`: the core already checks a full-object sha256 for this file.
    """
    etag = plain_etag(head.get("ETag"))
    parts = etag_parts(etag)
    encrypted = head.get("ServerSideEncryption") in ("aws:kms", "aws:kms:dsse") or bool(
        head.get("SSECustomerAlgorithm")
    )
    multipart = multipart_etag(etag) or head.get("PartsCount", 1) > 1
    checks: list[Check] = []
    sha = str(head.get("ChecksumSHA256") or "")
    if sha and multipart:
        checks.append(Check("sha256 composite checksum", sha, "sha256", True, "base64"))
    if parts is not None and not encrypted:
        checks.append(Check("etag", etag, "md5", multipart_etag(etag), "hex"))
    if not checks and not sha256_known:
        if sha and not multipart:
            checks.append(Check("sha256", sha, "sha256", False, "base64"))
        crc = str(head.get("ChecksumCRC32") or "")
        if crc:
            composite = multipart and head.get("ChecksumType") != "FULL_OBJECT"
            checks.append(Check("crc32 checksum", crc, "crc32", composite, "base64"))
        sha1 = str(head.get("ChecksumSHA1") or "")
        if sha1 and not checks:  # SHA1 is composite for multipart uploads, as SHA256 is
            checks.append(Check("sha1 checksum", sha1, "sha1", multipart, "base64"))
    return checks


class Digests:
    """Hashes bytes as they arrive: whole-object and per part, at the part boundaries."""

    def __init__(self, checks: Sequence[Check], part_sizes: Iterable[int] | None) -> None:
        self._checks, self._part_sizes = list(checks), list(part_sizes or ())
        self.reset()

    def reset(self) -> None:
        """Start over (the bytes are being fetched again from the first one)."""
        checks, part_sizes = self._checks, self._part_sizes
        self.part_algos = sorted({c.algo for c in checks if c.multipart})
        self.whole_algos = sorted({c.algo for c in checks if not c.multipart})
        self.whole = {a: _new(a) for a in self.whole_algos}
        self.parts: dict[str, list[bytes]] = {a: [] for a in self.part_algos}
        self._sizes: Iterator[int] = iter(part_sizes)
        self._current = {a: _new(a) for a in self.part_algos}
        self._left = next(self._sizes, 0) if self.part_algos else 0
        self._filled = 0
        self.count = 0

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        self.count += len(view)
        for hasher in self.whole.values():
            hasher.update(view)
        if not self.part_algos:
            return
        while view:
            if self._left <= 0:  # more bytes than the parts add up to: one more part
                self._left = len(view)
            piece = view[: self._left]
            for hasher in self._current.values():
                hasher.update(piece)
            self._left -= len(piece)
            self._filled += len(piece)
            view = view[len(piece) :]
            if self._left == 0:
                self._close_part()

    def _close_part(self) -> None:
        for algo, hasher in self._current.items():
            self.parts[algo].append(hasher.digest())
        self._current = {a: _new(a) for a in self.part_algos}
        self._filled = 0
        self._left = next(self._sizes, 0)

    def finish(self) -> None:
        if self.part_algos and self._filled:
            self._close_part()


def uniform_parts(size: int, part_size: int) -> list[int]:
    """The part sizes of a multipart upload in equal parts (the last one shorter)."""
    if part_size <= 0:
        return [size]
    full, rest = divmod(size, part_size)
    return [part_size] * full + ([rest] if rest else [])


MIB = 1 << 20
# Part sizes that common tools use: s3transfer/aws cli 8 MiB, rclone 5 MiB, mc 16 MiB.
COMMON_PART_SIZES = (8, 16, 5, 15, 64, 32, 50, 100, 128, 10, 25, 256, 512)


def guessed_part_sizes(size: int, parts: int, limit: int = 8) -> list[int]:
    """Part sizes (whole MiB) that split `size` bytes into exactly `parts` parts, common
    ones first: for a store that cannot say the size of part 1."""

    def fits(part: int) -> bool:
        return part > 0 and -(-size // part) == parts

    found = [p * MIB for p in COMMON_PART_SIZES if fits(p * MIB)]
    low = max(1, size // parts // MIB)
    for mib in range(low, low + 4 * limit):
        if len(found) >= limit:
            break
        if fits(mib * MIB) and mib * MIB not in found:
            found.append(mib * MIB)
    return found[:limit]


def failed(checks: Sequence[Check], digests: Digests) -> tuple[Check, str] | None:
    """The first check the bytes fail, with what they gave; None when all pass."""
    for check in checks:
        actual = check.compute(digests)
        if not check.matches(actual):
            return check, actual
    return None
