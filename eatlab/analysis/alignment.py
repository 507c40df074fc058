"""The alignment benchmark's tables (`eatlab-align-eval` run dirs): scores per language and setting with their
95% intervals, and paired tests between settings on the same held-out pairs.

Statistics (docs/metrics.md, "Statistics"): exact match and placed share are proportions with Wilson intervals;
exact-match deltas use the exact McNemar test on the discordant pairs (shown) with its Clopper-Pearson interval;
character-F1 deltas use the paired bootstrap over the independent unit, (sentence, normalised gold) when the
per-pair records carry them (else the pair); each paired table is one family with Holm-adjusted p-values beside
the raw ones, and enough resamples that the smallest bootstrap p can pass Holm.

A *setting* is what the runs of one language differ in (prompt set, rounds, `alignment.*`, fine-tuning) plus the
span recovery (every run reports both, eatlab's and the reference release's), so "reference prompts + reference
recovery" and "eatlab prompts + eatlab recovery + constrained" are two rows of one table.
"""

from __future__ import annotations

import unicodedata

import pandas as pd

from eatlab.eval.bootstrap import paired_bootstrap_mean_test
from eatlab.eval.stats import holm, n_boot_for_family, paired_exact, proportion_ci
from eatlab.rundir import ALIGN_BACKWARD, DONE, RunDir

TASK = "align_eval"
RECOVERIES = ("eatlab", "reference")
PAIR_METRICS = ("exact", "char_f1", "placed")


def is_align_eval(rd: RunDir) -> bool:
    return ((rd.metrics or {}).get("run") or {}).get("task") == TASK or (rd.config or {}).get(
        "task_name"
    ) == TASK


def setting_of(run: dict) -> str:
    """`<prompts> r<rounds> <free|constrained[-rank]>[ +<finetune>]`, from metrics.json's `run` block."""
    align = run.get("alignment") or {}
    mode = "free"
    if align.get("constrained"):
        mode = "constrained" + ("-rank" if align.get("select") == "rank" else "")
    rounds = (run.get("prompt_rounds") or {}).get("backward")
    ft = run.get("finetune")
    return f"{run.get('prompts')} r{rounds} {mode}" + (f" +{ft}" if ft and ft != "none" else "")


def _labels(dirs: list[RunDir]) -> dict[str, str]:
    """Each run's setting; runs of one language with the same setting get the overrides that tell them apart."""
    base = {rd.name: setting_of(rd.metrics["run"]) for rd in dirs}
    lang = {rd.name: rd.metrics["run"]["language"] for rd in dirs}
    out = {}
    for rd in dirs:
        twins = [d for d in dirs if lang[d.name] == lang[rd.name] and base[d.name] == base[rd.name]]
        if len(twins) == 1:
            out[rd.name] = base[rd.name]
            continue
        shared = set.intersection(*(set(d.overrides) for d in twins))
        own = [o for o in rd.overrides if o not in shared]
        out[rd.name] = f"{base[rd.name]} [{' '.join(own)}]"
    return out


def _text(v) -> str | None:
    """A record's sentence or gold: a string, or a dict holding it under `text` (else its `id`)."""
    if isinstance(v, dict):
        v = v.get("text", v.get("id"))
    return None if v is None else str(v)


def unit_of(record: dict) -> str:
    """The independent unit of a per-pair record: its own `unit` when align-eval wrote one, else (sentence,
    normalised gold) when it has both (so "Olympic" and "OLYMPIC" in one sentence are one item), else the pair."""
    if record.get("unit") is not None:
        return repr(record["unit"])
    sentence, gold = _text(record.get("sentence")), _text(record.get("gold"))
    if sentence is not None and gold is not None:
        return repr((sentence, " ".join(unicodedata.normalize("NFKC", gold).casefold().split())))
    return repr(record["pair_id"])


