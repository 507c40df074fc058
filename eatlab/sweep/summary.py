"""The sweep summary: one row per job of a multirun (overrides, main metrics, cost, status, error).

Written as `sweep_summary.csv`, `.json` and `.md` in the sweep dir by the Hydra callback when the multirun ends,
and on demand (`python -m eatlab.sweep.summary SWEEP_DIR`) for sweeps whose launcher died before the end.
A job is `ok` (metrics.json, no error.json), `failed` (error.json: its message is in the row) or `incomplete`
(neither: killed, timed out, or still running).
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from eatlab.errors import DataError
from eatlab.eval.scores import SCORE_KEYS
from eatlab.rundir import FAILED, OVERRIDES, STATUS_LABELS, RunDir, iter_run_dirs
from eatlab.utils.io import atomic_write_json, atomic_write_text

METRIC_COLUMNS = (*SCORE_KEYS, "n_sentences")
COST_COLUMNS = ("llm_calls", "llm_cache_hits", "tokens_prompt", "tokens_completion", "seconds_total")
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


def find_job_dirs(sweep_dir: Path) -> list[RunDir]:
    """Job dirs of a sweep: every dir under it with a `.hydra/overrides.yaml` (submitit's folder excluded)."""
    return list(iter_run_dirs(sweep_dir, markers=(OVERRIDES,)))


def _override_pairs(overrides: list[str]) -> dict[str, str]:
    out = {}
    for ov in overrides:
        key, sep, value = str(ov).lstrip("+~").partition("=")
        if sep:
            out[key] = value
    return out


def job_row(job: RunDir | Path, sweep_dir: Path) -> dict:
    """The summary row of one job dir; a damaged file makes the job `failed` with its one-line error, never
    a crash of the summary (it runs when the sweep ends, whatever state the jobs are in)."""
    rd = job if isinstance(job, RunDir) else RunDir(job, sweep_dir)
    problems: list[str] = []

    def read(attr: str, default):
        try:
            return getattr(rd, attr)
        except DataError as exc:
            problems.append(str(exc))
            return default

    overrides = read("overrides", [])
    metrics = read("metrics", None)
    error = read("error", None)
    status = rd.status_label if not problems else STATUS_LABELS[FAILED]
    row: dict = {
        "job": rd.job_num if rd.job_num is not None else rd.path.name,
        "status": status,
        "overrides": " ".join(overrides),
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
    row["wandb_run_id"] = rd.wandb_run_id
    row["wandb_group"] = read("last_record", {}).get("group") or None
    row["error_type"] = (error or {}).get("error_type") or ("DataError" if problems else None)
    row["error"] = "; ".join(filter(None, [(error or {}).get("message"), *problems])) or None
    row["job_dir"] = (
        str(rd.path.relative_to(sweep_dir)) if rd.path.is_relative_to(sweep_dir) else str(rd.path)
    )
    return row


def summarize_sweep(sweep_dir: str | Path) -> list[dict]:
    """One row per job dir of the sweep, in job order."""
    sweep_dir = Path(sweep_dir)
    return [job_row(rd, sweep_dir) for rd in find_job_dirs(sweep_dir)]


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
