"""Ablation tables over the runs of a sweep: main table, rounds x language, w/ vs w/o FT (paired bootstrap),
NSL vs LSL, with and without redirect sentences, and seeds (mean and standard deviation).

Runs are compared on the settings that vary in the sweep (SETTING_COLUMNS); runs that differ only in the seed
are averaged in the tables and summarised in the seeds table. Scores are fractions in [0, 1].
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from eatlab.analysis.load import SETTING_COLUMNS
from eatlab.eat.attribution import GOLD_CLASSES
from eatlab.eval.bootstrap import paired_bootstrap_test
from eatlab.eval.entity import entity_counts
from eatlab.eval.stats import holm, n_boot_for_family

METRICS = ("entity_f1", "reference_token_micro_f1")


def varying(runs: pd.DataFrame, exclude: tuple[str, ...] = ()) -> list[str]:
    """Setting columns that take more than one value among the runs."""
    return [
        c for c in SETTING_COLUMNS if c in runs and c not in exclude and runs[c].astype(str).nunique() > 1
    ]


def setting_label(row, cols: list[str]) -> str:
    return " ".join(f"{c}={row[c]}" for c in cols) or "all runs"


def main_table(runs: pd.DataFrame, metric: str = "entity_f1") -> pd.DataFrame:
    """Rows: setting combinations; columns: languages, then the mean over the NSLs present (`avg_nsl`)."""
    if runs.empty:
        return pd.DataFrame()
    cols = varying(runs)
    df = runs.assign(setting=[setting_label(r, cols) for _, r in runs.iterrows()])
    table = df.pivot_table(index="setting", columns="language", values=metric, aggfunc="mean")
    nsl_langs = sorted(set(df.loc[df["nsl"] == True, "language"]) & set(table.columns))  # noqa: E712
    if nsl_langs:
        table["avg_nsl"] = table[nsl_langs].mean(axis=1)
        table["n_nsl"] = table[nsl_langs].notna().sum(axis=1)
    table.columns.name = None
    return table.reset_index()


def rounds_by_language(runs: pd.DataFrame, metric: str = "entity_f1") -> pd.DataFrame:
    """Language (and any other varying setting) x prompt rounds, mean over seeds."""
    if runs.empty or "rounds" not in runs:
        return pd.DataFrame()
    index = ["language", *varying(runs, exclude=("rounds",))]
    table = runs.pivot_table(index=index, columns="rounds", values=metric, aggfunc="mean")
    table.columns.name = None
    return table.reset_index()


def _counts_for(sentences: pd.DataFrame, run: str, ids: list[str]):
    s = sentences[sentences["run"] == run].set_index("sentence_id").loc[ids]
    return entity_counts(list(s["gold_tags"]), list(s["pred_tags"]))


def paired_comparison(
    runs: pd.DataFrame,
    sentences: pd.DataFrame,
    column: str,
    baseline: str,
    *,
    ignore: tuple[str, ...] = (),
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Each run whose `column` is not `baseline`, against the baseline run that differs from it only in `column`
    (and the `ignore`d settings), same language and seed: entity F1 of both, the delta (run - baseline), its 95%
    interval and the two-sided paired bootstrap p-value over the sentences both runs share (Berg-Kirkpatrick et
    al. 2012; eatlab.eval.bootstrap; the sentence is the resampled unit).

    The table is one family of comparisons: `p_holm` is the Holm-adjusted p beside the raw `p_value`, and
    `significant_0.05` reads `p_holm`; the bootstrap uses at least `n_boot_for_family(rows)` resamples, so the
    smallest reportable p, 1/(B+1), can pass Holm."""
    if runs.empty or column not in runs or sentences.empty or "gold_tags" not in sentences:
        return pd.DataFrame()
    keys = ["language", "seed", *[c for c in SETTING_COLUMNS if c != column and c not in ignore]]
    base = runs[runs[column].astype(str) == baseline]
    todo = []
    for _, other in runs[runs[column].astype(str) != baseline].iterrows():
        match = base
        for k in keys:
            match = match[match[k].astype(str) == str(other[k])]
        if match.empty:
            continue
        b = match.iloc[0]
        ids_b = set(sentences.loc[sentences["run"] == b["run"], "sentence_id"])
        ids = [i for i in sentences.loc[sentences["run"] == other["run"], "sentence_id"] if i in ids_b]
        if ids:
            todo.append((other, b, ids))
    n_boot = max(n_boot, n_boot_for_family(len(todo)))
    rows = []
    for other, b, ids in todo:
        res = paired_bootstrap_test(
            _counts_for(sentences, other["run"], ids),
            _counts_for(sentences, b["run"], ids),
            n_boot=n_boot,
            seed=seed,
        )
        rows.append(
            {
                "language": other["language"],
                column: other[column],
                "baseline": f"{column}={baseline}",
                **{k: other[k] for k in varying(runs, exclude=(column, *ignore))},
                "seed": other["seed"],
                "n_sentences": len(ids),
                "f1": res.f1_a,
                "f1_baseline": res.f1_b,
                "delta": res.delta,
                "delta_ci_low": res.delta_ci95[0],
                "delta_ci_high": res.delta_ci95[1],
                "p_value": res.p_value,
                "n_boot": n_boot,
                "run": other["run"],
                "run_baseline": b["run"],
            }
        )
    out = pd.DataFrame(rows)
    if not out.empty:
        out.insert(out.columns.get_loc("p_value") + 1, "p_holm", holm(out["p_value"]))
        out.insert(out.columns.get_loc("p_holm") + 1, "significant_0.05", out["p_holm"] < 0.05)
    return out


