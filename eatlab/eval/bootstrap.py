"""Sentence-level bootstrap for entity F1: a percentile 95% interval and a paired significance test.

Both resample sentences with replacement and re-sum the per-sentence entity counts (tp, predicted, gold),
so a resample costs one gather and one sum per count, vectorised with numpy; no tags are re-chunked.

Paired test (`paired_bootstrap_test`): both systems are scored on the *same* resampled sentence sets, giving
deltas d_i = F1_A(i) - F1_B(i) around the observed d = F1_A - F1_B. Centring them (d_i - d) approximates the
distribution of the delta under the null hypothesis "no difference" (Efron & Tibshirani 1993, ch. 16):

- `alternative="two-sided"` (default): p = (1 + #{|d_i - d| >= |d|}) / (B + 1);
- `alternative="greater"` (A better than B): p = (1 + #{d_i - d >= d}) / (B + 1), i.e. the one-sided paired
  bootstrap of Berg-Kirkpatrick, Burkett & Klein (2012), which counts d_i > 2d, with `>=` and the usual +1.

Identical systems give d = d_i = 0 and p = 1; a clearly better system gives p close to 1/(B+1).

Cluster bootstrap (`units=`): every function takes an optional sequence of cluster ids, one per item. The
resampled unit is then the cluster, not the item: items sharing an id (EACL pairs with the same (sentence,
normalised gold), a document's sentences) are summed into one row first, so duplicates are not counted as
independent evidence. Means become sum / count over the resampled clusters. Without `units` every item is
its own unit (and the results are the same as before the argument existed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from eatlab.eval.entity import EntityCounts

_CHUNK_ELEMENTS = 4_000_000  # resampled sentence indices held in memory at once


def f1_from_sums(tp: np.ndarray, pred: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Vectorised micro F1 = 2tp / (pred + gold), 0 where undefined (equal to 2PR/(P+R) up to rounding)."""
    tp, pred, gold = (np.asarray(a, dtype=np.float64) for a in (tp, pred, gold))
    denom = pred + gold
    out = np.zeros(np.broadcast(tp, denom).shape)
    np.divide(2.0 * tp, denom, out=out, where=denom > 0)
    return out


