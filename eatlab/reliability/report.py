"""The failure lines printed under a run's summary table: failed samples, model answer faults, truncations."""

from __future__ import annotations

from rich.console import Console

FAULT_LABELS = {
    "empty_answers": "empty",
    "truncated_answers": "cut at the token budget",
    "control_chars_stripped": "control characters stripped",
    "wrong_script_answers": "wrong script",
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
