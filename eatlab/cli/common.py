"""What every Hydra entry point shares: one-line errors, failure records in multiruns, the run dir."""

from __future__ import annotations

import contextlib
import functools
import sys
import traceback
from pathlib import Path

from eatlab.errors import EatlabError
from eatlab.utils.io import atomic_write_json


def current_run_dir(cfg=None) -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # noqa: BLE001 - composed without Hydra's runtime (tests, notebooks)
        return Path(cfg.paths.run_dir) if cfg is not None else Path.cwd()


def is_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001
        return False


def guarded(task):
    """Run a Hydra task so that errors never cost finished work or print a wall of traceback.

    The error is written to `<run dir>/error.json`. A single run prints `error: <message>` (EatlabError) and
    exits 2; in a multirun the job is marked failed and the sweep goes on with the next job.
    """

    @functools.wraps(task)
    def wrapper(cfg):
        try:
            # a re-run in the same run dir (hydra.run.dir=...): an earlier failure record is not this run's
            with contextlib.suppress(Exception):
                (current_run_dir(cfg) / "error.json").unlink(missing_ok=True)
            return task(cfg)
        except (EatlabError, Exception) as exc:
            run_dir = current_run_dir(cfg)
            user_error = isinstance(exc, EatlabError)
            atomic_write_json(
                run_dir / "error.json",
                {
                    "status": "failed",
                    "error_type": type(exc).__name__,
                    "message": str(exc),
                    "traceback": None if user_error else traceback.format_exc(),
                },
            )
            print(f"error: {exc}" if user_error else f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
            if is_multirun():
                return None
            if user_error:
                sys.exit(exc.exit_code)
            raise

    return wrapper
