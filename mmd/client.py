"""Talking to a running daemon from the command line (`mmd sync` while `mmd run` runs).

Plain urllib: a CLI call that only asks the daemon for a pass should not pay for aiohttp.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Protocol

from mmd.config import Settings
from mmd.errors import MmdError
from mmd.plan import ActionKind
from mmd.sync import Outcome
from mmd.urls import is_loopback


class Reporter(Protocol):
    def report(self, outcomes: list[Outcome], total: int | None = None) -> int: ...


class DaemonClient:
    def __init__(self, url: str, settings: Settings, poll_s: float = 0.25) -> None:
        self.url = url.rstrip("/")
        self.settings = settings
        self.poll_s = poll_s

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.settings.api_token is not None and self._may_send_token():
            request.add_header("Authorization", f"Bearer {self.settings.api_token.reveal()}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error") or exc.reason
            except (ValueError, AttributeError):
                message = exc.reason
            raise MmdError(f"the daemon at {self.url} answered {exc.code}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise MmdError(
                f"the daemon holding the storage does not answer at {self.url}: {reason}",
                hint="check `systemctl status mmd`",
            ) from None

    def _may_send_token(self) -> bool:
        """The lock file names the URL: send the token only to this machine or api.host."""
        host = urllib.parse.urlsplit(self.url).hostname or ""
        return is_loopback(host) or host == self.settings.api_host

    def sync(
        self, ids: list[str] | None, pid: str, reporter: Reporter, manifest: Path | None = None
    ) -> int:
        """Ask for a pass, wait for it to finish, and print what it did."""
        health = self.call("GET", "/healthz")
        theirs = health.get("manifest", {}).get("path")
        if manifest is not None and theirs and Path(theirs).absolute() != manifest.absolute():
            print(
                f"mmd: note: the daemon applies its own manifest {theirs}, not {manifest}",
                file=sys.stderr,
            )
        accepted = self.call("POST", "/sync", {"ids": ids} if ids else {})
        number = int(accepted["pass"])
        print(
            f"mmd: the daemon (pid {pid}) holds the storage; it runs this as pass {number}",
            file=sys.stderr,
        )
        while True:
            passes = self.call("GET", "/healthz")["passes"]
            mine = [r for r in passes.get("recent") or [] if r["number"] == number]
            if mine:
                last = mine[0]
                break
            if passes["completed"] >= number:
                # Ours scrolled out of the recent list: every pass since covered our ids.
                last = passes["last"]
                break
            time.sleep(self.poll_s)
        if last["error"]:
            print(f"mmd: pass {last['number']}: {last['error']}", file=sys.stderr)
        outcomes = [
            Outcome(c["model_id"], ActionKind(c["action"]), c["ok"], c["message"])
            for c in last["changes"]
        ]
        code = reporter.report(outcomes, total=last["models"])
        return 1 if last["error"] else code