def load_alignment(dirs: list[RunDir]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per run and recovery, one row per run, recovery and pair) of the finished benchmark runs."""
    runs, pairs = [], []
    dirs = [rd for rd in dirs if rd.status == DONE and is_align_eval(rd)]
    labels = _labels(dirs)
    for rd in dirs:
        m = rd.metrics
        run = m["run"]
        setting = labels[rd.name]
        naming = m.get("naming") or {}
        for rec in RECOVERIES:
            b = (m.get("backward") or {}).get(rec)
            if b is None:
                continue
            row = {"run": rd.name, "language": run["language"], "model": run.get("model"), "setting": setting,
                   "recovery": rec, "n": b["n"]}  # fmt: skip
            for k in PAIR_METRICS:
                row[k], (row[f"{k}_lo"], row[f"{k}_hi"]) = b[k]["mean"], b[k]["ci95"]
            for k in ("exact", "placed"):  # proportions: Wilson, never zero-width at 0/n or n/n
                row[f"{k}_lo"], row[f"{k}_hi"] = proportion_ci(round(b[k]["mean"] * b["n"]), b["n"])
            row["verbatim_share"] = m["backward"].get("verbatim_share")
            for k in ("exact", "chrf"):
                row[f"naming_{k}"] = (naming.get(k) or {}).get("mean")
            row["llm_calls"], row["seconds"] = m.get("llm_calls"), (m.get("seconds") or {}).get("total")
            runs.append(row)
        for r in rd.artifact(ALIGN_BACKWARD):
            for rec in RECOVERIES:
                if rec in r:
                    pairs.append({"run": rd.name, "language": run["language"], "setting": setting,
                                  "recovery": rec, "pair_id": r["pair_id"], "unit": unit_of(r),
                                  **{k: float(r[rec][k]) for k in PAIR_METRICS}})  # fmt: skip
    return pd.DataFrame(runs), pd.DataFrame(pairs)


def alignment_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Scores per language, setting and recovery, in percent with 95% intervals (a human-readable table; exact
    match with its Wilson interval)."""
    if runs.empty:
        return pd.DataFrame()

    def cell(r, k):
        return f"{100 * r[k]:.1f} [{100 * r[f'{k}_lo']:.1f}, {100 * r[f'{k}_hi']:.1f}]"

    out = pd.DataFrame(
        {
            "language": runs["language"],
            "setting": runs["setting"],
            "recovery": runs["recovery"],
            "pairs": runs["n"],
            "exact %": [cell(r, "exact") for _, r in runs.iterrows()],
            "char F1 %": [cell(r, "char_f1") for _, r in runs.iterrows()],
            "placed %": [f"{100 * v:.1f}" for v in runs["placed"]],
            "verbatim %": [f"{100 * v:.1f}" for v in runs["verbatim_share"]],
            "naming exact %": [None if pd.isna(v) else f"{100 * v:.1f}" for v in runs["naming_exact"]],
            "naming chrF %": [None if pd.isna(v) else f"{100 * v:.1f}" for v in runs["naming_chrf"]],
        }
    )
    return out.sort_values(["language", "setting", "recovery"], kind="stable").reset_index(drop=True)


def paired_tests(
    pairs: pd.DataFrame, baseline: tuple[str, str] | None = None, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Every (setting, recovery) of a language against the baseline on the pairs both scored.

    Exact match: delta, the discordant pairs (`exact_a_only`: this setting right and the baseline wrong,
    `exact_b_only` the reverse), exact McNemar p and its agreeing 95% interval (eatlab.eval.stats.paired_exact).
    Character F1: delta, 95% interval and two-sided paired bootstrap p, resampling the frame's `unit` column
    (`char_f1_units` of them) when present, else the pairs. The table is one family: `*_p_holm` are Holm-adjusted
    over all its p-values, and the bootstrap uses at least `n_boot_for_family(family size)` resamples.

    `baseline` (setting, recovery): default, the reference release's way when present (reference prompts,
    reference recovery, free), else the first free setting without an adapter with eatlab's recovery, else the
    first with eatlab's recovery.
    """
    if pairs.empty:
        return pd.DataFrame()
    todo = []
    for lang, g in pairs.groupby("language", sort=True):
        combos = list(dict.fromkeys(zip(g["setting"], g["recovery"])))
        base = baseline if baseline in combos else None
        if base is None:
            base = (
                next((c for c in combos if c[0].startswith("reference") and " free" in c[0] and c[1] == "reference"), None)
                or next((c for c in combos if c[1] == "eatlab" and " free" in c[0] and "+" not in c[0]), None)
                or next((c for c in combos if c[1] == "eatlab"), combos[0])
            )  # fmt: skip
        b = g[(g["setting"] == base[0]) & (g["recovery"] == base[1])].set_index("pair_id")
        for combo in combos:
            if combo != base:
                a = g[(g["setting"] == combo[0]) & (g["recovery"] == combo[1])].set_index("pair_id")
                todo.append((lang, combo, base, a, b))
    n_boot = max(n_boot, n_boot_for_family(2 * len(todo)))
    rows = []
    for lang, combo, base, a, b in todo:
        shared = [p for p in a.index if p in b.index]
        row = {"language": lang, "setting": combo[0], "recovery": combo[1], "baseline": f"{base[0]} / {base[1]}",
               "pairs": len(shared)}  # fmt: skip
        e = paired_exact(a.loc[shared, "exact"] > 0.5, b.loc[shared, "exact"] > 0.5)
        row["exact_delta"] = e["delta"]
        row["exact_delta_lo"], row["exact_delta_hi"] = e["delta_ci95"]
        row["exact_a_only"], row["exact_b_only"] = e["a_only"], e["b_only"]
        row["exact_p"] = e["p_value"]
        units = list(b.loc[shared, "unit"]) if "unit" in b else None
        t = paired_bootstrap_mean_test(
            a.loc[shared, "char_f1"], b.loc[shared, "char_f1"], n_boot=n_boot, seed=seed, units=units
        )
        row["char_f1_delta"] = t["delta"]
        row["char_f1_delta_lo"], row["char_f1_delta_hi"] = t["delta_ci95"]
        row["char_f1_p"] = t["p_value"]
        row["char_f1_units"], row["n_boot"] = t["n_units"], n_boot
        rows.append(row)
    out = pd.DataFrame(rows)
    if not out.empty:
        adjusted = holm(list(out["exact_p"]) + list(out["char_f1_p"]))
        out["exact_p_holm"], out["char_f1_p_holm"] = adjusted[: len(out)], adjusted[len(out) :]
    return out
