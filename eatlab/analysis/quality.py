"""Translation quality without gold translations: round-trip BLEU/chrF, BLEU/chrF against user references.

WikiANN has no English references, so what is measured must be said plainly:
- **round-trip**: the run's English is translated back into the source language by the *same* model (the run's
  resolved_config.yaml through `eatlab.llm.factory.build_client`, adapter included), greedily, with one fixed
  prompt; BLEU and chrF compare that back-translation with the source sentence, using sacrebleu's tokenizer for
  the language (conf/language/*.yaml: zh, char for ja/ko, 13a otherwise). It measures how much of the source
  survives the trip, which conflates forward and backward quality.
- **reference**: when the user gives reference translations (JSONL `{"sentence_id", "reference"}` or TSV
  `sentence_id<TAB>reference`), BLEU (13a) and chrF of the run's English against them.
Scores are fractions in [0, 1] (sacrebleu's 0-100 divided by 100). Back-translations are cached twice: by the
LLM layer's response cache, and in `<out>/roundtrip/<run>.jsonl` keyed by model, prompt and English.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from eatlab.data.languages import Language, get_language
from eatlab.errors import ConfigError, DataError
from eatlab.rundir import RESOLVED_CONFIG, read_jsonl
from eatlab.utils.io import atomic_write_text, sha256_text

log = logging.getLogger(__name__)

ROUNDTRIP_PROMPT = (
    "Translate the following English text into {language}. Output only the {language} translation, "
    "nothing else.\n\n{english}"
)
ROUNDTRIP_PROMPT_SHA256 = sha256_text(ROUNDTRIP_PROMPT)
REFERENCE_TOKENIZE = "13a"  # the references are English


def _bleu_chrf(hyp: str, ref: str, tokenize: str) -> tuple[float, float]:
    import sacrebleu

    if not hyp.strip() or not ref.strip():
        return 0.0, 0.0
    bleu = sacrebleu.sentence_bleu(hyp, [ref], tokenize=tokenize).score / 100.0
    chrf = sacrebleu.sentence_chrf(hyp, [ref]).score / 100.0
    return bleu, chrf


def corpus_bleu_chrf(hyps: list[str], refs: list[str], tokenize: str) -> tuple[float, float]:
    """Corpus BLEU and chrF as fractions; (nan, nan) for an empty corpus."""
    import sacrebleu

    if not hyps:
        return np.nan, np.nan
    bleu = sacrebleu.corpus_bleu(hyps, [refs], tokenize=tokenize).score / 100.0
    chrf = sacrebleu.corpus_chrf(hyps, [refs]).score / 100.0
    return bleu, chrf


def sacrebleu_tokenizer(language: str) -> str:
    try:
        return get_language(language).sacrebleu_tokenizer
    except ConfigError:
        return "13a"


# ----------------------------------------------------------------------------------------- references
def load_references(path: str | Path) -> dict[str, str]:
    """sentence_id -> reference translation, from JSONL (`sentence_id`, `reference`) or TSV (two columns)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "reference file not found")
    refs: dict[str, str] = {}
    jsonl = path.suffix.lower() in (".jsonl", ".json")
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if jsonl:
                try:
                    rec = json.loads(line)
                except ValueError as exc:
                    raise DataError(str(path), f"not valid JSON ({exc})", line=n) from None
                if not isinstance(rec, dict) or "sentence_id" not in rec or "reference" not in rec:
                    raise DataError(
                        str(path), "expected an object with `sentence_id` and `reference`", line=n
                    )
                sid, ref = str(rec["sentence_id"]), str(rec["reference"])
            else:
                parts = line.rstrip("\n").split("\t")
                if len(parts) != 2:
                    raise DataError(
                        str(path), f"expected `sentence_id<TAB>reference`, got {len(parts)} columns", line=n
                    )
                sid, ref = parts
            if sid in refs:
                raise DataError(str(path), f"duplicate sentence id {sid}", line=n)
            refs[sid] = ref
    if not refs:
        raise DataError(str(path), "no references")
    return refs


def score_references(sentences: pd.DataFrame, refs: dict[str, str]) -> pd.DataFrame:
    """Adds `ref_bleu`, `ref_chrf` per sentence (NaN where no reference is given)."""
    out = sentences.copy()
    bleu, chrf = [], []
    for sid, eng in zip(out["sentence_id"], out["english"]):
        if sid in refs:
            b, c = _bleu_chrf(str(eng or ""), refs[sid], REFERENCE_TOKENIZE)
        else:
            b, c = np.nan, np.nan
        bleu.append(b)
        chrf.append(c)
    out["reference"] = [refs.get(sid) for sid in out["sentence_id"]]
    out["ref_bleu"], out["ref_chrf"] = bleu, chrf
    return out


# ----------------------------------------------------------------------------------------- round trip
def _run_config(run_dir: Path, overrides: list[str]):
    from omegaconf import OmegaConf

    path = Path(run_dir) / RESOLVED_CONFIG
    if not path.is_file():
        raise DataError(str(path), "missing: the round trip needs the run's config to rebuild its model")
    cfg = OmegaConf.load(path)
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    return cfg


def _cache_key(model_key: str, english: str, max_new_tokens: int) -> str:
    return sha256_text(f"{model_key}\n{ROUNDTRIP_PROMPT_SHA256}\n{max_new_tokens}\n{english}")


