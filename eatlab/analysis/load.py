"""Load the runs of a sweep (or any folder of run dirs) into two tables: one row per run, one per sentence.

A run dir is a folder with metrics.json or error.json. Its settings come from metrics.json's `run` block and
resolved_config.yaml; its per-sentence rows from artifacts/attribution.jsonl (entity classes), predictions.conll
(tags, for paired bootstrap tests) and artifacts/forward.jsonl (English, entropies), joined by sentence id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from eatlab.data.languages import get_language
from eatlab.data.loader import is_redirect
from eatlab.data.record import Sentence
from eatlab.errors import ConfigError, DataError
from eatlab.eval.scores import SCORE_KEYS

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


@dataclass
class RunDir:
    """One run dir with what was read from it."""

    path: Path
    name: str
    status: str  # ok | failed | incomplete
    metrics: dict | None
    error: dict | None
    config: dict | None
    overrides: list[str]


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise DataError(str(path), f"not valid JSON ({exc})") from None


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError as exc:
                    raise DataError(str(path), f"not valid JSON ({exc})", line=n) from None
    return out


def find_run_dirs(root: str | Path) -> list[Path]:
    """Run dirs under `root` (or `root` itself): folders holding metrics.json or error.json."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(str(root), "not a directory")
    found = {p.parent for name in ("metrics.json", "error.json") for p in root.rglob(name)}
    found = {d for d in found if ".submitit" not in d.parts and "analysis" not in d.relative_to(root).parts}
    return sorted(found, key=lambda d: (_job_num(d), str(d)))


def _job_num(d: Path) -> int:
    head = d.name.split("_", 1)[0]
    return int(head) if head.isdigit() else 10**9


def read_run_dir(path: Path, root: Path | None = None) -> RunDir:
    path = Path(path)
    metrics = _read_json(path / "metrics.json")
    error = _read_json(path / "error.json")
    cfg_path = path / "resolved_config.yaml"
    config = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else None
    ov_path = path / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(ov_path.read_text(encoding="utf-8")) if ov_path.is_file() else []
    if not overrides and (path / "provenance.json").is_file():
        overrides = (_read_json(path / "provenance.json") or {}).get("overrides") or []
    status = "failed" if error else "ok" if metrics else "incomplete"
    name = (
        str(path.relative_to(root))
        if root is not None and path != root and path.is_relative_to(root)
        else path.name
    )
    return RunDir(path, name, status, metrics, error, config, [str(o) for o in overrides or []])


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
        "status": rd.status,
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
    records = read_jsonl(rd.path / "record.jsonl")
    row["wandb_group"] = (records[-1].get("group") or None) if records else None
    return row


def load_runs(root: str | Path) -> tuple[pd.DataFrame, list[RunDir]]:
    """One row per run dir under `root` (failed and incomplete runs included, with their status)."""
    root = Path(root)
    dirs = [read_run_dir(d, root) for d in find_run_dirs(root)]
    if not dirs:
        raise DataError(str(root), "no run dirs (folders with metrics.json or error.json) found")
    return pd.DataFrame([run_row(rd) for rd in dirs]), dirs


def read_predictions_conll(path: Path) -> list[tuple[list[str], list[str], list[str]]]:
    """(tokens, gold tags, predicted tags) per sentence of a run's predictions.conll."""
    sentences, toks, gold, pred = [], [], [], []
    with Path(path).open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            line = line.rstrip("\n")
            if not line.strip():
                if toks:
                    sentences.append((toks, gold, pred))
                    toks, gold, pred = [], [], []
                continue
            cols = line.split("\t")
            if len(cols) != 3:
                raise DataError(
                    str(path), f"expected `token<TAB>gold<TAB>pred`, got {len(cols)} columns", line=n
                )
            toks.append(cols[0])
            gold.append(cols[1])
            pred.append(cols[2])
    if toks:
        sentences.append((toks, gold, pred))
    return sentences


def load_sentences(rd: RunDir) -> pd.DataFrame:
    """One row per sentence of a finished run: entity counts and classes, English, entropy, redirect flag."""
    attribution = read_jsonl(rd.path / "artifacts" / "attribution.jsonl")
    forward = {r["sentence_id"]: r for r in read_jsonl(rd.path / "artifacts" / "forward.jsonl")}
    lang = _get(rd.metrics, "run.language") or _get(rd.config, "language.code")
    try:
        language = get_language(lang)
    except ConfigError:
        language = None
    conll = rd.path / "predictions.conll"
    tagged = read_predictions_conll(conll) if conll.is_file() else []
    if tagged and len(tagged) != len(attribution):
        raise DataError(str(conll), f"{len(tagged)} sentences but attribution.jsonl has {len(attribution)}")
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
        for cls in ("found", "lost_in_translation", "missed_by_ner", "misaligned_backward"):
            row[f"gold_{cls}"] = gold_cls.count(cls)
        if tagged:
            row["tokens"], row["gold_tags"], row["pred_tags"] = tagged[i]
        rows.append(row)
    return pd.DataFrame(rows)


def load_all_sentences(dirs: list[RunDir]) -> pd.DataFrame:
    frames = [load_sentences(rd) for rd in dirs if rd.status == "ok"]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
