"""One progress line for long work: `what: done/total unit (elapsed, eta)`, at most every few seconds and at the end,
so a run of hundreds of model calls says how far it is (the align-eval loop, the hf backend's batches)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


def progress_logger(
    total: int, what: str, unit: str = "pairs", every_s: float = 10.0, logger: logging.Logger | None = None
) -> Callable[[int], None]:
    """A callable(done) logging `what: done/total unit (elapsed, eta)` at most every `every_s` and at the end."""
    log = logger or logging.getLogger("eatlab")
    t0 = time.perf_counter()
    last = [0.0]

    def report(done: int) -> None:
        now = time.perf_counter() - t0
        if done < total and now - last[0] < every_s:
            return
        last[0] = now
        eta = now / done * (total - done) if done else 0.0
        log.info("%s: %d/%d %s (%.1f s, eta %.0f s)", what, done, total, unit, now, eta)

    return report
