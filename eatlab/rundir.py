"""The run dir: its layout, the metrics.json schema, and the one reader of run dirs and their JSONL files.

Every writer of metrics.json (the EAT run, the encoder baseline, the extractor evaluation) goes through
`build_metrics`, and every reader (sweep summary, analysis, W&B tables, notebooks) through `RunDir`, so the
file names, the schema version and the error messages cannot drift apart. Bottom layer: it imports only
eatlab.errors, eatlab.utils and eatlab.paths.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from eatlab.errors import DataError
from eatlab.utils.io import atomic_write_json

# ------------------------------------------------------------------------------------------------ layout
METRICS = "metrics.json"  # written last: its presence marks a finished run
EXTRACTOR_METRICS = "extractor_metrics.json"  # the extractor evaluation's metrics (same schema)
PROVENANCE = "provenance.json"
ERROR = "error.json"  # only for a failed job
PREDICTIONS = "predictions.conll"  # token, gold tag, predicted tag
RESOLVED_CONFIG = "resolved_config.yaml"
GIT_DIFF = "git.diff"
HYDRA_CONFIG = ".hydra/config.yaml"
HYDRA_RUNTIME = ".hydra/hydra.yaml"
OVERRIDES = ".hydra/overrides.yaml"
RECORD_JSONL = "record.jsonl"
RECORD_CSV = "record.csv"
WANDB_DIR = "wandb"
ARTIFACTS_DIR = "artifacts"

# the per-sample JSONL artifacts: ARTIFACTS_DIR/<stage>.jsonl
FORWARD = "forward"
NER = "ner"
BACKWARD = "backward"
ATTRIBUTION = "attribution"
STAGES = (FORWARD, NER, BACKWARD, ATTRIBUTION)
# the alignment benchmark's per-pair records (eatlab-align-eval)
ALIGN_BACKWARD = "align_backward"
ALIGN_NAMING = "align_naming"


def artifact_name(stage: str) -> str:
    """The artifact's path relative to the run dir, e.g. `artifacts/forward.jsonl`."""
    return f"{ARTIFACTS_DIR}/{stage}.jsonl"


# ------------------------------------------------------------------------------------------------ status
DONE, FAILED, RUNNING = "done", "failed", "running"
# what the sweep summary and the analysis tables print (a dir without either file may also be a killed job)
STATUS_LABELS = {DONE: "ok", FAILED: "failed", RUNNING: "incomplete"}


# ------------------------------------------------------------------------------------------------ reading
def read_json(path: str | Path) -> Any:
    """The parsed file, None when absent; invalid JSON fails in one line naming the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise DataError(path, f"not valid JSON ({exc})") from None


def read_yaml(path: str | Path) -> Any:
    """The parsed file, None when absent; invalid YAML fails in one line naming the file."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not valid YAML ({' '.join(str(exc).split())})") from None


def read_jsonl(path: str | Path, *, missing_ok: bool = False) -> list[dict]:
    """All records (JSON objects, one a line; blank lines skipped).

    A bad line fails in one line naming file and line, saying whether it is a truncated last record (an
    interrupted write) and, for a run's artifact, the command that keeps the valid records.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return []
        raise DataError(path, "file not found") from None
    lines = data.split(b"\n")
    out = []
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise DataError(path, "not UTF-8 text", line=n) from None
        except ValueError:
            what = "truncated record (an interrupted write)" if n == len(lines) else "not valid JSON"
            if path.parent.name == ARTIFACTS_DIR:
                what += f"; `eatlab-cache repair --run-dir {path.parent.parent}` keeps the valid records"
            raise DataError(path, what, line=n) from None
        if not isinstance(rec, dict):
            raise DataError(path, f"expected a JSON object, got {type(rec).__name__}", line=n)
        out.append(rec)
    return out


def read_predictions(path: str | Path) -> list[tuple[list[str], list[str], list[str]]]:
    """(tokens, gold tags, predicted tags) per sentence of a run's predictions.conll."""
    sentences, toks, gold, pred = [], [], [], []
    with Path(path).open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            line = line.rstrip("\n")
            if not line.strip():
                if toks:
                    sentences.append((toks, gold, pred))
                    toks, gold, pred = [], [], []
                continue
            cols = line.split("\t")
            if len(cols) != 3:
                raise DataError(path, f"expected `token<TAB>gold<TAB>pred`, got {len(cols)} columns", line=n)
            toks.append(cols[0])
            gold.append(cols[1])
            pred.append(cols[2])
    if toks:
        sentences.append((toks, gold, pred))
    return sentences


