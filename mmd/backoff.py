"""Capped exponential backoff with jitter for models that keep failing, between passes.

A failing model is not retried by every scheduled pass; an explicit request (`mmd sync`,
`POST /sync`, SIGHUP, a manifest edit) retries it at once.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass


@dataclass
class _Failing:
    failures: int
    retry_at: float


class RetryBackoff:
    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self._failing: dict[str, _Failing] = {}

    def delay(self, failures: int) -> float:
        """Full jitter over [base/2, base]: spread out, but never much sooner than asked."""
        base = min(self.maximum, self.initial * 2 ** min(max(0, failures - 1), 40))
        return random.uniform(base / 2, base)

    def failed(self, model_id: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        failures = self._failing[model_id].failures + 1 if model_id in self._failing else 1
        wait = self.delay(failures)
        self._failing[model_id] = _Failing(failures, now + wait)
        return wait

    def succeeded(self, model_id: str) -> None:
        self._failing.pop(model_id, None)

    def forget_all(self) -> None:
        self._failing.clear()

    def deferred(self, now: float | None = None) -> dict[str, str]:
        """Models to skip in this pass, each with the reason shown in the plan."""
        now = time.monotonic() if now is None else now
        return {
            model_id: (
                f"failed {f.failures} time{'s' if f.failures != 1 else ''}; "
                f"next retry in {f.retry_at - now:.0f}s"
            )
            for model_id, f in self._failing.items()
            if f.retry_at > now
        }
