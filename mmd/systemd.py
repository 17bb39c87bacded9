"""sd_notify without dependencies: READY, STATUS, WATCHDOG, RELOADING, STOPPING.

The protocol is one AF_UNIX datagram of newline-separated `KEY=VALUE` lines sent to
`$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace). Without
`NOTIFY_SOCKET` (not started by systemd with Type=notify) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract socket namespace
        self.address = address or None
        self._watchdog_usec = _watchdog_usec(env)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one notification; False when there is no socket or it failed (logged)."""
        if self.address is None:
            return False
        message = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(message)
        except OSError as exc:
            # A lost notification must never take the daemon down.
            log.warning("sd_notify to %r failed: %s", self.address.replace("\0", "@"), exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        # systemd >= 253 wants the monotonic time with RELOADING=1 (Type=notify-reload).
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask systemd for more time to start (or stop) than TimeoutStartSec= allows."""
        return self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half of WatchdogSec, or None when unset."""
        return None if self._watchdog_usec is None else self._watchdog_usec / 2_000_000


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    # The watchdog is meant for the main process only: a child must not ping it.
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec


def _one_line(text: str) -> str:
    return " ".join(text.split())
