"""Analyse a sweep dir end to end: load runs and sentences, translation quality, correlations, ablation tables,
plots and report.html, all written under `<sweep>/analysis/` (or `out_dir`)."""

from __future__ import annotations

import logging
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from eatlab.analysis import ablation, alignment, plots
from eatlab.analysis.load import load_all_sentences, load_runs
from eatlab.analysis.quality import (
    ROUNDTRIP_PROMPT,
    ClientPool,
    load_references,
    roundtrip_run,
    run_level_quality,
    score_references,
)
from eatlab.analysis.report import write_report
from eatlab.analysis.stats import correlation_table
from eatlab.rundir import DONE
from eatlab.utils.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

RUN_MEASURES = ["rt_bleu", "rt_chrf", "ref_bleu", "ref_chrf", "entropy_mean"]
RUN_TARGETS = ["entity_f1", "reference_token_micro_f1"]
SENTENCE_TARGETS = ["recall", "f1"]
LIST_COLUMNS = ("tokens", "gold_tags", "pred_tags")


@dataclass
class Analysis:
    """Everything eatlab-analyze computed; the notebook works on this object."""

    sweep_dir: Path
    out_dir: Path
    runs: pd.DataFrame
    sentences: pd.DataFrame
    correlations: pd.DataFrame
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    plots: dict[str, Path | None] = field(default_factory=dict)
    plot_reasons: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _quality_notes(runs_ok: pd.DataFrame, roundtrip: bool, references: Path | None) -> list[str]:
    notes = []
    if runs_ok.get("smoke_model", pd.Series(dtype=bool)).fillna(False).astype(bool).any():
        notes.append("Some runs use a tiny random SMOKE model: their scores and correlations mean nothing.")
    if roundtrip:
        notes.append(
            "Round-trip BLEU/chrF (rt_bleu, rt_chrf): each run's English was translated back into the source language "
            "by the same model (its resolved_config.yaml), greedily, with this prompt ({language} and {english} "
            "filled in):\n\n" + textwrap.indent(ROUNDTRIP_PROMPT, "    ") + "\n\n"
            "Scored against the source sentence with sacrebleu and the language's tokenizer. "
            "It measures what survives the trip, forward and back together; WikiANN has no reference translations."
        )
    else:
        notes.append("Round-trip translation was skipped (--no-roundtrip): rt_bleu and rt_chrf are empty.")
    if references is not None:
        notes.append(
            f"Reference BLEU/chrF (ref_bleu, ref_chrf): the runs' English against {references} (13a)."
        )
    if "entropy_mean" in runs_ok and runs_ok["entropy_mean"].notna().any():
        approx = runs_ok.loc[runs_ok["entropy_approx"] == True, "run"].tolist()  # noqa: E712
        notes.append(
            "entropy_mean: mean per-token entropy (nats) of the final forward reply, recorded during generation, "
            "weighted by tokens. "
            + (
                f"Approximated from top-k log-probabilities (a lower bound) in runs: {', '.join(approx)}."
                if approx
                else "Exact (full next-token distributions) in every run."
            )
        )
    else:
        notes.append("entropy_mean: not recorded (the backend gave no log-probabilities).")
    return notes


