"""Fixtures: an isolated MMD_HOME, moto's S3 server on 127.0.0.1, and a proxy before it.

The tests never reach AWS: credentials are fakes, AWS config files point into the test's
folder, and the instance metadata lookup is off.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from mmd.cli import main

MIB = 1 << 20
BUCKET = "models"

# Variables that would point mmd or boto3 at a developer's setup instead of the tests'.
SCRUBBED = (
    "MODEL_STORAGE_DIR",
    "MODEL_REGISTRY_FILE",
    "MMD_MANIFEST",
    "MMD_CONFIG",
    "MAX_CONCURRENT_DOWNLOADS",
    "DOWNLOAD_TIMEOUT",
    "VERIFY_CHECKSUMS",
    "STATE_DIRECTORY",
    "CONFIGURATION_DIRECTORY",
    "CREDENTIALS_DIRECTORY",
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "all_proxy",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CA_BUNDLE",
)
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIATESTTESTTESTTEST",
    "AWS_SECRET_ACCESS_KEY": "test-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class Home:
    root: Path

    @property
    def storage(self) -> Path:
        return self.root / "models"

    @property
    def manifest(self) -> Path:
        return self.root / "models.yaml"

    def write_manifest(self, text: str) -> Path:
        self.manifest.write_text(textwrap.dedent(text).lstrip())
        return self.manifest

    def registry(self) -> dict[str, Any]:
        return json.loads((self.storage / "model_registry.json").read_text())

    def entry(self, model_id: str) -> dict[str, Any]:
        return self.registry()["models"][model_id]

    def model_files(self, model_id: str) -> dict[str, bytes]:
        root = self.storage / "s3" / model_id
        return {
            p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()
        }

    def part_size(self) -> int:
        parts = list((self.storage / "cache").rglob("*.part"))
        return parts[0].stat().st_size if parts else 0


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    for name in SCRUBBED:
        monkeypatch.delenv(name, raising=False)
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    root = tmp_path / "home"
    root.mkdir()
    monkeypatch.setenv("MMD_HOME", str(root))
    # Never a developer's ~/.aws, never the instance metadata address.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return Home(root)


# -- moto ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@dataclass
class S3:
    """The test's view of moto: a boto3 client that talks to it directly."""

    endpoint: str
    client: Any

    def put(self, key: str, data: bytes, bucket: str = BUCKET, **kw: Any) -> str:
        return str(self.client.put_object(Bucket=bucket, Key=key, Body=data, **kw)["ETag"])

    def put_multipart(
        self, key: str, data: bytes, part_size: int = 5 * MIB, bucket: str = BUCKET, **extra: Any
    ) -> str:
        import io

        config = TransferConfig(
            multipart_threshold=part_size, multipart_chunksize=part_size, use_threads=False
        )
        self.client.upload_fileobj(
            io.BytesIO(data), bucket, key, Config=config, ExtraArgs=extra or None
        )
        return self.etag(key, bucket)

    def put_parts(self, key: str, parts: Sequence[bytes], bucket: str = BUCKET) -> str:
        """A multipart upload with parts of the sizes given (unequal ones too)."""
        upload = self.client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        done = []
        for number, data in enumerate(parts, start=1):
            answer = self.client.upload_part(
                Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=data
            )
            done.append({"PartNumber": number, "ETag": answer["ETag"]})
        self.client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": done}
        )
        return self.etag(key, bucket)

    def etag(self, key: str, bucket: str = BUCKET) -> str:
        return str(self.client.head_object(Bucket=bucket, Key=key)["ETag"])


@pytest.fixture
def s3(moto_endpoint: str) -> S3:
    """moto, emptied, with the bucket `models`."""
    reset = urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")
    with urllib.request.urlopen(reset) as answer:
        answer.read()
    client = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )
    client.create_bucket(Bucket=BUCKET)
    return S3(moto_endpoint, client)


# -- a proxy between mmd and moto: logs, throttles, corrupts, denies ----------------


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    sent: int = 0  # response body bytes


@dataclass
class Proxy:
    upstream: tuple[str, int]
    log: list[Request] = field(default_factory=list)
    rate: float | None = None  # bytes per second for response bodies
    corrupt: set[str] = field(default_factory=set)  # paths whose GET bodies get a byte flipped
    deny: bool = False  # answer every request with 403 AccessDenied
    ignore_part_number: bool = False  # a store that does not know `?partNumber=`
    before_get: Callable[[str], None] | None = None  # once, before the first object GET
    endpoint: str = ""

    def gets(self, path: str | None = None) -> list[Request]:
        """Object downloads (not listings), of one path or all."""
        return [
            r
            for r in self.log
            if r.method == "GET" and "?" not in r.path and (path is None or r.path == path)
        ]


def _handler(proxy: Proxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _forward(self) -> None:
            path = self.path.split("?", 1)[0]
            request = Request(self.command, self.path, self.headers.get("Range"))
            proxy.log.append(request)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            if proxy.deny:
                denied = (
                    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
                    b"<Message>Access Denied</Message></Error>"
                )
                self.send_response(403)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(denied)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(denied)
                return
            if self.command == "GET" and "?" not in self.path and proxy.before_get is not None:
                hook, proxy.before_get = proxy.before_get, None
                hook(path)
            target = self.path
            if proxy.ignore_part_number and "?partNumber=" in target:
                target = path
            upstream = http.client.HTTPConnection(*proxy.upstream, timeout=30)
            upstream.request(self.command, target, body=body, headers=dict(self.headers))
            answer = upstream.getresponse()
            self.send_response(answer.status)
            for name, value in answer.getheaders():
                if name.lower() not in ("connection", "transfer-encoding", "server", "date"):
                    self.send_header(name, value)
            self.end_headers()
            flip = self.command == "GET" and answer.status < 300 and path in proxy.corrupt
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                while chunk := answer.read(64 << 10):
                    if flip:
                        chunk, flip = bytes([chunk[0] ^ 0xFF]) + chunk[1:], False
                    self.wfile.write(chunk)
                    request.sent += len(chunk)
                    if proxy.rate:
                        time.sleep(len(chunk) / proxy.rate)
            upstream.close()

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

    return Handler


@pytest.fixture
def proxy(s3: S3) -> Iterator[Proxy]:
    host, port = s3.endpoint.removeprefix("http://").split(":")
    state = Proxy(upstream=(host, int(port)))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


# -- running mmd ----------------------------------------------------------------------


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


@pytest.fixture
def mmd(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """`mmd ARGS` in this process; the s3 source comes from the installed entry point."""

    def run(*args: str) -> Result:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """`python -m mmd ARGS` as a real process with the test's environment."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mmd", *args],
            env=dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}")
