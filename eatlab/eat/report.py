"""The summary table printed at the end of a run (percentages here only: files keep fractions)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from eatlab.eval.table import format_scores


def print_summary(metrics: dict, run_dir: Path, console: Console | None = None) -> None:
    """The score table shared with `eatlab-score`, then what only a pipeline run has: attribution and cost."""
    console = console or Console()
    run = metrics.get("run", {})
    title = f"{run.get('method', 'eat')} | {run.get('language')} | {run.get('model')} | {metrics.get('n_sentences')} sentences"
    console.print(format_scores(metrics, title), markup=False, highlight=False)
    f = metrics.get("failures", {})
    g, p = f.get("gold", {}), f.get("predicted", {})
    console.print("gold entities:     " + ", ".join(f"{k} {v}" for k, v in g.items()))
    console.print("predicted entities: " + ", ".join(f"{k} {v}" for k, v in p.items()))
    if f.get("dropped_entities"):
        console.print(
            "dropped in span recovery: " + ", ".join(f"{k} {v}" for k, v in f["dropped_entities"].items())
        )
    console.print(
        f"LLM calls {metrics.get('llm_calls')}, cache hits {metrics.get('llm_cache_hits')}, "
        f"tokens in/out {metrics['tokens']['prompt']}/{metrics['tokens']['completion']}, "
        f"seconds {metrics['seconds'].get('total', 0):.1f}"
    )
    if run.get("smoke_model"):
        console.print("[bold yellow]smoke model: these scores mean nothing[/]")
    console.print(f"run dir: {run_dir}")


FAULT_LABELS = {
    "empty_answers": "empty",
    "truncated_answers": "cut at the token budget",
    "control_chars_stripped": "control characters stripped",
    "wrong_script_answers": "wrong script",
    "unconstrained_answers": "not constrained (backend.constraint_param unset)",
    "constraint_violations": "constrained but not in the sentence (the backend ignored the constraint)",
}


def failure_lines(metrics: dict) -> list[str]:
    """Always the failed-sample line; the fault and truncation lines when something happened."""
    c = metrics.get("counts") or {}
    failed = {k: int(c.get(f"failed_{k}", 0)) for k in ("forward", "ner", "backward")}
    lines = [
        "failed requests (after retries): "
        + ", ".join(f"{k} {v}" for k, v in failed.items())
        + f"; LLM errors {int(metrics.get('llm_errors', 0))}"
        + (
            " (recorded in artifacts/*.jsonl `error`, never cached: re-run the same command to retry only them)"
            if any(failed.values()) or metrics.get("llm_errors")
            else ""
        )
    ]
    faults = {label: int(c.get(k, 0)) for k, label in FAULT_LABELS.items() if c.get(k)}
    if faults:
        lines.append("model answers: " + ", ".join(f"{label} {n}" for label, n in faults.items()))
    if c.get("truncated_sentences"):
        lines.append(f"sentences truncated to max_sentence_chars: {int(c['truncated_sentences'])}")
    return lines


def print_failures(metrics: dict, console: Console | None = None) -> None:
    console = console or Console()
    for line in failure_lines(metrics):
        console.print(line, markup=False, highlight=False)
