"""Small-sample statistics a reviewer accepts: proportion intervals, the exact paired test, Holm, resample counts.

All inputs and outputs are fractions in [0, 1] (never percentages); the tests delegate to scipy.

- `proportion_ci`: Wilson score (default) or Clopper-Pearson interval of k/n; never zero-width at 0/n or n/n.
- `paired_exact`: two systems' exact match on the same items. The test is the exact McNemar test: under "no
  difference" the a_only share of the m discordant pairs is Binomial(m, 1/2); p is the central two-sided
  p = min(1, 2 min(P(X <= k), P(X >= k))) (for p0 = 1/2 this equals scipy's `binomtest(k, m).pvalue`). The
  interval is the Clopper-Pearson interval of that share, pi in [lo, hi], mapped to delta = m/n (2 pi - 1),
  i.e. conditional on the m discordant pairs. Clopper-Pearson inverts exactly the central test, so the interval
  excludes 0 iff p < 1 - level. With no discordant pair (m = 0) delta is 0 and p = 1; the interval is then
  +-(Clopper-Pearson upper bound of 0/n discordant), which contains 0 and is not zero-width.
- `holm`: Holm (1979) step-down adjusted p-values for a table's family of comparisons.
- `n_boot_for_family`: bootstrap resamples so that the smallest bootstrap p, 1/(B+1), can pass Holm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as _st

_METHODS = {"wilson": "wilson", "clopper-pearson": "exact"}
_HOLM_MARGIN = 10  # the smallest bootstrap p is 10x below Holm's strictest threshold alpha/m


def proportion_ci(k: int, n: int, level: float = 0.95, method: str = "wilson") -> tuple[float, float]:
    """Interval of the proportion k/n ("wilson" or "clopper-pearson", via scipy); n == 0 gives (0.0, 1.0)."""
    if method not in _METHODS:
        raise ValueError(f"method must be one of {sorted(_METHODS)}, not {method!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), not {level}")
    k, n = int(k), int(n)
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    ci = _st.binomtest(k, n).proportion_ci(confidence_level=level, method=_METHODS[method])
    return float(ci.low), float(ci.high)


def _central_p(k: int, m: int) -> float:
    """Central two-sided exact binomial p for k of m under p0 = 1/2 (1.0 when m == 0)."""
    if m == 0:
        return 1.0
    lower = float(_st.binom.cdf(k, m, 0.5))
    upper = float(_st.binom.sf(k - 1, m, 0.5))
    return min(1.0, 2.0 * min(lower, upper))


def paired_exact(a: Sequence[bool], b: Sequence[bool], level: float = 0.95) -> dict:
    """Exact McNemar test and its agreeing interval for A's minus B's exact-match rate (see module docstring).

    Returns {n, a_only, b_only, delta, delta_ci95: [lo, hi], p_value, test, level}.
    """
    x = np.asarray(a, dtype=bool).ravel()
    y = np.asarray(b, dtype=bool).ravel()
    if x.shape != y.shape:
        raise ValueError(f"{x.size} vs {y.size} items: a paired test needs the same items")
    n = int(x.size)
    a_only = int(np.count_nonzero(x & ~y))
    b_only = int(np.count_nonzero(~x & y))
    m = a_only + b_only
    out = {"n": n, "a_only": a_only, "b_only": b_only, "test": "exact McNemar (central)", "level": level}
    if n == 0:
        return {**out, "delta": 0.0, "delta_ci95": [-1.0, 1.0], "p_value": 1.0}
    delta = (a_only - b_only) / n
    if m == 0:
        _, d_hi = proportion_ci(0, n, level, "clopper-pearson")
        lo, hi = -d_hi, d_hi
    else:
        pi_lo, pi_hi = proportion_ci(a_only, m, level, "clopper-pearson")
        lo, hi = m / n * (2 * pi_lo - 1), m / n * (2 * pi_hi - 1)
    return {**out, "delta": delta, "delta_ci95": [float(lo), float(hi)], "p_value": _central_p(a_only, m)}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the input order: monotone, capped at 1, NaN passed through."""
    p = np.asarray(list(p_values), dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    vals = p[ok]
    m = vals.size
    if m:
        order = np.argsort(vals, kind="stable")
        scaled = vals[order] * (m - np.arange(m))
        adj = np.minimum(1.0, np.maximum.accumulate(scaled))
        res = np.empty(m)
        res[order] = adj
        out[ok] = res
    return [float(v) for v in out]


def n_boot_for_family(m: int, alpha: float = 0.05, floor: int = 1000) -> int:
    """Resamples B so that the smallest bootstrap p, 1/(B+1), is 10x below alpha/m (Holm's first threshold).

    Rounded up to a multiple of 1000 and at least `floor`: m = 1 -> 1000, m = 56 -> 12000 at alpha 0.05.
    """
    if m < 0 or not 0.0 < alpha < 1.0:
        raise ValueError(f"need m >= 0 and 0 < alpha < 1, got m={m}, alpha={alpha}")
    need = math.ceil(_HOLM_MARGIN * max(m, 1) / alpha) - 1
    return max(int(floor), 1000 * math.ceil(need / 1000))
