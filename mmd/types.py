"""Plain data shared by every module and by source plugins."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ModelType(StrEnum):
    TEXT_GENERATION = "text-generation"
    TEXT2TEXT_GENERATION = "text2text-generation"
    TEXT_CLASSIFICATION = "text-classification"
    TOKEN_CLASSIFICATION = "token-classification"
    FILL_MASK = "fill-mask"
    QUESTION_ANSWERING = "question-answering"
    SUMMARIZATION = "summarization"
    TRANSLATION = "translation"
    FEATURE_EXTRACTION = "feature-extraction"
    SENTENCE_SIMILARITY = "sentence-similarity"
    EMBEDDING = "embedding"
    ZERO_SHOT_CLASSIFICATION = "zero-shot-classification"
    AUTOMATIC_SPEECH_RECOGNITION = "automatic-speech-recognition"
    TEXT_TO_SPEECH = "text-to-speech"
    TEXT_TO_IMAGE = "text-to-image"
    IMAGE_CLASSIFICATION = "image-classification"
    IMAGE_TO_TEXT = "image-to-text"
    OBJECT_DETECTION = "object-detection"
    IMAGE_SEGMENTATION = "image-segmentation"
    OTHER = "other"


class ModelStatus(StrEnum):
    PENDING = "pending"
    DOWNLOADING = "downloading"
    AVAILABLE = "available"
    ERROR = "error"
    DELETED = "deleted"


class State(StrEnum):
    PRESENT = "present"
    ABSENT = "absent"


@dataclass(frozen=True)
class ModelSpec:
    """One model as the manifest declares it; `options` holds the source's own keys."""

    model_id: str
    source: str
    model_type: ModelType | None = None  # None: not in the manifest (a source may fill it)
    state: State = State.PRESENT
    options: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    where: str = ""  # "file:line:col" of the model's key, for messages


def spec_digest(spec: ModelSpec) -> str:
    """What about a spec decides the files on disk (not `type` or `metadata`).

    `revision` is left out (the resolved version covers it) and a single glob counts as a
    one-item list, so spelling a setting differently does not re-stage a model.
    """
    options = {
        key: [value] if key in ("include", "exclude") and isinstance(value, str) else value
        for key, value in spec.options.items()
        if key != "revision"
    }
    text = json.dumps([spec.source, options], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RemoteFile:
    """One file a source says belongs to a model version.

    `path` is relative to the model folder and is validated by the core before any
    filesystem call. `url`/`headers` are for the core's HTTP transfer; a source with its
    own `fetch` may leave them empty. `sha256` or `size` may be unknown (None).
    `git_sha1` is a git blob id (sha1 of b"blob <size>\0" + data), what git hosts give for
    files not in LFS; the core checks it when no sha256 is known (it needs `size`).
    `validator` is an opaque token that changes whenever the file's content does (an S3
    ETag): when a new version lists a file with the validator and size of the file in
    storage, the core reuses that file (if it still hashes to its recorded sha256)
    instead of fetching it again, even without a sha256 from the source.
    """

    path: str
    size: int | None = None
    sha256: str | None = None
    url: str | None = None
    # repr=False: headers may carry a token, and a repr can end up in a log line.
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    git_sha1: str | None = None
    validator: str | None = None


@dataclass(frozen=True)
class Release:
    """What a source resolved: one immutable version of a model and its files."""

    version: str
    files: tuple[RemoteFile, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    model_type: str | None = None  # used when the manifest gives no `type`


@dataclass
class FileEntry:
    path: str
    size: int
    sha256: str | None
    validator: str | None = None  # the source's RemoteFile.validator, when it gave one


@dataclass
class ModelEntry:
    """One registry record (SPEC §4)."""

    model_id: str
    source: str
    model_type: str
    path: str
    status: ModelStatus
    version: str | None = None
    size_bytes: int = 0
    download_date: str | None = None
    files: list[FileEntry] = field(default_factory=list)
    error: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # Digest of the manifest's source settings that produced this copy: a changed
    # `include` or `filename` is an update even when the remote version is the same.
    spec_digest: str | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        # A revision per assignment lets the registry re-serialise only changed entries.
        object.__setattr__(self, "_revision", getattr(self, "_revision", 0) + 1)

    @property
    def revision(self) -> int:
        return int(getattr(self, "_revision", 0))

    def to_json(self) -> dict[str, Any]:
        # By hand rather than dataclasses.asdict, whose deep copy dominated saving a
        # registry of 10,000 entries.
        return {
            "model_id": self.model_id,
            "source": self.source,
            "model_type": self.model_type,
            "path": self.path,
            "status": str(self.status),
            "version": self.version,
            "size_bytes": self.size_bytes,
            "download_date": self.download_date,
            "files": [_file_json(f) for f in self.files],
            "error": self.error,
            "metadata": self.metadata,
            "spec_digest": self.spec_digest,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelEntry:
        files = [FileEntry(**f) for f in data.get("files") or []]
        return cls(
            model_id=str(data["model_id"]),
            source=str(data["source"]),
            model_type=str(data.get("model_type") or ModelType.OTHER),
            path=str(data["path"]),
            status=ModelStatus(data["status"]),
            version=data.get("version"),
            size_bytes=int(data.get("size_bytes") or 0),
            download_date=data.get("download_date"),
            files=files,
            error=data.get("error"),
            metadata=dict(data.get("metadata") or {}),
            spec_digest=data.get("spec_digest"),
        )


def _file_json(f: FileEntry) -> dict[str, Any]:
    data: dict[str, Any] = {"path": f.path, "size": f.size, "sha256": f.sha256}
    if f.validator is not None:  # only sources that give one add the key
        data["validator"] = f.validator
    return data
