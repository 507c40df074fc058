"""A static, self-contained HTML report: notes, tables and the PNG plots embedded as base64 (one file to share)."""

from __future__ import annotations

import base64
import datetime as dt
import html
from pathlib import Path

import numpy as np
import pandas as pd

from eatlab.utils.io import atomic_write_text

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
.scroll { overflow-x: auto; max-width: 100%; margin: 0.5em 0 1.5em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; vertical-align: top; }
th { background: #f2f2f2; font-weight: 600; }
td.num { white-space: nowrap; }
td.text { text-align: left; max-width: 22em; overflow-wrap: anywhere; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.note { background: #fff8e1; padding: 0.6em 1em; border-left: 4px solid #f0b400; margin: 0.4em 0;
        white-space: pre-wrap; }
.empty { color: #888; font-style: italic; }
"""
# Why the tables fit the page: headers break after `_`, text cells (run names, model ids, errors) wrap within
# 22em, numbers never wrap, and a table still wider than the page scrolls inside its box instead of widening it.

_BREAK_AFTER = ("_", ",", "/", "=", "@", "\u2013")


def _breakable(text: str) -> str:
    """Escaped text with a line-break opportunity (<wbr>) after each `_ , / = @ –` (names break there first)."""
    out = html.escape(text)
    for ch in _BREAK_AFTER:
        out = out.replace(ch, ch + "<wbr>")
    return out


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _is_num(v) -> bool:
    return isinstance(v, int | float | np.number) and not isinstance(v, bool | np.bool_)


def table_html(df: pd.DataFrame, max_rows: int = 200) -> str:
    """The table in a horizontal scroll box; each cell classed `num` (no wrap) or `text` (wraps)."""
    if df is None or df.empty:
        return '<p class="empty">nothing to show for this sweep</p>'
    shown = df.head(max_rows)
    head = "".join(f"<th>{_breakable(str(c))}</th>" for c in shown.columns)
    rows = [
        "<tr>"
        + "".join(f'<td class="{"num" if _is_num(v) else "text"}">{_breakable(_fmt(v))}</td>' for v in row)
        + "</tr>"
        for row in shown.itertuples(index=False, name=None)
    ]
    out = f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
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
