"""Correlations between a quality measure and NER scores: Pearson, Spearman and Kendall with scipy's p-values;
Pearson's interval is scipy's own (Fisher z), Spearman's and Kendall's are percentile bootstrap intervals (pairs
resampled with replacement, seeded).

Undefined or meaningless cases are reported, not hidden: fewer than 3 complete pairs, or a constant side, give NaN
with a `note`; fewer than MIN_N pairs keep the coefficients but give no p-value and no interval, with the note
"n too small" (three runs otherwise print p=0.0000 and a degenerate [0.95, 1.00]). Bootstrap resamples that come
out constant are dropped from the interval (their count is kept).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

METHODS = ("pearson", "spearman", "kendall")
MIN_N = 5  # fewer complete pairs than this: coefficients only, "n too small", no p-value or interval


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of (B, n) arrays; NaN where a row is constant."""
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    num = (xc * yc).sum(axis=1)
    den = np.sqrt((xc**2).sum(axis=1) * (yc**2).sum(axis=1))
    out = np.full(x.shape[0], np.nan)
    np.divide(num, den, out=out, where=den > 1e-12)
    return out


KENDALL_BOOT_LIMIT = 2000  # above this many pairs Kendall's (looped) bootstrap uses a fifth of the resamples


def kendall_n_boot(n_pairs: int, n_boot: int) -> int:
    return n_boot if n_pairs <= KENDALL_BOOT_LIMIT else max(100, n_boot // 5)


def bootstrap_coefficients(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """The three coefficients on `n_boot` shared resamples of the pairs (Kendall on the first few, see above)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    xb, yb = x[idx], y[idx]
    out = {
        "pearson": _pearson_rows(xb, yb),
        "spearman": _pearson_rows(stats.rankdata(xb, axis=1), stats.rankdata(yb, axis=1)),
    }
    kendall = np.full(kendall_n_boot(len(x), n_boot), np.nan)
    for b in range(len(kendall)):
        if np.ptp(xb[b]) > 0 and np.ptp(yb[b]) > 0:
            kendall[b] = stats.kendalltau(xb[b], yb[b]).statistic
    out["kendall"] = kendall
    return out


def correlate(x, y, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Pearson, Spearman and Kendall between x and y (NaN pairs dropped), p-values and intervals (see above)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    res: dict = {"n": int(len(x)), "note": ""}
    for m in METHODS:
        res[m], res[f"{m}_p"], res[f"{m}_ci_low"], res[f"{m}_ci_high"] = np.nan, np.nan, np.nan, np.nan
    if len(x) < 3:
        res["note"] = f"{len(x)} complete pairs: at least 3 needed"
        return res
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        res["note"] = "constant input: correlation undefined"
        return res
    tests = {"pearson": stats.pearsonr, "spearman": stats.spearmanr, "kendall": stats.kendalltau}
    results = {m: fn(x, y) for m, fn in tests.items()}
    for m, r in results.items():
        res[m] = float(r.statistic)
    if len(x) < MIN_N:
        res["note"] = f"n too small ({len(x)} < {MIN_N} pairs): no p-value or interval"
        return res
    for m, r in results.items():
        res[f"{m}_p"] = float(r.pvalue)
    ci = results["pearson"].confidence_interval(confidence_level=level)
    res["pearson_ci_low"], res["pearson_ci_high"] = float(ci.low), float(ci.high)
    if n_boot > 0:
        boots = bootstrap_coefficients(x, y, n_boot, seed)
        alpha = (1.0 - level) / 2.0
        for m, vals in boots.items():
            if m == "pearson":
                continue
            vals = vals[np.isfinite(vals)]
            if len(vals):
                lo, hi = np.quantile(vals, [alpha, 1.0 - alpha])
                res[f"{m}_ci_low"], res[f"{m}_ci_high"] = float(lo), float(hi)
        res["n_boot"] = n_boot
        res["kendall_n_boot"] = kendall_n_boot(len(x), n_boot)
    return res


def correlation_table(
    df: pd.DataFrame,
    measures: list[str],
    targets: list[str],
    *,
    level: str,
    group_by: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (group, measure, target) with the three coefficients; groups: `all` plus each `group_by`."""
    rows = []
    groups = [("all", df)]
    if group_by is not None and group_by in df and df[group_by].nunique() > 1:
        groups += [(str(k), g) for k, g in df.groupby(group_by, sort=True)]
    for gname, g in groups:
        for meas in measures:
            if meas not in g or g[meas].isna().all():
                continue
            for tgt in targets:
                if tgt not in g:
                    continue
                r = correlate(g[meas], g[tgt], n_boot=n_boot, seed=seed)
                rows.append({"level": level, "group": gname, "measure": meas, "target": tgt, **r})
    return pd.DataFrame(rows)