class RunDir:
    """One run dir, read lazily: each file is parsed on first use and a damaged one fails in one line."""

    def __init__(self, path: str | Path, root: str | Path | None = None):
        self.path = Path(path)
        root = Path(root) if root is not None else None
        self.name = (
            str(self.path.relative_to(root))
            if root is not None and self.path != root and self.path.is_relative_to(root)
            else self.path.name
        )

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def status(self) -> str:
        """`failed` (error.json), `done` (metrics.json) or `running` (neither: running, or killed)."""
        if (self.path / ERROR).is_file():
            return FAILED
        return DONE if (self.path / METRICS).is_file() else RUNNING

    @property
    def status_label(self) -> str:
        return STATUS_LABELS[self.status]

    @cached_property
    def metrics(self) -> dict | None:
        return read_json(self.path / METRICS)

    @cached_property
    def provenance(self) -> dict | None:
        return read_json(self.path / PROVENANCE)

    @cached_property
    def error(self) -> dict | None:
        return read_json(self.path / ERROR)

    @cached_property
    def config(self) -> dict | None:
        """resolved_config.yaml (absent when the job failed before it started)."""
        return read_yaml(self.path / RESOLVED_CONFIG)

    @cached_property
    def overrides(self) -> list[str]:
        """The command-line overrides: .hydra/overrides.yaml, else provenance.json's copy."""
        found = read_yaml(self.path / OVERRIDES)
        if not found and (self.path / PROVENANCE).is_file():
            found = (self.provenance or {}).get("overrides")
        return [str(o) for o in found or []]

    @cached_property
    def job_num(self) -> int | None:
        """The `<num>_` prefix of the dir name, else hydra.job.num (an override with `/` nests the job dir)."""
        head = self.path.name.split("_", 1)[0]
        if head.isdigit():
            return int(head)
        try:
            return int(read_yaml(self.path / HYDRA_RUNTIME)["hydra"]["job"]["num"])
        except (DataError, KeyError, TypeError, ValueError):
            return None

    def artifact_path(self, stage: str) -> Path:
        return self.path / artifact_name(stage)

    def artifact(self, stage: str) -> list[dict]:
        """The records of `artifacts/<stage>.jsonl`; [] when the run has none (a baseline, an unfinished run)."""
        return read_jsonl(self.artifact_path(stage), missing_ok=True)

    def predictions(self) -> list[tuple[list[str], list[str], list[str]]]:
        """predictions.conll as (tokens, gold, pred) per sentence; [] when absent."""
        path = self.path / PREDICTIONS
        return read_predictions(path) if path.is_file() else []

    @cached_property
    def last_record(self) -> dict:
        """The newest row of record.jsonl (run identity and flat metrics); {} when absent."""
        records = read_jsonl(self.path / RECORD_JSONL, missing_ok=True)
        return records[-1] if records else {}

    @property
    def wandb_run_id(self) -> str | None:
        """The id of the run's newest W&B run (offline or synced), from its folder name."""
        wandb = self.path / WANDB_DIR
        dirs = sorted(wandb.glob("offline-run-*")) + sorted(wandb.glob("run-*"))
        return dirs[-1].name.rsplit("-", 1)[-1] if dirs else None


