"""SIGKILL a process at an exact file operation, to test that a run killed there resumes correctly.

A test tool, installed from outside the package code: put a `sitecustomize.py` containing

    from eatlab.testing.killpoint import install_from_env; install_from_env()

on the child's PYTHONPATH and set `EATLAB_KILLPOINT=EVENT:SUFFIX[:N]`, e.g. `rename:forward.jsonl.partial` (the
moment the first artifact gets its final name) or `append:backward.jsonl.partial:2` (the second time records
are appended to the backward artifact). The process then kills itself with SIGKILL, as `kill -9` would, at that
point: no finally blocks, no atexit, nothing flushed. Uses Python's audit hooks (`open`, `os.rename`).
"""

from __future__ import annotations

import os
import signal
import sys

ENV = "EATLAB_KILLPOINT"
EVENTS = ("open", "append", "write", "rename")


def _matches(event: str, args: tuple, want: str, suffix: str) -> bool:
    if want == "rename":
        return event == "os.rename" and str(args[0]).endswith(suffix)
    if event != "open" or not args or not str(args[0]).endswith(suffix):
        return False
    mode = str(args[1]) if len(args) > 1 and args[1] is not None else "r"
    if want == "append":
        return "a" in mode
    if want == "write":
        return "w" in mode or "a" in mode
    return True


def install(spec: str) -> None:
    """Kill this process at the N-th (default first) file event matching `EVENT:SUFFIX[:N]`."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] not in EVENTS:
        raise ValueError(f"{ENV}={spec}: expected EVENT:SUFFIX[:N] with EVENT one of {', '.join(EVENTS)}")
    want, suffix = parts[0], parts[1]
    remaining = [int(parts[2]) if len(parts) == 3 else 1]

    def hook(event: str, args: tuple) -> None:
        if _matches(event, args, want, suffix):
            remaining[0] -= 1
            if remaining[0] == 0:
                os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)


def install_from_env() -> None:
    spec = os.environ.get(ENV)
    if spec:
        install(spec)
