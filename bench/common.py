"""What every bench script shares: clean exits on signals and errors."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable


def run(bench: Callable[[], int]) -> int:
    """Run a benchmark; SIGTERM/SIGHUP/Ctrl-C unwind through its cleanup `finally`s."""

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    try:
        return bench()
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def main_guard(main: Callable[[], int]) -> None:
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
