"""Statistics a reviewer accepts (eatlab.eval.stats, the cluster bootstrap, the analysis tables that use them),
checked against scipy on fixed cases and on the degenerate ones: 0/n, n/n, 4 vs 0 discordant pairs, 3 runs."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from eatlab.eval.bootstrap import bootstrap_f1_ci, bootstrap_mean_ci, paired_bootstrap_mean_test
from eatlab.eval.entity import entity_counts
from eatlab.eval.stats import holm, n_boot_for_family, paired_exact, proportion_ci

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ proportions
@pytest.mark.parametrize("k,n", [(0, 50), (3, 50), (25, 50), (50, 50), (1, 1), (7, 9)])
@pytest.mark.parametrize("method,scipy_method", [("wilson", "wilson"), ("clopper-pearson", "exact")])
def test_proportion_ci_is_scipys(k, n, method, scipy_method):
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method=scipy_method)
    assert proportion_ci(k, n, method=method) == (ci.low, ci.high)
    lo, hi = proportion_ci(k, n, method=method)
    assert 0.0 <= lo <= k / n <= hi <= 1.0 and hi - lo > 0.0  # never zero-width, even at 0/n or n/n


def test_proportion_ci_degenerate_and_bad_input():
    assert proportion_ci(0, 50) == (0.0, pytest.approx(0.0713476, abs=1e-6))  # not "0.0 [0, 0]"
    assert proportion_ci(50, 50)[0] == pytest.approx(1 - 0.0713476, abs=1e-6)
    assert proportion_ci(0, 0) == (0.0, 1.0)
    # Clopper-Pearson at 0/n is 1 - (alpha/2)^(1/n)
    assert proportion_ci(0, 50, method="clopper-pearson")[1] == pytest.approx(1 - 0.025 ** (1 / 50))
    for bad in [(6, 5), (-1, 5)]:
        with pytest.raises(ValueError, match="0 <= k <= n"):
            proportion_ci(*bad)
    with pytest.raises(ValueError, match="method"):
        proportion_ci(1, 5, method="wald")


# ------------------------------------------------------------------------------------------------ paired exact
def _pairs(a_only, b_only, both=0, neither=0):
    a = [True] * a_only + [False] * b_only + [True] * both + [False] * neither
    b = [False] * a_only + [True] * b_only + [True] * both + [False] * neither
    return a, b


def test_paired_exact_four_vs_zero_is_p_0125():
    r = paired_exact(*_pairs(4, 0, both=30, neither=16))
    assert (r["n"], r["a_only"], r["b_only"]) == (50, 4, 0)
    assert r["delta"] == pytest.approx(0.08) and r["p_value"] == pytest.approx(0.125)
    assert r["p_value"] == pytest.approx(stats.binomtest(4, 4, 0.5).pvalue)
    # Clopper-Pearson of 4/4 discordant is [0.025^(1/4), 1], mapped to 4/50 (2 pi - 1): it contains 0
    assert r["delta_ci95"] == pytest.approx([0.08 * (2 * 0.025**0.25 - 1), 0.08])
    assert r["delta_ci95"][0] < 0 < r["delta_ci95"][1]


@pytest.mark.parametrize(
    "a_only,b_only", [(0, 0), (1, 0), (5, 1), (6, 0), (2, 9), (10, 10), (14, 3), (30, 12)]
)
def test_paired_exact_p_is_scipys_and_the_interval_agrees(a_only, b_only):
    r = paired_exact(*_pairs(a_only, b_only, both=20, neither=20))
    m = a_only + b_only
    assert r["p_value"] == pytest.approx(stats.binomtest(a_only, m, 0.5).pvalue if m else 1.0)
    lo, hi = r["delta_ci95"]
    assert lo <= r["delta"] <= hi and hi > lo
    assert (lo > 0 or hi < 0) == (r["p_value"] < 0.05)


def test_paired_exact_interval_agrees_with_the_test_everywhere():
    for m in range(1, 41):
        for k in range(m + 1):
            r = paired_exact(*_pairs(k, m - k, neither=10))
            lo, hi = r["delta_ci95"]
            assert (lo > 0 or hi < 0) == (r["p_value"] < 0.05), (k, m)


def test_paired_exact_no_discordant_pair_and_bad_input():
    r = paired_exact([True, False, True], [True, False, True])
    assert r["p_value"] == 1.0 and r["delta"] == 0.0
    lo, hi = r["delta_ci95"]
    assert lo == -hi and hi == pytest.approx(1 - 0.025 ** (1 / 3))  # +- the Clopper-Pearson bound of 0/3
    with pytest.raises(ValueError, match="same items"):
        paired_exact([True], [True, False])


# ------------------------------------------------------------------------------------------------ Holm
def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): 4*0.005 = 0.02, 3*0.01 = 0.03, 2*0.03 = 0.06, max(0.06, 0.04) = 0.06
    assert holm([0.01, 0.04, 0.03, float("nan"), 0.005]) == pytest.approx(
        [0.03, 0.06, 0.06, float("nan"), 0.02], nan_ok=True
    )
    assert holm([0.5, 0.9]) == [1.0, 1.0]  # capped at 1
    assert holm([]) == []
    assert holm([0.02]) == [0.02]


def test_n_boot_for_family_lets_the_smallest_p_pass_holm():
    assert n_boot_for_family(1) == 1000 and n_boot_for_family(56) == 12000
    for m in (1, 2, 5, 10, 28, 56, 100, 300):
        b = n_boot_for_family(m)
        assert holm([1 / (b + 1)] * m)[0] <= 0.05 / 10
    assert n_boot_for_family(3, floor=5000) == 5000


# ------------------------------------------------------------------------------------------------ cluster bootstrap
def test_units_one_per_item_change_nothing():
    v = [1, 0, 1, 1, 0, 0, 1, 1]
    assert bootstrap_mean_ci(v, units=range(8)) == bootstrap_mean_ci(v) == (0.25, 0.875)
    a, b = [1, 0, 1, 1, 0.5, 0, 1, 1], [0, 0, 1, 0, 0.5, 0, 1, 1]
    with_units = paired_bootstrap_mean_test(a, b, units=[f"u{i}" for i in range(8)])
    assert with_units == {**paired_bootstrap_mean_test(a, b), "n_units": 8}


def test_a_mean_of_all_zeros_or_all_ones_has_an_exact_open_end():
    """No zero-width [0, 0]: the open end is scipy's exact Clopper-Pearson bound of 0 in the units."""
    high = stats.binomtest(0, 42).proportion_ci(confidence_level=0.95, method="exact").high
    units = [i // 2 for i in range(84)]  # 84 pairs, 42 units
    assert bootstrap_mean_ci([0.0] * 84, units=units) == pytest.approx((0.0, high))
    assert bootstrap_mean_ci([1] * 84, units=units) == pytest.approx((1.0 - high, 1.0))
    high50 = stats.binomtest(0, 50).proportion_ci(confidence_level=0.95, method="exact").high
    assert bootstrap_mean_ci([0] * 50) == pytest.approx((0.0, high50))
    assert bootstrap_mean_ci([0.5] * 50) == (0.5, 0.5)  # not a 0/1 case: the bootstrap, as before


def test_duplicated_items_in_one_unit_are_one_item():
    """Each item twice, both copies one unit: the same resamples as the items once (duplicates add nothing)."""
    v = np.array([1, 0, 1, 1, 0, 0, 1, 1.0])
    w = np.array([0, 0, 1, 0, 1, 0, 0, 1.0])
    twice, units = np.repeat(v, 2), [("sentence", i // 2) for i in range(16)]
    assert bootstrap_mean_ci(twice, units=units, n_boot=500) == pytest.approx(
        bootstrap_mean_ci(v, n_boot=500)
    )
    assert bootstrap_mean_ci(twice, n_boot=500) != bootstrap_mean_ci(v, n_boot=500)  # as items: too narrow
    t = paired_bootstrap_mean_test(twice, np.repeat(w, 2), units=units, n_boot=500)
    ref = paired_bootstrap_mean_test(v, w, n_boot=500)
    assert t["n"] == 16 and t["n_units"] == 8
    assert t["delta_ci95"] == pytest.approx(ref["delta_ci95"]) and t["p_value"] == ref["p_value"]
    gold = [["B-PER", "O"], ["B-LOC", "O"], ["O", "B-ORG"], ["B-PER", "B-LOC"]]
    pred = [["B-PER", "O"], ["O", "O"], ["O", "B-ORG"], ["B-LOC", "O"]]
    once = entity_counts(gold, pred)
    dup = entity_counts([g for g in gold for _ in (0, 1)], [p for p in pred for _ in (0, 1)])
    assert bootstrap_f1_ci(dup, n_boot=300, units=[i // 2 for i in range(8)]) == pytest.approx(
        bootstrap_f1_ci(once, n_boot=300)
    )
    with pytest.raises(ValueError, match="one per item"):
        bootstrap_mean_ci(v, units=[1, 2])


# ------------------------------------------------------------------------------------------------ correlations
def test_correlations_on_three_runs_say_n_too_small():
    from eatlab.analysis.stats import correlate

    r = correlate([0.1, 0.5, 0.9], [0.2, 0.6, 0.95], n_boot=200)
    assert r["note"].startswith("n too small") and r["n"] == 3
    assert r["pearson"] == pytest.approx(stats.pearsonr([0.1, 0.5, 0.9], [0.2, 0.6, 0.95]).statistic)
    for m in ("pearson", "spearman", "kendall"):
        assert math.isnan(r[f"{m}_p"]) and math.isnan(r[f"{m}_ci_low"]) and math.isnan(r[f"{m}_ci_high"])


def test_pearson_interval_is_scipys_from_five_runs():
    from eatlab.analysis.stats import correlate

    x, y = [0.1, 0.4, 0.5, 0.7, 0.9], [0.3, 0.2, 0.6, 0.65, 0.8]
    r = correlate(x, y, n_boot=200)
    ref = stats.pearsonr(x, y)
    ci = ref.confidence_interval(confidence_level=0.95)
    assert r["note"] == "" and r["pearson_p"] == pytest.approx(ref.pvalue)
    assert (r["pearson_ci_low"], r["pearson_ci_high"]) == pytest.approx((ci.low, ci.high))
    assert r["spearman_p"] == pytest.approx(stats.spearmanr(x, y).pvalue)


# ------------------------------------------------------------------------------------------------ tables
def _pair_frame():
    """zh: baseline and two settings on 10 pairs; pairs 0-1 and 2-3 share a (sentence, gold) unit."""
    rows = []
    base = [1, 1, 0, 0, 0, 0, 1, 1, 0, 1]
    better = [1, 1, 1, 1, 1, 1, 1, 1, 0, 1]  # 4 vs 0 discordant
    same = base
    units = ["u0", "u0", "u1", "u1", "u2", "u3", "u4", "u5", "u6", "u7"]
    for setting, vals in (
        ("eatlab r1 free", base),
        ("eatlab r1 constrained", better),
        ("eatlab r3 free", same),
    ):
        for i, v in enumerate(vals):
            rows.append({"language": "zh", "setting": setting, "recovery": "eatlab", "pair_id": f"p{i}",
                         "unit": units[i], "exact": float(v), "char_f1": 0.5 + 0.5 * v, "placed": 1.0})  # fmt: skip
    return pd.DataFrame(rows)


def test_alignment_paired_tests_exact_mcnemar_units_and_holm():
    from eatlab.analysis.alignment import paired_tests

    t = paired_tests(_pair_frame(), n_boot=200).set_index("setting")
    c = t.loc["eatlab r1 constrained"]
    assert (c["exact_a_only"], c["exact_b_only"], c["pairs"]) == (4, 0, 10)
    assert c["exact_p"] == pytest.approx(0.125) and c["exact_delta_lo"] < 0 < c["exact_delta_hi"]
    assert (
        c["char_f1_units"] == 8 and c["n_boot"] == n_boot_for_family(4) == 1000
    )  # at least the family's need
    expected = holm(list(t["exact_p"]) + list(t["char_f1_p"]))
    assert list(t["exact_p_holm"]) + list(t["char_f1_p_holm"]) == pytest.approx(expected)
    s = t.loc["eatlab r3 free"]
    assert s["exact_p"] == 1.0 and s["char_f1_p"] == 1.0 and s["exact_p_holm"] == 1.0


def test_unit_of_prefers_the_records_unit_then_sentence_and_gold():
    from eatlab.analysis.alignment import unit_of

    assert unit_of({"pair_id": "p1", "unit": "zh-7"}) == repr("zh-7")
    a = unit_of({"pair_id": "p1", "sentence": "奥运会在", "gold": {"text": "Olympic"}})
    assert a == unit_of({"pair_id": "p2", "sentence": "奥运会在", "gold": "OLYMPIC"})
    assert unit_of({"pair_id": "p3", "gold": {"text": "x"}}) == repr("p3")


def test_ablation_paired_table_has_holm_and_enough_resamples():
    from eatlab.analysis.ablation import ft_comparison
    from eatlab.analysis.load import SETTING_COLUMNS

    gold = [["B-PER", "O"], ["B-LOC", "O"], ["O", "B-ORG"], ["B-PER", "B-LOC"]] * 3
    weak = [["B-PER", "O"], ["O", "O"], ["O", "O"], ["B-LOC", "O"]] * 3
    runs, sents = [], []
    for run, lang, ft, pred in [("a", "zh", "none", weak), ("b", "zh", "qlora", gold),
                                ("c", "ja", "none", weak), ("d", "ja", "qlora", weak)]:  # fmt: skip
        runs.append(
            {**dict.fromkeys(SETTING_COLUMNS, "x"), "run": run, "language": lang, "finetune": ft, "seed": 0}
        )
        sents.append(pd.DataFrame({"run": run, "sentence_id": [f"{lang}-{i}" for i in range(12)],
                                   "gold_tags": gold, "pred_tags": pred}))  # fmt: skip
    t = ft_comparison(pd.DataFrame(runs), pd.concat(sents, ignore_index=True), n_boot=100).set_index(
        "language"
    )
    assert list(t["n_boot"]) == [1000, 1000]
    assert list(t["p_holm"]) == pytest.approx(holm(list(t["p_value"])))
    assert t.loc["ja", "p_value"] == 1.0 and t.loc["zh", "p_value"] < 0.05
    assert list(t["significant_0.05"]) == [p < 0.05 for p in t["p_holm"]]


def test_results_tables_print_discordant_pairs_and_holm(capsys):
    spec = importlib.util.spec_from_file_location(
        "rm_tables", REPO / "experiments" / "real_model" / "tables.py"
    )
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    from eatlab.analysis.alignment import paired_tests

    tests = paired_tests(_pair_frame(), n_boot=200)
    tables._paired(tests)
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "constrained" in line)
    assert "| 4/0 | 0.125 |" in row and "| 8 |" in row
    assert "Holm over the 4 p-values" in out
    assert tables._p(1 / 12001) == "<0.001" and tables._p(0.0532) == "0.053"


def test_score_bootstraps_over_units_when_given():
    from eatlab.eval.scores import score

    gold = [["B-PER", "O"], ["B-LOC", "O"], ["O", "B-ORG"], ["B-PER", "B-LOC"]]
    pred = [["B-PER", "O"], ["O", "O"], ["O", "B-ORG"], ["B-LOC", "O"]]
    tokens = [["a", "b"]] * 4
    plain = score(gold, pred, tokens, "en", char_tokenized=False, n_boot=300)
    dup = score(
        gold * 2, pred * 2, tokens * 2, "en", char_tokenized=False, n_boot=300, units=[0, 1, 2, 3] * 2
    )
    assert plain["bootstrap"]["unit"] == "sentence" and dup["bootstrap"]["unit"] == "cluster"
    assert dup["entity_f1"] == plain["entity_f1"]
    assert dup["entity_f1_ci95"] == pytest.approx(plain["entity_f1_ci95"])