def analyze_sweep(
    sweep_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    references: str | Path | None = None,
    roundtrip: bool = True,
    roundtrip_overrides: list[str] = (),
    roundtrip_max_new_tokens: int = 256,
    n_boot: int = 1000,
    seed: int = 0,
) -> Analysis:
    sweep_dir = Path(sweep_dir).resolve()
    out_dir = Path(out_dir) if out_dir else sweep_dir / "analysis"
    out_dir.mkdir(parents=True, exist_ok=True)
    runs, dirs = load_runs(sweep_dir)
    # the alignment benchmark's runs get their own tables (eatlab.analysis.alignment), not the end-to-end ones
    align_dirs = [d for d in dirs if alignment.is_align_eval(d)]
    align_runs, align_pairs = alignment.load_alignment(align_dirs)
    if align_dirs:
        skip = {d.name for d in align_dirs}
        dirs = [d for d in dirs if d.name not in skip]
        runs = runs[~runs["run"].isin(skip)].reset_index(drop=True)
    ok_dirs = [d for d in dirs if d.status == DONE]
    sentences = load_all_sentences(ok_dirs)
    refs_path = Path(references) if references else None

    if roundtrip and not sentences.empty:
        frames = []
        pool = ClientPool()
        try:
            for rd in ok_dirs:
                s = sentences[sentences["run"] == rd.name]
                if s.empty:
                    continue
                log.info("round trip: %s (%d sentences)", rd.name, len(s))
                cache = out_dir / "roundtrip" / (rd.name.replace("/", "__") + ".jsonl")
                rt = roundtrip_run(
                    rd.path,
                    s,
                    cache,
                    pool=pool,
                    overrides=list(roundtrip_overrides),
                    max_new_tokens=roundtrip_max_new_tokens,
                )
                frames.append(rt.assign(run=rd.name))
        finally:
            pool.close()
        if frames:
            sentences = sentences.merge(
                pd.concat(frames, ignore_index=True), on=["run", "sentence_id"], how="left"
            )
    if refs_path is not None and not sentences.empty:
        sentences = score_references(sentences, load_references(refs_path))

    runs_ok = runs[runs["status"] == "ok"].reset_index(drop=True)
    runs_ok = run_level_quality(runs_ok, sentences)
    runs = runs.merge(
        runs_ok[["run", *[c for c in RUN_MEASURES + ["entropy_approx"] if c in runs_ok]]],
        on="run",
        how="left",
    )

    # correlations: across runs (all, and per language when a language has several runs), across sentences
    corr = [
        correlation_table(
            runs_ok, RUN_MEASURES, RUN_TARGETS, level="run", group_by="language", n_boot=n_boot, seed=seed
        )
    ]
    if not sentences.empty:
        sent_measures = [
            m for m in ("rt_bleu", "rt_chrf", "ref_bleu", "ref_chrf", "entropy_mean") if m in sentences
        ]
        corr.append(
            correlation_table(
                sentences,
                sent_measures,
                SENTENCE_TARGETS,
                level="sentence",
                group_by="language",
                n_boot=n_boot,
                seed=seed,
            )
        )
    correlations = (
        pd.concat([c for c in corr if not c.empty], ignore_index=True)
        if any(not c.empty for c in corr)
        else pd.DataFrame()
    )

    tables = {
        "main_entity_f1": ablation.main_table(runs_ok, "entity_f1"),
        "main_reference_token_micro_f1": ablation.main_table(runs_ok, "reference_token_micro_f1"),
        "rounds_by_language": ablation.rounds_by_language(runs_ok),
        "ft_comparison": ablation.ft_comparison(runs_ok, sentences, n_boot=n_boot, seed=seed),
        "method_comparison": ablation.method_comparison(runs_ok, sentences, n_boot=n_boot, seed=seed),
        "nsl_vs_lsl": ablation.nsl_vs_lsl(runs_ok),
        "redirects": ablation.redirect_table(runs_ok, sentences),
        "seeds": ablation.seed_table(runs_ok),
        "failure_shares": ablation.failure_shares(runs_ok),
        "alignment": alignment.alignment_table(align_runs),
        "alignment_paired": alignment.paired_tests(align_pairs, n_boot=n_boot, seed=seed),
    }

    plot_dir = out_dir / "plots"
    quality_measure = next(
        (
            m
            for m in ("rt_chrf", "rt_bleu", "ref_chrf", "ref_bleu", "entropy_mean")
            if m in runs_ok and runs_ok[m].notna().sum() >= 2
        ),
        None,
    )
    sent_measure = next(
        (
            m
            for m in ("rt_chrf", "rt_bleu", "ref_chrf", "entropy_mean")
            if m in sentences and sentences[m].notna().sum() >= 3
        ),
        None,
    )
    made = {
        "F1 by language and prompt rounds": plots.f1_by_language_rounds(
            runs_ok, plot_dir / "f1_by_language_rounds.png"
        ),
        "Fine-tuning delta per language": plots.ft_delta(tables["ft_comparison"], plot_dir / "ft_delta.png"),
        "Translation quality vs F1 (runs)": (
            plots.quality_vs_f1(runs_ok, plot_dir / "quality_vs_f1.png", quality_measure)
            if quality_measure
            else None
        ),
        "Translation quality vs entity recall (sentences)": (
            plots.sentence_scatter(sentences, plot_dir / "sentence_quality_vs_recall.png", sent_measure)
            if sent_measure
            else None
        ),
        "Failure attribution per language": plots.failure_bars(
            tables["failure_shares"], plot_dir / "failures_by_language.png"
        ),
    }
    reasons = {
        "Fine-tuning delta per language": "no pair of runs differing only in finetune (w/ FT vs finetune=none)",
        "Translation quality vs F1 (runs)": "fewer than 2 runs with a quality measure",
        "Translation quality vs entity recall (sentences)": "fewer than 3 sentences with a quality measure",
        "F1 by language and prompt rounds": "no finished runs",
        "Failure attribution per language": "no failure attribution in metrics.json",
    }
    notes = _quality_notes(runs_ok, roundtrip, refs_path)
    failed = runs[runs["status"] != "ok"]
    for _, r in failed.iterrows():
        notes.append(
            f"run {r['run']} {r['status']}: {r['error'] or 'no metrics.json'} (left out of every table)"
        )

    analysis = Analysis(sweep_dir, out_dir, runs, sentences, correlations, tables, made, reasons, notes)
    write_outputs(analysis)
    return analysis


