"""An aiohttp server in a daemon thread with its own loop, for synchronous tests too."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Self

from aiohttp import web


class ThreadedServer:
    """Subclasses implement `_setup()` (bind, e.g. with `_serve_app()`); start/stop here."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    async def _setup(self) -> None:
        raise NotImplementedError

    async def _serve_app(
        self,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        host: str,
        *ports: int,
    ) -> list[int]:
        """Serve every request with ``handler`` on each of ``ports``; the ports bound."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.25)
        await runner.setup()
        for port in ports:
            await web.TCPSite(runner, host, port).start()
        self._runner = runner
        return [address[1] for address in runner.addresses]

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        ready = threading.Event()
        error: list[BaseException] = []
        loop = asyncio.new_event_loop()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._setup())
            except BaseException as exc:
                error.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(loop.shutdown_default_executor())
                loop.close()

        name = f"{type(self).__name__}-{id(self):x}"
        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()
        ready.wait()
        if error:
            self._thread.join()
            self._thread = None
            raise error[0]
        return self

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self._cleanup(), loop)
            with contextlib.suppress(Exception):
                fut.result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = None
        self._loop = None
        self._runner = None

    def serve_until_killed(self, announce: Callable[[], str]) -> None:
        """Standalone mode: start, print ``announce()``, serve until SIGTERM or Ctrl-C."""
        self.start()
        try:
            sys.stdout.write(announce())
            sys.stdout.flush()
            threading.Event().wait()
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            self.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _cleanup(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        # Handlers still stalled (stall knobs) would be reported as destroyed while pending.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)


def exit_on_sigterm() -> None:
    """Make SIGTERM raise SystemExit(0) (``serve_until_killed`` then stops the server)."""

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
