"""The summary table printed at the end of a run (percentages here only: files keep fractions)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def print_summary(metrics: dict, run_dir: Path, console: Console | None = None) -> None:
    console = console or Console()
    run = metrics.get("run", {})
    title = f"{run.get('method', 'eat')} | {run.get('language')} | {run.get('model')} | {metrics.get('n_sentences')} sentences"
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("value (%)", justify="right")
    lo, hi = metrics.get("entity_f1_ci95", [None, None])
    t.add_row(
        "entity P / R / F1",
        f"{_pct(metrics['entity_precision'])} / {_pct(metrics['entity_recall'])} / {_pct(metrics['entity_f1'])}",
    )
    t.add_row("entity F1 95% CI", f"[{_pct(lo)}, {_pct(hi)}]")
    for typ, v in metrics.get("per_type", {}).items():
        t.add_row(f"  {typ} F1 (support {v['support']})", _pct(v["f1"]))
    t.add_row(
        "reference token micro / macro / weighted F1",
        f"{_pct(metrics['reference_token_micro_f1'])} / {_pct(metrics['reference_token_macro_f1'])} / "
        f"{_pct(metrics['reference_token_weighted_f1'])}",
    )
    console.print(t)
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
