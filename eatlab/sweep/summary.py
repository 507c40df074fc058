"""The sweep summary: one row per job of a multirun (overrides, main metrics, cost, status, error).

Written as `sweep_summary.csv`, `.json` and `.md` in the sweep dir by the Hydra callback when the multirun ends,
and on demand (`python -m eatlab.sweep.summary SWEEP_DIR`) for sweeps whose launcher died before the end.
A job is `ok` (metrics.json, no error.json), `failed` (error.json: its message is in the row) or `incomplete`
(neither: killed, timed out, or still running).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import yaml

from eatlab.eval.scores import SCORE_KEYS
from eatlab.utils.io import atomic_write_json, atomic_write_text

METRIC_COLUMNS = (*SCORE_KEYS, "n_sentences")
COST_COLUMNS = ("llm_calls", "llm_cache_hits", "tokens_prompt", "tokens_completion", "seconds_total")
NO_NUM = 10**9  # sorts jobs without a number last
FIXED_COLUMNS = (
    "job",
    "status",
    "overrides",
    *METRIC_COLUMNS,
    "entity_f1_ci_low",
    "entity_f1_ci_high",
    *COST_COLUMNS,
    "wandb_run_id",
    "wandb_group",
    "error_type",
    "error",
    "job_dir",
)


def find_job_dirs(sweep_dir: Path) -> list[Path]:
    """Job dirs of a sweep: every dir under it with a `.hydra/overrides.yaml` (submitit's folder excluded)."""
    sweep_dir = Path(sweep_dir)
    dirs = [p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml") if ".submitit" not in p.parts]
    return sorted(set(dirs), key=lambda d: (_job_num(d), str(d)))


def _job_num(job_dir: Path) -> int:
    """The job number: the `<num>_` prefix of the dir name, else hydra.job.num from .hydra/hydra.yaml (an
    override value with a `/` nests the job dir, so its leaf name has no prefix)."""
    head = job_dir.name.split("_", 1)[0]
    if head.isdigit():
        return int(head)
    try:
        hydra_cfg = yaml.safe_load((job_dir / ".hydra" / "hydra.yaml").read_text(encoding="utf-8"))
        return int(hydra_cfg["hydra"]["job"]["num"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return NO_NUM


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _override_pairs(overrides: list[str]) -> dict[str, str]:
    out = {}
    for ov in overrides:
        key, sep, value = str(ov).lstrip("+~").partition("=")
        if sep:
            out[key] = value
    return out


def job_row(job_dir: Path, sweep_dir: Path) -> dict:
    """The summary row of one job dir."""
    job_dir = Path(job_dir)
    try:
        overrides = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text(encoding="utf-8")) or []
    except (OSError, yaml.YAMLError):
        overrides = []
    metrics = _read_json(job_dir / "metrics.json")
    error = _read_json(job_dir / "error.json")
    status = "failed" if error else "ok" if metrics else "incomplete"
    row: dict = {
        "job": _job_num(job_dir) if _job_num(job_dir) != NO_NUM else job_dir.name,
        "status": status,
        "overrides": " ".join(str(o) for o in overrides),
    }
    for key, value in _override_pairs(overrides).items():
        row[key if key not in FIXED_COLUMNS else f"override.{key}"] = value
    m = metrics or {}
    for k in METRIC_COLUMNS:
        row[k] = m.get(k)
    lo, hi = (m.get("entity_f1_ci95") or [None, None])[:2]
    row["entity_f1_ci_low"], row["entity_f1_ci_high"] = lo, hi
    row["llm_calls"] = m.get("llm_calls")
    row["llm_cache_hits"] = m.get("llm_cache_hits")
    row["tokens_prompt"] = (m.get("tokens") or {}).get("prompt")
    row["tokens_completion"] = (m.get("tokens") or {}).get("completion")
    row["seconds_total"] = (m.get("seconds") or {}).get("total")
    wandb_dirs = sorted((job_dir / "wandb").glob("offline-run-*")) + sorted((job_dir / "wandb").glob("run-*"))
    row["wandb_run_id"] = wandb_dirs[-1].name.rsplit("-", 1)[-1] if wandb_dirs else None
    row["wandb_group"] = _record_field(job_dir, "group")
    row["error_type"] = (error or {}).get("error_type")
    row["error"] = (error or {}).get("message")
    row["job_dir"] = (
        str(job_dir.relative_to(sweep_dir)) if job_dir.is_relative_to(sweep_dir) else str(job_dir)
    )
    return row


def _record_field(job_dir: Path, key: str):
    path = job_dir / "record.jsonl"
    if not path.is_file():
        return None
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        return None
    try:
        return json.loads(lines[-1]).get(key) or None
    except ValueError:
        return None


def summarize_sweep(sweep_dir: str | Path) -> list[dict]:
    """One row per job dir of the sweep, in job order."""
    sweep_dir = Path(sweep_dir)
    return [job_row(d, sweep_dir) for d in find_job_dirs(sweep_dir)]


def _columns(rows: list[dict]) -> list[str]:
    extra = []
    for r in rows:
        extra += [k for k in r if k not in FIXED_COLUMNS and k not in extra]
    # job, status, the override keys, then metrics, cost and the rest
    return ["job", "status", *extra, *[c for c in FIXED_COLUMNS if c not in ("job", "status")]]


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def to_markdown(rows: list[dict], sweep_dir: Path) -> str:
    n_ok = sum(r["status"] == "ok" for r in rows)
    lines = [
        f"# Sweep summary: {sweep_dir}",
        "",
        f"{len(rows)} jobs: {n_ok} ok, {sum(r['status'] == 'failed' for r in rows)} failed, "
        f"{sum(r['status'] == 'incomplete' for r in rows)} incomplete. Scores are fractions in [0, 1].",
        "",
        "| job | status | overrides | entity F1 | ref. token micro F1 | sentences | LLM calls | cache hits | seconds | error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        err = (r.get("error") or "").replace("|", "\\|").replace("\n", " ")
        cells = [
            r["job"],
            r["status"],
            f"`{r['overrides']}`",
            r["entity_f1"],
            r["reference_token_micro_f1"],
            r["n_sentences"],
            r["llm_calls"],
            r["llm_cache_hits"],
            r["seconds_total"],
            (err[:200] + "...") if len(err) > 200 else err,
        ]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_sweep_summary(sweep_dir: str | Path) -> list[dict]:
    """Write sweep_summary.csv/.json/.md into the sweep dir and return the rows."""
    sweep_dir = Path(sweep_dir)
    rows = summarize_sweep(sweep_dir)
    cols = _columns(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k) for k in cols})
    atomic_write_text(sweep_dir / "sweep_summary.csv", buf.getvalue())
    atomic_write_json(
        sweep_dir / "sweep_summary.json",
        {
            "sweep_dir": str(sweep_dir),
            "n_jobs": len(rows),
            "n_ok": sum(r["status"] == "ok" for r in rows),
            "n_failed": sum(r["status"] == "failed" for r in rows),
            "n_incomplete": sum(r["status"] == "incomplete" for r in rows),
            "jobs": rows,
        },
    )
    atomic_write_text(sweep_dir / "sweep_summary.md", to_markdown(rows, sweep_dir))
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python -m eatlab.sweep.summary SWEEP_DIR", file=sys.stderr)
        return 2
    rows = write_sweep_summary(argv[0])
    print(to_markdown(rows, Path(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
