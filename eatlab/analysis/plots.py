"""PNG plots of a sweep (matplotlib, Agg backend: no display needed). Each function returns the path it wrote,
or None when the sweep lacks what the plot needs (e.g. no fine-tuned runs for the FT delta plot)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

DPI = 110


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _grouped_bars(ax, table: pd.DataFrame, ylabel: str) -> None:
    """Bars of table (index = x groups, columns = series)."""
    n_series = max(1, len(table.columns))
    width = 0.8 / n_series
    x = np.arange(len(table.index))
    for i, col in enumerate(table.columns):
        ax.bar(x + (i - (n_series - 1) / 2) * width, table[col].to_numpy(dtype=float), width, label=str(col))
    ax.set_xticks(x)
    ax.set_xticklabels([str(i) for i in table.index], rotation=0)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def f1_by_language_rounds(runs: pd.DataFrame, path: Path, metric: str = "entity_f1") -> Path | None:
    if runs.empty or "rounds" not in runs:
        return None
    table = runs.pivot_table(index="language", columns="rounds", values=metric, aggfunc="mean")
    if table.empty:
        return None
    fig, ax = plt.subplots(figsize=(max(5, 1.0 * len(table) + 2), 3.8))
    _grouped_bars(ax, table, metric)
    ax.set_title(f"{metric} by language and prompt rounds\n(mean over seeds and other settings)", fontsize=10)
    ax.set_ylim(0, max(1e-3, float(np.nanmax(table.to_numpy(dtype=float)))) * 1.15)
    return _save(fig, path)


def ft_delta(ft: pd.DataFrame, path: Path) -> Path | None:
    """F1(w/ FT) - F1(w/o FT) per language with the paired bootstrap 95% interval; * marks p < 0.05."""
    if ft is None or ft.empty:
        return None
    g = ft.groupby("language").agg(
        delta=("delta", "mean"),
        lo=("delta_ci_low", "mean"),
        hi=("delta_ci_high", "mean"),
        p=("p_value", "max"),
    )
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(g) + 2), 3.8))
    x = np.arange(len(g))
    colors = ["tab:green" if d >= 0 else "tab:red" for d in g["delta"]]
    yerr = [(g["delta"] - g["lo"]).clip(lower=0), (g["hi"] - g["delta"]).clip(lower=0)]
    ax.bar(x, g["delta"], color=colors, yerr=yerr, capsize=4)
    span = float(max(g["hi"].max(), 0) - min(g["lo"].min(), 0)) or 1.0
    for xi, (d, lo, hi, p) in enumerate(zip(g["delta"], g["lo"], g["hi"], g["p"])):
        if p < 0.05:  # the star sits beyond the end of the interval
            y = hi + 0.03 * span if d >= 0 else lo - 0.03 * span
            ax.annotate("*", (xi, y), ha="center", va="bottom" if d >= 0 else "top", fontsize=14)
    ax.axhline(0, color="black", lw=0.8)
    ax.margins(y=0.15)
    ax.set_xticks(x)
    ax.set_xticklabels(g.index)
    ax.set_ylabel("entity F1 delta (w/ FT - w/o FT)")
    ax.set_title("Fine-tuning effect per language\n(95% paired bootstrap interval; * p < 0.05)", fontsize=10)
    return _save(fig, path)


def quality_vs_f1(runs: pd.DataFrame, path: Path, measure: str, metric: str = "entity_f1") -> Path | None:
    """Scatter of a run-level quality measure against F1, least-squares line and Pearson r in the title."""
    if runs.empty or measure not in runs:
        return None
    d = runs[[measure, metric, "language"]].dropna()
    if len(d) < 2:
        return None
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    for lang, g in d.groupby("language"):
        ax.scatter(g[measure], g[metric], label=str(lang), s=30)
    title = f"{metric} vs {measure} ({len(d)} runs)"
    if np.ptp(d[measure]) > 0 and np.ptp(d[metric]) > 0:
        slope, icept = np.polyfit(d[measure], d[metric], 1)
        xs = np.linspace(d[measure].min(), d[measure].max(), 50)
        ax.plot(xs, slope * xs + icept, color="black", lw=1)
        r = float(np.corrcoef(d[measure], d[metric])[0, 1])
        title += f", r = {r:.2f}"
    ax.set_xlabel(measure)
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def sentence_scatter(
    sentences: pd.DataFrame, path: Path, measure: str, target: str = "recall"
) -> Path | None:
    """Per-sentence quality vs entity recall (all runs pooled), with the least-squares line and r."""
    if sentences.empty or measure not in sentences:
        return None
    d = sentences[[measure, target]].dropna()
    if len(d) < 3:
        return None
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    rng = np.random.default_rng(0)
    ax.scatter(d[measure], d[target] + rng.uniform(-0.02, 0.02, len(d)), s=8, alpha=0.4)
    title = f"sentence {target} vs {measure} ({len(d)} sentences)"
    if np.ptp(d[measure]) > 0 and np.ptp(d[target]) > 0:
        slope, icept = np.polyfit(d[measure], d[target], 1)
        xs = np.linspace(d[measure].min(), d[measure].max(), 50)
        ax.plot(xs, slope * xs + icept, color="black", lw=1)
        title += f", r = {float(np.corrcoef(d[measure], d[target])[0, 1]):.2f}"
    ax.set_xlabel(measure)
    ax.set_ylabel(f"{target} (jittered)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def failure_bars(shares: pd.DataFrame, path: Path) -> Path | None:
    """Stacked bars per language: where the gold entities went (found, lost in translation, ...)."""
    if shares is None or shares.empty:
        return None
    t = shares.set_index("language")
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(t) + 2.5), 3.8))
    bottom = np.zeros(len(t))
    for col in t.columns:
        vals = t[col].fillna(0).to_numpy(dtype=float)
        ax.bar(t.index.astype(str), vals, bottom=bottom, label=col.replace("_", " "))
        bottom += vals
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of gold entities")
    ax.set_title("Failure attribution per language")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)