def iter_run_dirs(
    root: str | Path, markers: tuple[str, ...] = (METRICS, ERROR, OVERRIDES)
) -> Iterator[RunDir]:
    """Run dirs under `root` (or `root` itself) holding any of `markers`, in job order.

    A sweep lists its jobs by OVERRIDES (unfinished ones included); the analysis by METRICS and ERROR.
    Submitit's folder and an analysis output folder are never run dirs.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "not a directory")
    found = set()
    for marker in markers:
        depth = len(Path(marker).parts)
        for hit in root.rglob(marker):
            d = hit.parents[depth - 1]
            rel = d.relative_to(root).parts
            if ".submitit" not in d.parts and "analysis" not in rel:
                found.add(d)
    dirs = [RunDir(d, root) for d in found]
    yield from sorted(dirs, key=lambda rd: (rd.job_num if rd.job_num is not None else 10**9, str(rd.path)))


# ------------------------------------------------------------------------------------------------ metrics
METRICS_SCHEMA_VERSION = 1
COST_KEYS = ("llm_calls", "llm_cache_hits", "llm_errors", "prompt_tokens", "completion_tokens")


@dataclass
class Metrics:
    """metrics.json: `scores` is `eatlab-score --json` verbatim (eatlab.eval.scores.score); the fields add
    cost, failure attribution and what ran, so every writer's file has the same top-level keys."""

    scores: dict
    llm_calls: int = 0
    llm_cache_hits: int = 0
    llm_errors: int = 0
    tokens: dict = field(default_factory=lambda: {"prompt": 0, "completion": 0})
    seconds: dict = field(default_factory=dict)  # per stage, and `total` where the writer knows it
    stages: dict = field(default_factory=dict)  # per stage: LLM counters and seconds
    failures: dict = field(default_factory=dict)  # failure attribution (gold / predicted classes, drops)
    run: dict = field(default_factory=dict)  # method, language, model, seed... (what tables group by)
    data: dict = field(default_factory=dict)  # the selection's provenance (files, hashes, counts)
    counts: dict = field(default_factory=dict)  # what was skipped, truncated, failed
    extra: dict = field(default_factory=dict)  # a writer's own top-level keys, after the others

    def to_json(self) -> dict:
        """The metrics.json object; a score or extra key that would shadow a schema key is a bug."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("scores", "extra")}
        clash = sorted((set(self.scores) | set(self.extra)) & {*own, "schema_version"})
        clash += sorted(set(self.scores) & set(self.extra))
        if clash:
            raise ValueError(f"metrics keys {clash} would overwrite each other")
        return {"schema_version": METRICS_SCHEMA_VERSION, **self.scores, **own, **self.extra}


REQUIRED_KEYS = ("schema_version", *(f.name for f in fields(Metrics) if f.name not in ("scores", "extra")))


def build_metrics(
    scores: dict,
    *,
    run: dict,
    data: dict | None = None,
    counters: dict | None = None,
    stage_seconds: dict | None = None,
    failures: dict | None = None,
    counts: dict | None = None,
    **extra: Any,
) -> dict:
    """The metrics.json object from the scores and the LLM client's per-stage counters (`total` row summed).

    Stage seconds are rounded to 0.1 ms and also appear under their stage in `stages`.
    """
    stages = {k: dict(v) for k, v in (counters or {}).items()}
    totals = stages.pop("total", None) or {}
    seconds = {k: round(v, 4) for k, v in (stage_seconds or {}).items()}
    for stage, secs in seconds.items():
        stages.setdefault(stage, {})["seconds"] = secs
    cost = {k: int(totals.get(k, 0)) for k in COST_KEYS}
    return Metrics(
        scores=dict(scores),
        run=run,
        data=data or {},
        llm_calls=cost["llm_calls"],
        llm_cache_hits=cost["llm_cache_hits"],
        llm_errors=cost["llm_errors"],
        tokens={"prompt": cost["prompt_tokens"], "completion": cost["completion_tokens"]},
        seconds=seconds,
        stages=stages,
        failures=failures or {},
        counts=counts or {},
        extra=extra,
    ).to_json()


def write_metrics(run_dir: str | Path, metrics: dict, name: str = METRICS) -> Path:
    """Write metrics atomically (call it last: metrics.json marks the run done); returns the path."""
    path = Path(run_dir) / name
    atomic_write_json(path, metrics)
    return path


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