RUN_VIEW = ("run", "status", "language", "rounds", "finetune", "model", "seed", "entity_f1", "entity_f1 95% CI",
            "reference_token_micro_f1", "n_sentences", "rt_chrf", "ref_chrf", "entropy_mean", "error")  # fmt: skip


def runs_view(runs: pd.DataFrame) -> pd.DataFrame:
    """The report's runs table: the columns that fit a page (the interval in one cell); runs.csv has them all."""
    view = runs.copy()
    if {"entity_f1_ci_low", "entity_f1_ci_high"} <= set(view.columns):
        view["entity_f1 95% CI"] = [
            "" if pd.isna(lo) or pd.isna(hi) else f"{lo:.4f}\u2013{hi:.4f}"
            for lo, hi in zip(view["entity_f1_ci_low"], view["entity_f1_ci_high"])
        ]
    return view[[c for c in RUN_VIEW if c in view.columns]]


def write_outputs(a: Analysis) -> None:
    out = a.out_dir
    a.runs.to_csv(out / "runs.csv", index=False)
    a.sentences.drop(columns=[c for c in LIST_COLUMNS if c in a.sentences]).to_csv(
        out / "sentences.csv", index=False
    )
    a.correlations.to_csv(out / "correlations.csv", index=False)
    atomic_write_text(out / "correlations.json", a.correlations.to_json(orient="records", indent=1))
    (out / "tables").mkdir(exist_ok=True)
    for name, df in a.tables.items():
        df.to_csv(out / "tables" / f"{name}.csv", index=False)
    sections = [
        (
            "Runs",
            "One row per run dir; failed runs keep their error. The main columns: every column (BLEU, tokens, "
            "cache hits, timings, failure counts) is in runs.csv.",
            runs_view(a.runs),
        ),
        (
            "Main table: entity F1",
            "Entity-level micro F1 (seqeval default) per language; avg_nsl = mean over the NSLs present.",
            a.tables["main_entity_f1"],
        ),
        (
            "Main table: reference token micro F1",
            "The reference release's token-level scorer (the paper's 65.81 "
            "average over 8 NSLs is probably on this metric).",
            a.tables["main_reference_token_micro_f1"],
        ),
        ("Prompt rounds x language", "Entity F1, mean over seeds.", a.tables["rounds_by_language"]),
        (
            "W/ FT vs w/o FT",
            "Entity F1 with each fine-tuning choice vs finetune=none, per language: delta, 95% "
            "interval and two-sided paired bootstrap p-value over the shared sentences.",
            a.tables["ft_comparison"],
        ),
        (
            "Methods vs EAT",
            "Each baseline method vs method=eat on the same language, model and data: paired "
            "bootstrap as above.",
            a.tables["method_comparison"],
        ),
        ("NSL vs LSL", "Mean and std of the per-language entity F1.", a.tables["nsl_vs_lsl"]),
        (
            "Redirect sentences",
            "Entity F1 with and without Wikipedia redirect artefacts.",
            a.tables["redirects"],
        ),
        ("Seeds", "Settings run with several seeds: mean and standard deviation.", a.tables["seeds"]),
        ("Failure attribution", "Share of gold entities per outcome.", a.tables["failure_shares"]),
        (
            "Alignment benchmark",
            "eatlab-align-eval runs: backward alignment on held-out EACL pairs (exact span match, character "
            "F1, share placed, with 95% bootstrap intervals) and forward naming, per language and setting.",
            a.tables["alignment"],
        ),
        (
            "Alignment benchmark: paired tests",
            "Each setting vs the baseline on the pairs both scored: delta of exact match and character F1, "
            "95% interval and two-sided paired bootstrap p-value.",
            a.tables["alignment_paired"],
        ),
        (
            "Correlations",
            "Pearson, Spearman, Kendall with p-values and 95% bootstrap intervals; level run = across "
            "runs, sentence = across sentences (pooled over runs, and per language).",
            a.correlations,
        ),
    ]
    write_report(
        out / "report.html",
        f"eatlab analysis: {a.sweep_dir.name}",
        a.notes,
        sections,
        a.plots,
        a.plot_reasons,
    )
    atomic_write_json(
        out / "analysis.json",
        {
            "sweep_dir": str(a.sweep_dir),
            "n_runs": len(a.runs),
            "n_ok": int((a.runs["status"] == "ok").sum()),
            "n_sentences": len(a.sentences),
            "notes": a.notes,
            "plots": {k: (str(v) if v else None) for k, v in a.plots.items()},
            "tables": {k: f"tables/{k}.csv" for k in a.tables},
            "files": ["runs.csv", "sentences.csv", "correlations.csv", "correlations.json", "report.html"],
        },
    )
