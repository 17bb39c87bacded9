"""Logging setup: one line per event; journald gets priorities and no timestamps."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

# syslog priorities, which journald reads from a `<N>` line prefix (SyslogLevelPrefix=).
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


_TIME = "%Y-%m-%dT%H:%M:%S"


class StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the moment (it may be replaced after setup)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        priority = _PRIORITY.get(record.levelno, 6)
        # journald splits on newlines: a traceback's extra lines keep the record's priority.
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


def stderr_is_journal(env: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """True when stderr is connected to journald (systemd sets JOURNAL_STREAM=dev:inode)."""
    value = (env if env is not None else os.environ).get("JOURNAL_STREAM", "")
    dev, _, inode = value.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(inode))
    except (ValueError, OSError, AttributeError):
        return False


def setup_logging(verbose: bool, *, daemon: bool = False) -> None:
    handler = StderrHandler()
    if daemon and stderr_is_journal():
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    elif daemon:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", _TIME)
        )
    else:
        handler.setFormatter(logging.Formatter("mmd: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("mmd").setLevel(logging.DEBUG if verbose else logging.INFO)
    # APScheduler logs every job run at INFO; the daemon logs its passes itself.
    logging.getLogger("apscheduler").setLevel(logging.DEBUG if verbose else logging.WARNING)
    # watchdog logs every inotify event at DEBUG (thousands of lines per download), and an
    # ERROR for events still queued when the daemon stops. A watch thread that really dies
    # is reported by the daemon itself (threading.excepthook) and restarted.
    logging.getLogger("watchdog").setLevel(logging.CRITICAL)
