"""A static, self-contained HTML report: notes, tables and the PNG plots embedded as base64 (one file to share)."""

from __future__ import annotations

import base64
import datetime as dt
import html
from pathlib import Path

import pandas as pd

from eatlab.utils.io import atomic_write_text

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.note { background: #fff8e1; padding: 0.6em 1em; border-left: 4px solid #f0b400; margin: 0.4em 0; }
.empty { color: #888; font-style: italic; }
"""


def _fmt(v):
    if isinstance(v, float):
        return "" if pd.isna(v) else f"{v:.4f}"
    return v


def table_html(df: pd.DataFrame, max_rows: int = 200) -> str:
    if df is None or df.empty:
        return '<p class="empty">nothing to show for this sweep</p>'
    shown = df.head(max_rows).map(_fmt)
    out = shown.to_html(index=False, escape=True, border=0)
    if len(df) > max_rows:
        out += f'<p class="empty">first {max_rows} of {len(df)} rows; all rows are in the CSV file</p>'
    return out


def image_html(path: Path, caption: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def write_report(
    path: Path,
    title: str,
    notes: list[str],
    sections: list[tuple[str, str, pd.DataFrame | None]],
    plots: dict[str, Path | None],
    plot_reasons: dict[str, str],
) -> Path:
    """sections: (heading, explanation, table). plots: caption -> PNG path (None: see plot_reasons)."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Generated {dt.datetime.now().isoformat(timespec='seconds')} by eatlab-analyze. "
        "Scores are fractions in [0, 1].</p>",
    ]
    parts += [f'<div class="note">{html.escape(n)}</div>' for n in notes]
    parts.append("<h2>Plots</h2>")
    for caption, p in plots.items():
        if p is not None and Path(p).is_file():
            parts.append(image_html(p, caption))
        else:
            parts.append(
                f'<p class="empty">{html.escape(caption)}: {html.escape(plot_reasons.get(caption, "not available"))}</p>'
            )
    for heading, explanation, df in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if explanation:
            parts.append(f"<p>{html.escape(explanation)}</p>")
        parts.append(table_html(df))
    parts.append("</body></html>")
    atomic_write_text(path, "\n".join(parts))
    return path
