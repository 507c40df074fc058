"""Readable plain-text tables of a score dict (percentages here only; JSON keeps fractions)."""

from __future__ import annotations


def _pct(x: float) -> str:
    return f"{100.0 * x:6.2f}"


def format_scores(result: dict, title: str = "") -> str:
    """Entity-level table (micro and per type), then the reference token-level scores."""
    lines: list[str] = []
    if title:
        lines += [title, ""]
    low, high = result["entity_f1_ci95"]
    lines.append(f"sentences: {result['n_sentences']}   language: {result.get('language', '?')}")
    lines.append("")
    lines.append("entity level (seqeval default mode, exact span and type), %")
    header = f"{'type':<8}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"
    lines += [header, "-" * len(header)]
    for typ, m in result["per_type"].items():
        lines.append(
            f"{typ:<8}{_pct(m['precision']):>10}{_pct(m['recall']):>10}{_pct(m['f1']):>10}{m['support']:>10}"
        )
    lines.append("-" * len(header))
    support = sum(m["support"] for m in result["per_type"].values())
    lines.append(
        f"{'micro':<8}{_pct(result['entity_precision']):>10}{_pct(result['entity_recall']):>10}"
        f"{_pct(result['entity_f1']):>10}{support:>10}"
    )
    lines.append(f"entity F1 95% bootstrap interval: [{_pct(low).strip()}, {_pct(high).strip()}]")
    lines.append("")
    lines.append("reference release token level (for comparison with the paper only), %")
    for key in ("micro", "macro", "weighted"):
        lines.append(f"  {key:<9}F1 {_pct(result[f'reference_token_{key}_f1'])}")
    return "\n".join(lines)
