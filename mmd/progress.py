"""Progress bars for `mmd sync` (tqdm, one bar per file in flight)."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

from mmd.sync import SyncEvents


class ProgressBars(SyncEvents):
    def __init__(self, enabled: bool = True) -> None:
        # Bars only on a terminal: logs and CI output stay one line per event.
        self.enabled = enabled and sys.stderr.isatty()
        self.bars: dict[tuple[str, str], Any] = {}

    def file_started(self, model_id: str, path: str, total: int | None, done: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm  # only on a terminal, when something downloads

        self.bars[(model_id, path)] = tqdm(
            total=total,
            initial=done,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"{model_id}/{path}"[-40:],
            leave=False,
            file=sys.stderr,
        )

    def file_progress(
        self, model_id: str, path: str, done: int, total: int | None, rate: float
    ) -> None:
        bar = self.bars.get((model_id, path))
        if bar is not None:
            bar.update(done - bar.n)

    def file_finished(self, model_id: str, path: str) -> None:
        bar = self.bars.pop((model_id, path), None)
        if bar is not None:
            bar.close()

    def __enter__(self) -> ProgressBars:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()
