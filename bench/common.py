"""What every bench script shares: clean exits on signals and errors."""

from __future__ import annotations

import contextlib
import pathlib
import signal
import subprocess
import sys
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The benches use the project's test servers (tests/servers) from a plain checkout.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.servers.isolation import SCRUBBED_VARIABLES  # noqa: E402

__all__ = [
    "ROOT",
    "SCRUBBED_VARIABLES",
    "main_guard",
    "print_targets",
    "run",
    "stop_process",
]


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


def stop_process(proc: subprocess.Popen[str], *, close_stdin: bool = False) -> None:
    """Stop a helper process: EOF on stdin if asked (it exits by itself), else or then
    SIGTERM, then SIGKILL, 10 s apart; close its pipes."""
    if proc.poll() is None and close_stdin and proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def print_targets(rows: list[tuple[str, str, str, bool]]) -> None:
    """The table every bench ends with: measure | measured | target | PASS/FAIL."""
    texts = [("measure", "measured", "target"), *((n, m, t) for n, m, t, _ in rows)]
    widths = [max(len(x[i]) for x in texts) for i in (0, 1, 2)]
    head = (
        f"{'measure':<{widths[0]}} | {'measured':>{widths[1]}} | {'target':<{widths[2]}} | verdict"
    )
    print(head)
    print("-" * len(head))
    for name, measured, target, ok in rows:
        print(
            f"{name:<{widths[0]}} | {measured:>{widths[1]}} | {target:<{widths[2]}} | "
            f"{'PASS' if ok else 'FAIL'}"
        )
    print("-" * len(head))
