"""The local record every run writes (always), and what goes to W&B when it is on."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from eatlab.utils.io import atomic_write_text


def flat_scalars(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Nested numeric entries flattened to `a/b/c` keys (for CSV rows and W&B summaries)."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, bool):
            continue
        if isinstance(v, int | float):
            out[key] = v
        elif isinstance(v, dict):
            out.update(flat_scalars(v, key + "/"))
    return out


def record_run(cfg, run_dir: Path, metrics: dict, loggers: list, results: list) -> None:
    run_dir = Path(run_dir)
    flat = flat_scalars(metrics)
    with (run_dir / "record.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"run_dir": str(run_dir), **flat}, ensure_ascii=False) + "\n")
    keys = sorted(flat)
    lines = [",".join(keys), ",".join(str(flat[k]) for k in keys)]
    atomic_write_text(run_dir / "record.csv", "\n".join(lines) + "\n")
    for lg in loggers:
        if lg.__class__.__name__ == "WandbLogger":
            from eatlab.tracking.wandb_tables import log_run_tables

            log_run_tables(lg.experiment, metrics, results, run_dir, int(cfg.get("n_sample_predictions", 20)))
    _ = csv  # csv kept for future multi-row records
