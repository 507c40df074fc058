"""SIGTERM and SIGINT end a job at once, as a failure that names the signal, never as a clean exit.

Why: SLURM pre-emption, `timeout` and Ctrl-C send these. Python's default turns SIGINT into KeyboardInterrupt,
which Lightning catches and turns into `sys.exit(1)`; Lightning's own SIGTERM handler only sets a flag that its
loops look at when a batch ends (256 sentences of model calls) and then raise `SIGTERMException`, a SystemExit
that an `except Exception` lets through as exit 0.

`install()` (called by every Hydra entry point, eatlab.cli.task) replaces both handlers: the first signal is
recorded and `Stopped` (a BaseException, so that no `except Exception` of a backend or a retry loop swallows it)
is raised where the main thread is, like Ctrl-C's KeyboardInterrupt; Lightning composes its own SIGTERM handler
with this one and passes `Stopped` on after calling its callbacks' `on_exception`. Inside `deferred()` the
handler only records the signal, and `Stopped` is raised when the block ends. `check()` raises `Stopped` once a
signal was recorded: the LLM client calls it before every model call, so that a `Stopped` lost in a place that
cannot raise (a `__del__`, a callback that swallows everything) still ends the job before the next call. A second
signal while the job is stopping ends the process at once (as SIGKILL would: committed cache rows survive).

Everything answered before the signal is in the response cache already (each answer is stored as it arrives),
so re-running the same command resumes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

HANDLED = (signal.SIGTERM, signal.SIGINT)

_received: int | None = None  # the first signal received
_defer_depth = 0


class Stopped(BaseException):  # noqa: N818 - named for what happened, like KeyboardInterrupt
    """The job was stopped by a signal; `exit_code` is the shell's convention, 128 + the signal number."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        self.signal_name = signal.Signals(self.signum).name
        self.exit_code = 128 + self.signum
        super().__init__(
            f"stopped by {self.signal_name} (exit status {self.exit_code}); every answer received so far is "
            f"in the response cache: re-run the same command to resume"
        )


def received() -> int | None:
    """The first SIGTERM/SIGINT received since `install()` (or `reset()`), else None."""
    return _received


def check() -> None:
    """Raise `Stopped` if a signal was received: a safe point between model calls."""
    if _received is not None:
        raise Stopped(_received)


def _handler(signum: int, frame) -> None:
    global _received
    if _received is not None:  # a second signal while stopping: stop now
        os._exit(128 + int(signum))
    _received = int(signum)
    if _defer_depth == 0:
        raise Stopped(signum)


def install() -> None:
    """Handle SIGTERM and SIGINT in this process (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in HANDLED:
        signal.signal(sig, _handler)


def reset() -> None:
    """Forget a received signal (tests that run several jobs in one process)."""
    global _received
    _received = None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A block that a signal does not interrupt (e.g. a training step); `Stopped` is raised when it ends."""
    global _defer_depth
    _defer_depth += 1
    try:
        yield
    finally:
        _defer_depth -= 1
    if _defer_depth == 0:
        check()


def exit_now(code: int) -> None:
    """End the process after a signal: exit handlers run and the streams are flushed, but the interpreter's
    teardown of torch, dynamo and sympy's module graph (3-5 s on a busy 2-core machine) is skipped, so that
    a stop takes well under the 10 s a scheduler grants between SIGTERM and SIGKILL."""
    import atexit
    import sys

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def stop_of(exc: BaseException) -> Stopped | None:
    """The `Stopped` behind `exc`: itself, or whatever a library raised on its way out after a signal
    (Lightning's `SIGTERMException` or `sys.exit(1)`, a KeyboardInterrupt); None for any other failure."""
    if isinstance(exc, Stopped):
        return exc
    if _received is not None:
        return Stopped(_received)
    if isinstance(exc, KeyboardInterrupt):
        return Stopped(signal.SIGINT)
    if type(exc).__name__ == "SIGTERMException":  # Lightning's, when its handler alone saw the signal
        return Stopped(signal.SIGTERM)
    return None
