"""The local record every run writes (always, W&B or not), and what goes to W&B when it is on.

Imports wandb_tables (lazily), never the reverse: the metrics flattening both use lives in eatlab.rundir.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from eatlab.rundir import RECORD_CSV, RECORD_JSONL, flat_scalars
from eatlab.utils.hydra_runtime import task_overrides
from eatlab.utils.io import atomic_write_text


def run_identity(cfg, run_dir: Path) -> dict:
    """What identifies the run in a flat record: its dir, overrides and W&B group."""
    from omegaconf import OmegaConf

    from eatlab.tracking.loggers import sweep_group

    return {
        "run_dir": str(run_dir),
        "overrides": " ".join(task_overrides()),
        "group": sweep_group(cfg, run_dir) or "",
        "language": OmegaConf.select(cfg, "language.code", default="") or "",
        "model": str(OmegaConf.select(cfg, "model.id", default="") or ""),
    }


def record_run(cfg, run_dir: Path, metrics: dict, loggers: list, results: list | None) -> None:
    """Append the flat metrics to record.jsonl, rewrite record.csv, and log tables/artifacts to W&B if on
    (`results` None: a task without sentence results, e.g. the alignment benchmark: summary scalars only)."""
    from eatlab.tracking.loggers import wandb_logger

    run_dir = Path(run_dir)
    row = {**run_identity(cfg, run_dir), **flat_scalars(metrics)}
    with (run_dir / RECORD_JSONL).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(row), lineterminator="\n")
    writer.writeheader()
    writer.writerow(row)
    atomic_write_text(run_dir / RECORD_CSV, buf.getvalue())
    wb = wandb_logger(loggers)
    if wb is not None and results is None:
        wb.experiment.summary.update(flat_scalars(metrics))
    elif wb is not None:
        from eatlab.tracking.wandb_tables import log_run_tables

        log_run_tables(wb.experiment, metrics, results, run_dir, int(cfg.get("n_sample_predictions", 20)))
