"""Hydra callback: when a multirun ends, write the sweep summary (one row per job) into the sweep dir.

Wired in conf/hydra/default.yaml (`hydra.callbacks.sweep_summary`). It runs in the launching process after
every job has returned, whatever the launcher (basic, joblib, submitit); jobs report failures through their
error.json (see eatlab.cli.common.guarded), so a failed job is a row, not a crash.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from eatlab.sweep.summary import write_sweep_summary

log = logging.getLogger("eatlab")


class SweepSummaryCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            rows = write_sweep_summary(sweep_dir)
        except Exception as exc:  # noqa: BLE001 - a summary problem must not hide the jobs' results
            log.error("sweep summary not written: %s: %s", type(exc).__name__, exc)
            return
        n_ok = sum(r["status"] == "ok" for r in rows)
        log.info("sweep summary: %d jobs, %d ok, %d failed -> %s", len(rows), n_ok,
                 sum(r["status"] == "failed" for r in rows), sweep_dir / "sweep_summary.md")
        for r in rows:
            if r["status"] != "ok":
                log.warning("job %s %s: %s (%s)", r["job"], r["status"], r.get("error") or "no metrics.json",
                            r["overrides"])