class ClientPool:
    """One LLM client per distinct model setup (model, backend, adapter, cache), shared by the runs using it,
    so that a sweep over languages loads the weights once instead of once per run."""

    def __init__(self):
        self._clients: dict[str, object] = {}

    @staticmethod
    def fingerprint(cfg) -> str:
        from omegaconf import OmegaConf

        parts = {
            k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "backend", "cache") if k in cfg
        }
        parts["adapter"] = (
            cfg.finetune.get("adapter_path") if "finetune" in cfg and cfg.finetune.name != "none" else None
        )
        return sha256_text(json.dumps(parts, sort_keys=True, default=str))

    def get(self, cfg):
        key = self.fingerprint(cfg)
        if key not in self._clients:
            from eatlab.llm.factory import build_client

            self._clients[key] = build_client(cfg)
        return self._clients[key]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


def _read_cache(cache_file: Path) -> dict[str, dict]:
    return {rec["key"]: rec for rec in read_jsonl(cache_file, missing_ok=True)}


def roundtrip_run(
    run_dir: Path,
    sentences: pd.DataFrame,
    cache_file: Path,
    *,
    pool: ClientPool,
    overrides: list[str] = (),
    max_new_tokens: int = 256,
    batch_size: int = 64,
) -> pd.DataFrame:
    """Back-translate one run's English into its source language; returns sentence_id, roundtrip, bleu, chrf."""
    from eatlab.llm.base import GenerationSettings

    cfg = _run_config(run_dir, list(overrides))
    language = Language.from_config(cfg)  # the run's own language node (its saved config)
    tokenize = language.sacrebleu_tokenizer
    todo = sentences[sentences["english"].fillna("").str.strip() != ""]
    cached = _read_cache(cache_file)
    client = pool.get(cfg)
    model_key = str(getattr(client, "model_key", cfg.model.get("id")))
    keys = [_cache_key(model_key, e, max_new_tokens) for e in todo["english"]]
    missing = [i for i, k in enumerate(keys) if k not in cached]
    settings = GenerationSettings(max_new_tokens=int(max_new_tokens), do_sample=False)
    for lo in range(0, len(missing), batch_size):
        chunk = missing[lo : lo + batch_size]
        convs = [
            [
                {
                    "role": "user",
                    "content": ROUNDTRIP_PROMPT.format(
                        language=language.name, english=todo["english"].iloc[i]
                    ),
                }
            ]
            for i in chunk
        ]
        replies = client.chat(convs, settings, stage="roundtrip")
        for i, rep in zip(chunk, replies):
            cached[keys[i]] = {
                "key": keys[i],
                "sentence_id": todo["sentence_id"].iloc[i],
                "model_key": model_key,
                "roundtrip": (rep.text or "").strip(),
                "error": rep.error,
            }
        lines = [json.dumps(cached[k], ensure_ascii=False) for k in dict.fromkeys(keys) if k in cached]
        atomic_write_text(cache_file, "\n".join(lines) + "\n")  # after every batch: a kill loses one batch
    rows = []
    for sid, src, key in zip(todo["sentence_id"], todo["text"], keys):
        rec = cached[key]
        if rec.get("error"):
            rows.append({"sentence_id": sid, "roundtrip": "", "rt_bleu": np.nan, "rt_chrf": np.nan})
            continue
        b, c = _bleu_chrf(rec["roundtrip"], str(src), tokenize)
        rows.append({"sentence_id": sid, "roundtrip": rec["roundtrip"], "rt_bleu": b, "rt_chrf": c})
    return pd.DataFrame(rows, columns=["sentence_id", "roundtrip", "rt_bleu", "rt_chrf"])


def run_level_quality(runs: pd.DataFrame, sentences: pd.DataFrame) -> pd.DataFrame:
    """Per run: corpus round-trip and reference BLEU/chrF, mean per-token entropy (and whether approximated)."""
    out = runs.copy()
    cols = {k: [] for k in ("rt_bleu", "rt_chrf", "ref_bleu", "ref_chrf", "entropy_mean", "entropy_approx")}
    for _, run in runs.iterrows():
        s = sentences[sentences["run"] == run["run"]] if not sentences.empty else sentences
        vals = dict.fromkeys(cols, np.nan)
        vals["entropy_approx"] = None
        if not s.empty:
            tok = sacrebleu_tokenizer(str(run["language"]))
            if "roundtrip" in s:
                ok = s[s["rt_bleu"].notna()]
                vals["rt_bleu"], vals["rt_chrf"] = corpus_bleu_chrf(
                    list(ok["roundtrip"]), list(ok["text"]), tok
                )
            if "ref_bleu" in s and "reference" in s:
                ok = s[s["reference"].notna()]
                vals["ref_bleu"], vals["ref_chrf"] = corpus_bleu_chrf(
                    list(ok["english"].fillna("")), list(ok["reference"]), REFERENCE_TOKENIZE
                )
            ent = s[s["entropy_mean"].notna()]
            if not ent.empty:
                weights = ent["entropy_steps"].clip(lower=1)
                vals["entropy_mean"] = float(np.average(ent["entropy_mean"], weights=weights))
                vals["entropy_approx"] = bool(ent["entropy_approx"].any())
        for k in cols:
            cols[k].append(vals[k])
    for k, v in cols.items():
        out[k] = v
    return out
