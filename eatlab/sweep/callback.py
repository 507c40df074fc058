"""Hydra callback: when a multirun ends, write the sweep summary (one row per job) into the sweep dir.

Wired in conf/hydra/default.yaml (`hydra.callbacks.sweep_summary`). It runs in the launching process after
every job has returned, whatever the launcher (basic, joblib, submitit); jobs report failures through their
error.json (see eatlab.cli.task.run_task), so a failed job is a row, not a crash. If the launcher itself dies
first (a SLURM job killed at its time limit, a joblib worker killed by the OOM killer), the summary is still
written when the launching process exits, with the unfinished jobs marked `incomplete`.

The outcome (`last_outcome()`: jobs, ok, failed, incomplete, summary path) stays in the launching process for
the entry point, which exits with status 1 when any job did not end `ok` (eatlab.cli.task).
"""

from __future__ import annotations

import atexit
import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from eatlab.sweep.summary import write_sweep_summary

log = logging.getLogger("eatlab")

_last_outcome: dict | None = None  # of the sweep that ended last in this process


def last_outcome() -> dict | None:
    """{"jobs", "ok", "failed", "incomplete", "summary"} of the last multirun that ended in this process."""
    return _last_outcome


class SweepSummaryCallback(Callback):
    def __init__(self) -> None:
        self._pending: Path | None = None  # the sweep dir until its summary is written

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        global _last_outcome
        _last_outcome = None
        self._pending = Path(str(config.hydra.sweep.dir))
        atexit.register(self._at_exit)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self._write(Path(str(config.hydra.sweep.dir)))
        self._pending = None

    def _at_exit(self) -> None:
        if self._pending is not None and self._pending.is_dir():
            log.warning("the sweep stopped before its end; summary of the jobs so far:")
            self._write(self._pending)
            self._pending = None

    @staticmethod
    def _write(sweep_dir: Path) -> None:
        global _last_outcome
        try:
            rows = write_sweep_summary(sweep_dir)
        except Exception as exc:  # noqa: BLE001 - a summary problem must not hide the jobs' results
            log.error("sweep summary not written: %s: %s", type(exc).__name__, exc)
            _last_outcome = {"jobs": 0, "ok": 0, "failed": 0, "incomplete": 0, "summary": None}
            return
        n_ok = sum(r["status"] == "ok" for r in rows)
        n_failed = sum(r["status"] == "failed" for r in rows)
        _last_outcome = {
            "jobs": len(rows),
            "ok": n_ok,
            "failed": n_failed,
            "incomplete": len(rows) - n_ok - n_failed,
            "summary": str(sweep_dir / "sweep_summary.md"),
        }
        log.info(
            "sweep summary: %d jobs, %d ok, %d failed, %d incomplete -> %s",
            len(rows),
            n_ok,
            n_failed,
            len(rows) - n_ok - n_failed,
            sweep_dir / "sweep_summary.md",
        )
        for r in rows:
            if r["status"] != "ok":
                log.warning(
                    "job %s %s: %s (%s)",
                    r["job"],
                    r["status"],
                    r.get("error") or "no metrics.json",
                    r["overrides"],
                )