def ft_comparison(runs: pd.DataFrame, sentences: pd.DataFrame, **kw) -> pd.DataFrame:
    """W/ FT vs w/o FT per language: every `finetune` choice against `finetune=none`."""
    return paired_comparison(runs, sentences, "finetune", "none", **kw)


def method_comparison(runs: pd.DataFrame, sentences: pd.DataFrame, **kw) -> pd.DataFrame:
    """Baselines vs EAT per language, same model and data (a method's own rounds/prompts/extractor may differ)."""
    return paired_comparison(
        runs, sentences, "method", "eat", ignore=("rounds", "prompts", "extractor"), **kw
    )


def nsl_vs_lsl(runs: pd.DataFrame, metric: str = "entity_f1") -> pd.DataFrame:
    """Mean, std and count of the per-language scores of non-Latin vs Latin-script languages, per setting."""
    if runs.empty or runs["nsl"].isna().all():
        return pd.DataFrame()
    cols = varying(runs)
    per_lang = runs.groupby(["language", "nsl", *cols], dropna=False)[metric].mean().reset_index()
    per_lang["script_group"] = np.where(per_lang["nsl"] == True, "NSL", "LSL")  # noqa: E712
    agg = per_lang.groupby(["script_group", *cols], dropna=False).agg(
        mean=(metric, "mean"),
        std=(metric, "std"),
        n_languages=("language", "nunique"),
        languages=("language", lambda s: ",".join(sorted(s))),
    )
    return agg.reset_index().assign(metric=metric)


def _micro_f1(tp, n_pred, n_gold) -> float:
    d = n_pred + n_gold
    return 2 * tp / d if d else np.nan


def redirect_table(runs: pd.DataFrame, sentences: pd.DataFrame) -> pd.DataFrame:
    """Per run: entity F1 on all sentences, without the redirect sentences, and on the redirects alone."""
    if runs.empty or sentences.empty:
        return pd.DataFrame()
    rows = []
    for _, r in runs.iterrows():
        s = sentences[sentences["run"] == r["run"]]
        if s.empty:
            continue
        red, rest = s[s["redirect"]], s[~s["redirect"]]
        rows.append(
            {
                "run": r["run"],
                "language": r["language"],
                **{c: r[c] for c in varying(runs)},
                "n_sentences": len(s),
                "n_redirects": len(red),
                "redirect_share": len(red) / len(s),
                "drop_redirects": r["drop_redirects"],
                "f1_all": _micro_f1(s["tp"].sum(), s["n_pred"].sum(), s["n_gold"].sum()),
                "f1_without_redirects": _micro_f1(
                    rest["tp"].sum(), rest["n_pred"].sum(), rest["n_gold"].sum()
                ),
                "f1_redirects_only": _micro_f1(red["tp"].sum(), red["n_pred"].sum(), red["n_gold"].sum()),
            }
        )
    return pd.DataFrame(rows)


def seed_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Settings run with several seeds: mean, standard deviation (ddof=1), min and max of each metric."""
    if runs.empty or runs["seed"].nunique() < 2:
        return pd.DataFrame()
    keys = ["language", *[c for c in SETTING_COLUMNS if c in runs]]
    rows = []
    for key, g in runs.groupby(keys, dropna=False):
        if g["seed"].nunique() < 2:
            continue
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        row["seeds"] = ",".join(str(s) for s in sorted(g["seed"]))
        row["n_seeds"] = int(g["seed"].nunique())
        for m in METRICS:
            row[f"{m}_mean"] = g[m].mean()
            row[f"{m}_std"] = g[m].std(ddof=1)
            row[f"{m}_min"], row[f"{m}_max"] = g[m].min(), g[m].max()
        rows.append(row)
    return pd.DataFrame(rows)


def failure_shares(runs: pd.DataFrame) -> pd.DataFrame:
    """Per language: share of gold entities in each attribution class (`eatlab.eat.attribution.GOLD_CLASSES`)."""
    cols = [f"gold_{c}" for c in GOLD_CLASSES if f"gold_{c}" in runs]
    if runs.empty or not cols:
        return pd.DataFrame()
    sums = runs.groupby("language")[cols].sum()
    shares = sums.div(sums.sum(axis=1).replace(0, np.nan), axis=0)
    shares.columns = [c.removeprefix("gold_") for c in cols]
    return shares.reset_index()
