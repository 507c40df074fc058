"""Load the runs of a sweep (or any folder of run dirs) into two tables: one row per run, one per sentence.

A run dir here is a folder with metrics.json or error.json, read through eatlab.rundir. Its settings come from
metrics.json's `run` block and resolved_config.yaml; its per-sentence rows from artifacts/attribution.jsonl
(entity classes), predictions.conll (tags, for paired bootstrap tests) and artifacts/forward.jsonl (English,
entropies), joined by sentence id.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from eatlab.data.languages import get_language
from eatlab.data.loader import is_redirect
from eatlab.data.record import Sentence
from eatlab.eat.attribution import GOLD_CLASSES
from eatlab.errors import ConfigError, DataError
from eatlab.eval.scores import SCORE_KEYS
from eatlab.rundir import ATTRIBUTION, DONE, ERROR, FORWARD, METRICS, PREDICTIONS, RunDir, iter_run_dirs

SETTING_COLUMNS = (
    "method",
    "model",
    "prompts",
    "rounds",
    "extractor",
    "finetune",
    "split",
    "drop_redirects",
    "generation",
)  # what distinguishes two runs of one language, besides the seed


def _get(d: dict | None, dotted: str, default=None):
    cur = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


def _rounds_label(fwd, bwd) -> str | None:
    if fwd is None:
        return None
    return f"r{fwd}" if bwd in (None, fwd) else f"f{fwd}b{bwd}"


def run_row(rd: RunDir) -> dict:
    """The flat row of one run: identity, settings, scores, cost and failure counts."""
    m, c = rd.metrics or {}, rd.config or {}
    run = m.get("run", {})
    lang = run.get("language") or _get(c, "language.code")
    try:
        nsl = get_language(lang).nsl if lang else None
    except ConfigError:
        nsl = None
    fwd = _get(run, "prompt_rounds.forward", _get(c, "prompt_rounds.forward"))
    bwd = _get(run, "prompt_rounds.backward", _get(c, "prompt_rounds.backward"))
    do_sample = bool(_get(c, "generation.do_sample", False))
    row = {
        "run": rd.name,
        "run_dir": str(rd.path),
        "status": rd.status_label,
        "error": (rd.error or {}).get("message"),
        "overrides": " ".join(rd.overrides),
        "language": lang,
        "nsl": nsl,
        "method": run.get("method") or _get(c, "method.name"),
        "model": run.get("model") or _get(c, "model.id"),
        "smoke_model": run.get("smoke_model", _get(c, "model.smoke", False)),
        "prompts": run.get("prompts") or _get(c, "prompts.name"),
        "rounds_forward": fwd,
        "rounds_backward": bwd,
        "rounds": _rounds_label(fwd, bwd),
        "extractor": run.get("extractor") or _get(c, "extractor.name"),
        "finetune": run.get("finetune") or _get(c, "finetune.name"),
        "split": run.get("split") or _get(c, "data.split"),
        "seed": run.get("seed", _get(c, "seed")),
        "drop_redirects": bool(_get(c, "data.drop_redirects", False)),
        "generation": "sampled" if do_sample else "greedy",
    }
    for k in (*SCORE_KEYS, "n_sentences", "llm_calls", "llm_cache_hits"):
        row[k] = m.get(k)
    lo, hi = (m.get("entity_f1_ci95") or [None, None])[:2]
    row["entity_f1_ci_low"], row["entity_f1_ci_high"] = lo, hi
    row["tokens_prompt"] = _get(m, "tokens.prompt")
    row["tokens_completion"] = _get(m, "tokens.completion")
    row["seconds_total"] = _get(m, "seconds.total")
    for side in ("gold", "predicted"):
        for cls, n in (_get(m, f"failures.{side}") or {}).items():
            row[f"{side}_{cls}"] = n
    row["wandb_group"] = rd.last_record.get("group") or None
    return row


def load_runs(root: str | Path) -> tuple[pd.DataFrame, list[RunDir]]:
    """One row per run dir under `root` (failed and incomplete runs included, with their status)."""
    dirs = list(iter_run_dirs(root, markers=(METRICS, ERROR)))
    if not dirs:
        raise DataError(str(root), "no run dirs (folders with metrics.json or error.json) found")
    return pd.DataFrame([run_row(rd) for rd in dirs]), dirs


def load_sentences(rd: RunDir) -> pd.DataFrame:
    """One row per sentence of a finished run: entity counts and classes, English, entropy, redirect flag."""
    attribution = rd.artifact(ATTRIBUTION)
    forward = {r["sentence_id"]: r for r in rd.artifact(FORWARD)}
    lang = _get(rd.metrics, "run.language") or _get(rd.config, "language.code")
    try:
        language = get_language(lang)
    except ConfigError:
        language = None
    tagged = rd.predictions()
    if tagged and len(tagged) != len(attribution):
        raise DataError(
            rd.path / PREDICTIONS, f"{len(tagged)} sentences but attribution.jsonl has {len(attribution)}"
        )
    rows = []
    for i, a in enumerate(attribution):
        sid = a["sentence_id"]
        gold_cls = [g[2] for g in a.get("gold", [])]
        pred_cls = [p[2] for p in a.get("predicted", [])]
        n_gold, n_pred, tp = len(gold_cls), len(pred_cls), pred_cls.count("correct")
        prec = tp / n_pred if n_pred else np.nan
        rec = tp / n_gold if n_gold else np.nan
        f1 = 2 * tp / (n_gold + n_pred) if n_gold + n_pred else np.nan
        fw = forward.get(sid, {})
        ents = fw.get("entropies") or []
        redirect = False
        if language is not None:
            redirect = is_redirect(
                Sentence(sid, language.code, [], [], language.char_tokenized, text=a.get("text", "")),
                language,
            )
        row = {
            "run": rd.name,
            "sentence_id": sid,
            "index": i,
            "language": lang,
            "text": a.get("text", ""),
            "english": a.get("english", fw.get("english", "")),
            "redirect": redirect,
            "n_gold": n_gold,
            "n_pred": n_pred,
            "tp": tp,
            "precision": prec,
            "recall": rec,
            "f1": f1,
            "forward_failed": bool(fw.get("error")),
            "entropy_mean": fw.get("entropy_mean") if fw.get("entropy_mean") is not None else np.nan,
            "entropy_steps": len(ents),
            "entropy_approx": bool(fw.get("entropy_approx")),
        }
        for cls in GOLD_CLASSES:
            row[f"gold_{cls}"] = gold_cls.count(cls)
        if tagged:
            row["tokens"], row["gold_tags"], row["pred_tags"] = tagged[i]
        rows.append(row)
    return pd.DataFrame(rows)


def load_all_sentences(dirs: list[RunDir]) -> pd.DataFrame:
    frames = [load_sentences(rd) for rd in dirs if rd.status == DONE]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
