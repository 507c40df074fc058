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