def _resampled_sums(tables: list[np.ndarray], n_boot: int, seed: int) -> list[np.ndarray]:
    """For each (n, k) count table: its column sums over `n_boot` shared resamples of the n rows -> (B, k)."""
    n = tables[0].shape[0]
    rng = np.random.default_rng(seed)
    # integer counts stay exact; per-item scores (a pair's character F1) are summed as floats
    sums = [
        np.zeros((n_boot, t.shape[1]), dtype=np.float64 if t.dtype.kind == "f" else np.int64) for t in tables
    ]
    if n == 0:
        return sums
    chunk = max(1, _CHUNK_ELEMENTS // n)
    for lo in range(0, n_boot, chunk):
        hi = min(n_boot, lo + chunk)
        idx = rng.integers(0, n, size=(hi - lo, n))
        for t, s in zip(tables, sums):
            # one gather + sum per count column keeps the temporaries at (chunk, n)
            for j in range(t.shape[1]):
                s[lo:hi, j] = t[:, j][idx].sum(axis=1)
    return sums


def _unit_index(units, n: int) -> np.ndarray:
    """Cluster number (0, 1, ... by first appearance) of each of the n items; ids compare by their repr."""
    keys = [repr(u) for u in units]
    if len(keys) != n:
        raise ValueError(f"{len(keys)} unit ids for {n} items: give one per item")
    index: dict[str, int] = {}
    return np.fromiter((index.setdefault(k, len(index)) for k in keys), dtype=np.int64, count=n)


def _by_unit(tables: list[np.ndarray], units) -> list[np.ndarray]:
    """Sum each (n, k) table's rows per cluster -> (n_units, k); `units=None` keeps one row per item."""
    if units is None:
        return tables
    inverse = _unit_index(units, tables[0].shape[0])
    n_units = int(inverse.max()) + 1 if inverse.size else 0
    out = []
    for t in tables:
        agg = np.zeros((n_units, t.shape[1]), dtype=t.dtype)
        np.add.at(agg, inverse, t)
        out.append(agg)
    return out


def _never_seen_bound(n_units: int, level: float) -> float:
    """The exact (Clopper-Pearson) upper bound of a rate seen in 0 of `n_units`: the open end that replaces a
    zero-width bootstrap interval when every resample scores the same."""
    from eatlab.eval.stats import proportion_ci

    return proportion_ci(0, n_units, level, method="clopper-pearson")[1]


def bootstrap_f1_ci(
    counts: EntityCounts, n_boot: int = 1000, seed: int = 0, level: float = 0.95, units=None
) -> tuple[float, float]:
    """Percentile bootstrap interval of micro entity F1, resampling sentences or `units` (seeded).

    With no true positive at all, every resample scores 0 and the percentile interval would be [0, 0], which
    claims a certainty the sample does not have. The upper end is then exact instead: the Clopper-Pearson bound
    of a rate seen 0 times in the units that hold gold entities (a unit, not an entity, as the trial: entities
    of one sentence are not independent), turned into F1 by F1 <= 2R / (1 + R), i.e. as if precision were 1."""
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    if counts.n_sentences == 0:
        return 0.0, 0.0
    (table,) = _by_unit([counts.totals()], units)
    if table[:, 0].sum() == 0 and table[:, 2].sum() > 0:
        recall_high = _never_seen_bound(int((table[:, 2] > 0).sum()), level)
        return 0.0, 2.0 * recall_high / (1.0 + recall_high)
    (sums,) = _resampled_sums([table], n_boot, seed)
    f1 = f1_from_sums(sums[:, 0], sums[:, 1], sums[:, 2])
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(f1, [alpha, 1.0 - alpha])
    return float(low), float(high)


@dataclass(frozen=True)
class PairedBootstrapResult:
    """Observed F1 of both systems, their delta (A - B), its bootstrap 95% interval and the p-value."""

    f1_a: float
    f1_b: float
    delta: float
    delta_ci95: tuple[float, float]
    p_value: float
    n_boot: int
    alternative: str

    def as_dict(self) -> dict:
        return {
            "f1_a": self.f1_a,
            "f1_b": self.f1_b,
            "delta": self.delta,
            "delta_ci95": list(self.delta_ci95),
            "p_value": self.p_value,
            "n_boot": self.n_boot,
            "alternative": self.alternative,
        }


def paired_bootstrap_test(
    counts_a: EntityCounts,
    counts_b: EntityCounts,
    n_boot: int = 1000,
    seed: int = 0,
    alternative: Literal["two-sided", "greater"] = "two-sided",
    units=None,
) -> PairedBootstrapResult:
    """Paired bootstrap test of entity F1 between systems A and B on the same gold (see module docstring)."""
    if counts_a.n_sentences != counts_b.n_sentences:
        raise ValueError(f"{counts_a.n_sentences} vs {counts_b.n_sentences} sentences: not the same gold")
    if not np.array_equal(counts_a.gold, counts_b.gold):
        raise ValueError("the two prediction sets were not scored against the same gold")
    if alternative not in ("two-sided", "greater"):
        raise ValueError(f"alternative must be 'two-sided' or 'greater', not {alternative!r}")
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    ta, tb = counts_a.totals(), counts_b.totals()
    f1_a = float(f1_from_sums(*ta.sum(axis=0)))
    f1_b = float(f1_from_sums(*tb.sum(axis=0)))
    delta = f1_a - f1_b
    sa, sb = _resampled_sums(_by_unit([ta, tb], units), n_boot, seed)
    deltas = f1_from_sums(sa[:, 0], sa[:, 1], sa[:, 2]) - f1_from_sums(sb[:, 0], sb[:, 1], sb[:, 2])
    shifted = deltas - delta
    if alternative == "two-sided":
        extreme = np.abs(shifted) >= abs(delta)
    else:
        extreme = shifted >= delta
    p = (1.0 + float(np.count_nonzero(extreme))) / (n_boot + 1.0)
    low, high = np.quantile(deltas, [0.025, 0.975])
    return PairedBootstrapResult(f1_a, f1_b, delta, (float(low), float(high)), p, n_boot, alternative)


# -- means of per-item scores (the alignment benchmark: exact match 0/1, character F1 in [0, 1] per pair) -------
def _resampled_totals(columns: list[np.ndarray], units, n_boot: int, seed: int):
    """Sums of each (n,) column over `n_boot` shared resamples of items or clusters, and the resampled item
    counts: ((B, len(columns)), (B, 1) or the constant n)."""
    n = columns[0].shape[0]
    if units is None:
        (sums,) = _resampled_sums([np.stack(columns, axis=1)], n_boot, seed)
        return sums, float(n)
    (sums,) = _resampled_sums(_by_unit([np.stack(columns + [np.ones(n)], axis=1)], units), n_boot, seed)
    return sums[:, :-1], sums[:, -1:]


def bootstrap_mean_ci(
    values, n_boot: int = 1000, seed: int = 0, level: float = 0.95, units=None
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-item scores, resampling items or `units` (seeded).

    Scores in [0, 1] that are all 0 (or all 1) would give the zero-width [0, 0] ([1, 1]). The open end is then
    exact instead, as for F1: the mean is at most the share of units with a score above 0, so its bound is the
    Clopper-Pearson bound of a rate seen 0 times in the units (and 1 minus it when all are 1)."""
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.shape[0] == 0:
        return 0.0, 0.0
    if x.min() == x.max() and x[0] in (0.0, 1.0):
        high = _never_seen_bound(x.shape[0] if units is None else len(set(units)), level)
        return (0.0, high) if x[0] == 0.0 else (1.0 - high, 1.0)
    sums, counts = _resampled_totals([x], units, n_boot, seed)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile((sums / counts)[:, 0], [alpha, 1.0 - alpha])
    return float(low), float(high)


def paired_bootstrap_mean_test(
    values_a,
    values_b,
    n_boot: int = 1000,
    seed: int = 0,
    alternative: Literal["two-sided", "greater"] = "two-sided",
    units=None,
) -> dict:
    """The paired bootstrap test of the module docstring for the means of two settings' scores on the same items
    (`values_a[i]` and `values_b[i]` score item i), resampling items or `units`:
    {mean_a, mean_b, delta, delta_ci95, p_value, n, n_units, n_boot, alternative}."""
    a = np.asarray(values_a, dtype=np.float64).ravel()
    b = np.asarray(values_b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"{a.shape[0]} vs {b.shape[0]} items: a paired test needs the same items")
    if alternative not in ("two-sided", "greater"):
        raise ValueError(f"alternative must be 'two-sided' or 'greater', not {alternative!r}")
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    n = a.shape[0]
    if n == 0:
        return {"mean_a": 0.0, "mean_b": 0.0, "delta": 0.0, "delta_ci95": [0.0, 0.0], "p_value": 1.0,
                "n": 0, "n_units": 0, "n_boot": n_boot, "alternative": alternative}  # fmt: skip
    mean_a, mean_b = float(a.mean()), float(b.mean())
    delta = mean_a - mean_b
    n_units = n if units is None else int(_unit_index(units, n).max()) + 1
    sums, counts = _resampled_totals([a, b], units, n_boot, seed)
    deltas = ((sums[:, 0:1] - sums[:, 1:2]) / counts)[:, 0]
    shifted = deltas - delta
    extreme = (
        np.abs(shifted) >= abs(delta) - 1e-12 if alternative == "two-sided" else shifted >= delta - 1e-12
    )
    p = (1.0 + float(np.count_nonzero(extreme))) / (n_boot + 1.0)
    low, high = np.quantile(deltas, [0.025, 0.975])
    return {
        "mean_a": mean_a,
        "mean_b": mean_b,
        "delta": delta,
        "delta_ci95": [float(low), float(high)],
        "p_value": p,
        "n": n,
        "n_units": n_units,
        "n_boot": n_boot,
        "alternative": alternative,
    }
