"""Evidence records: the per-sample records a table of docs/results.md is computed from, kept as small gzip JSONL.

Why: a run dir is large and was never kept, so a table could not be re-derived. An evidence file keeps what the
table needs and nothing else: one header line, one `run` line per run (what ran, where, at which commit, with
which command, on which machine; its calls and seconds; its own reported scores, to check the recomputation),
and one line per sample:
- `align` (eatlab-align-eval runs) and `control`: one `pair` line per pair (id, unit, gold position, gold token
  span, the answer, each recovery's span, exact match, char F1 and reason, and the copy-the-head control's answer
  and placements). The pair id (`<lang>-eacl-<index in corpus_<lang>.json>`) and `data_sha256` name the sentence
  in the EACL release.
- `e2e` (eatlab runs: EAT, direct_llm, translate_test): one `sentence` line per sentence (id
  `<lang>-<split>-<index>`, gold and predicted entities as (type, token start, end), entity tp/fp/fn, and the
  LLM's final answers: the translation's hash and each English entity's backward answer), so that entity F1
  and "the same answers in two runs" can be counted. The id and the data file's hash name the sentence.
Sentences are not copied.

The bytes are reproducible: sorted keys, no gzip time stamp or file name.
"""

from __future__ import annotations

import gzip
import json
import platform
import subprocess
import sys
from pathlib import Path

SCHEMA = 1
RECOVERIES = ("eatlab", "reference")
KINDS = ("align", "control", "e2e")  # the renderer a file's header names (generated.py)
NA = "n/a"  # a factor that does not apply to a run (the alignment of a method without a backward LLM)
SHORT_ANSWER = 40  # characters: a longer answer (say a copied sentence) is kept as its hash
# an eatlab run's own scores (metrics.json), kept on its run line to check the recomputation
REPORTED = ("entity_precision", "entity_recall", "entity_f1", "entity_f1_ci95", "reference_token_micro_f1",
            "n_gold_entities", "n_pred_entities")  # fmt: skip


def _placement(p: dict) -> dict:
    """A placement as kept: its token span (None: not placed), exact match, char F1 and the recovery's reason."""
    return {
        "span": p.get("span"),
        "exact": bool(p["exact"]),
        "char_f1": p["char_f1"],
        "reason": p.get("reason"),
    }


def pair_record(run: str, rec: dict, with_model: bool) -> dict:
    """One pair line from an align-eval per-pair record (artifacts/align_backward*.jsonl, or a control record)."""
    out = {
        "type": "pair",
        "run": run,
        "pair_id": rec["pair_id"],
        "unit": rec["unit"],
        "position": rec["position"],
        "gold": rec["gold"]["span"] if isinstance(rec["gold"], dict) else rec["gold"],
    }
    if with_model:
        out["answer"] = rec["answer"]
        out["error"] = rec.get("error")
        out["verbatim"] = rec.get("verbatim")
        out |= {r: _placement(rec[r]) for r in RECOVERIES}
    ctl = rec["control"]
    out["control"] = {"answer": ctl["answer"], **{r: _placement(ctl[r]) for r in RECOVERIES}}
    return out


TRACKED = (
    "eatlab",
    "conf",
)  # the code and configuration a number depends on (the dirty flag looks here only)


def git_state(repo: Path) -> dict:
    """The commit of `repo` now, and its uncommitted changes under eatlab/ and conf/ (for evidence computed here,
    not read from a run's provenance)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout

    try:
        changed = git("status", "--porcelain", "--untracked-files=no", "--", *TRACKED).splitlines()
        return {"commit": git("rev-parse", "HEAD").strip(), "dirty": bool(changed),
                "dirty_paths": sorted(line[3:] for line in changed)}  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None, "dirty_paths": None}


def _alignment(al: dict) -> str:
    """free, constrained or ranked, from an `alignment` node."""
    if not al.get("constrained"):
        return "free"
    return "ranked" if al.get("select") == "rank" else "constrained"


def _factors(rd) -> dict:
    """What a run is, as the factors a table compares: prompts, rounds, alignment, adapter, compute dtype."""
    run = rd.metrics["run"]
    backend = (rd.config or {}).get("backend") or {}
    return {
        "prompts": run.get("prompts"),
        "rounds": (run.get("prompt_rounds") or {}).get("backward"),
        "alignment": _alignment(run.get("alignment") or {}),
        "finetune": run.get("finetune") or "none",
        "dtype": backend.get("dtype"),
    }


def _unique_name(rd, seen: set) -> str:
    """The run dir's folder name; two folders of one name (two sweeps) are kept apart with a trailing '+'."""
    name = rd.path.name
    while name in seen:
        name += "+"
    seen.add(name)
    return name


def _provenance(rd, machine: str | None) -> dict:
    """Where a run line comes from: commit, command, time and machine (the provenance.json eatlab wrote)."""
    prov = rd.provenance or {}
    git = prov.get("git") or {}
    return {
        "commit": git.get("commit") or rd.metrics["run"].get("git_commit"),
        "dirty": git.get("dirty"),
        "command": prov.get("command"),
        "overrides": rd.overrides,
        "time_utc": prov.get("time_utc"),
        "machine": machine or prov.get("platform"),
    }


def run_records(run_dirs, machine: str | None) -> list[dict]:
    """The run and pair lines of finished align-eval run dirs (eatlab.rundir.RunDir), in the order given."""
    from eatlab.analysis.alignment import is_align_eval
    from eatlab.eat.align_eval import SHIFTED_ARTIFACT
    from eatlab.rundir import ALIGN_BACKWARD, DONE

    out, seen = [], set()
    for rd in run_dirs:
        if rd.status != DONE or not is_align_eval(rd):
            print(f"skipped: {rd.path} (not a finished align-eval run)", file=sys.stderr)
            continue
        name = _unique_name(rd, seen)
        m, prov = rd.metrics, rd.provenance or {}
        run, data = m["run"], m.get("data") or {}
        bw = m.get("backward") or {}
        out.append(
            {
                "type": "run",
                "run": name,
                "language": run["language"],
                "split": run.get("split") or data.get("split"),
                "model": run.get("model"),
                "factors": _factors(rd),
                **_provenance(rd, machine),
                "data_sha256": data.get("sha256") or (prov.get("data") or {}).get("sha256"),
                "heldout_pairs": data.get("heldout_pairs"),
                "llm_calls": m.get("llm_calls"),
                "seconds": (m.get("seconds") or {}).get("total"),
                "reported": {
                    r: {k: (bw.get(r) or {}).get(k, {}).get("mean") for k in ("exact", "char_f1")}
                    for r in RECOVERIES
                },
            }
        )
        for stage in (ALIGN_BACKWARD, SHIFTED_ARTIFACT):
            out += [pair_record(name, r, with_model=True) for r in rd.artifact(stage)]
    return out


def control_records(
    eacl_root: str, languages: list[str], splits: list[str], overrides: list[str]
) -> list[dict]:
    """The copy-the-head control with no model, on every pair of each language's slices (and their shifted
    variants), drawn exactly as `eatlab-align-eval align_eval.limit=null` draws them (its composed config and
    `heldout_cases`)."""
    from hydra import compose, initialize_config_dir

    from eatlab.cli.align_eval import heldout_cases
    from eatlab.data.languages import get_language
    from eatlab.eat.align_eval import control_record
    from eatlab.paths import CONF_DIR

    here = git_state(CONF_DIR.parent)
    out = []
    for lang in languages:
        for split in splits:
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg = compose(
                    "align_eval",
                    [f"heldout.eacl_root={eacl_root}", f"language={lang}", f"align_eval.split={split}",
                     "align_eval.limit=null", *overrides],
                )  # fmt: skip
            cases, shifted, prov = heldout_cases(cfg, get_language(lang))
            name = f"{lang}-{split}"
            out.append(
                {
                    "type": "run",
                    "run": name,
                    "language": lang,
                    "split": split,
                    "model": None,
                    "factors": {"control": "copy_head"},
                    **here,
                    "command": "python " + " ".join(sys.argv),
                    "overrides": overrides,
                    "machine": f"any (no model); built on {platform.platform()}",
                    "data_sha256": prov["sha256"],
                    "heldout_pairs": prov["heldout_pairs"],
                    "seed": int(cfg.seed),
                }
            )
            for case_list, shift in ((cases, False), (shifted, True)):
                for c in case_list:
                    rec = {
                        "pair_id": c.id,
                        "unit": c.unit,
                        "position": "shifted" if shift else c.position,
                        "gold": [c.gold.start, c.gold.end],
                        "control": control_record(c, lang),
                    }
                    out.append(pair_record(name, rec, with_model=False))
    return out


def _e2e_factors(rd) -> dict:
    """What an eatlab run is, as the factors a table compares. `alignment` is `n/a` for a method without a
    backward LLM; `dtype` is provenance's resolved compute dtype, or (older runs) the one the answers' cache key names
    (`+dtype:`), else `backend.dtype`;
    `batch_invariant`: whether the answers' cache key names batch-invariant decoding (half precision only; `n/a`
    in fp32, where the setting does nothing)."""
    m, cfg = rd.metrics, rd.config or {}
    run, backend = m["run"], cfg.get("backend") or {}
    rounds = run.get("prompt_rounds") or {}
    fwd, bwd = rounds.get("forward"), rounds.get("backward")
    prov = rd.provenance or {}
    key = str(prov.get("model_key") or "")
    dtype = key.split("+dtype:", 1)[1].split("+", 1)[0] if "+dtype:" in key else backend.get("dtype")
    compute = prov.get("compute") or {}  # runs since provenance names it: the resolved dtype itself
    dtype = compute.get("dtype") or dtype
    return {
        "model": run.get("model"),
        "method": run.get("method"),
        "prompts": run.get("prompts"),
        "rounds": fwd if bwd in (None, fwd) else f"f{fwd}b{bwd}",
        "alignment": _alignment(cfg.get("alignment") or {}) if run.get("method") == "eat" else NA,
        "finetune": run.get("finetune") or "none",
        "dtype": dtype,
        "batch_invariant": "+batch_invariant" in key if dtype in ("bfloat16", "float16") else NA,
    }


def _short(text: str | None, sentence: str) -> str | None:
    """An answer as kept: itself when short, else `sha256:<16 hex>` (still tells equal answers apart); an answer
    that holds the whole source sentence is hashed too (sentences are not copied)."""
    from eatlab.utils.io import sha256_text

    whole = sentence.strip()
    if text is None or (len(text) <= SHORT_ANSWER and not (whole and whole in text)):
        return text
    return "sha256:" + sha256_text(text)[:16]


def sentence_records(name: str, rd) -> list[dict]:
    """One `sentence` line per sentence of a finished eatlab run, in the run's order: gold and predicted entities
    from predictions.conll (joined to attribution.jsonl's ids by position, as eatlab-analyze joins them), entity
    tp/fp/fn (exact span and type, seqeval's default chunking), the final answers (forward.jsonl's
    translation, hashed; backward.jsonl's answer per English entity), and whether the sentence is a Wikipedia
    redirect artefact (its text opens with the run's language's redirect word, eatlab.data.loader)."""
    from eatlab.data.bio import tags_to_spans
    from eatlab.data.loader import starts_with_redirect
    from eatlab.errors import DataError
    from eatlab.rundir import ATTRIBUTION, BACKWARD, FORWARD, PREDICTIONS
    from eatlab.utils.io import sha256_text

    redirect_words = ((rd.config or {}).get("language") or {}).get("redirect_words") or []
    attribution = rd.artifact(ATTRIBUTION)
    ids = [a["sentence_id"] for a in attribution]
    source = {a["sentence_id"]: a.get("text") or "" for a in attribution}
    tagged = rd.predictions()
    if len(tagged) != len(ids):
        raise DataError(
            rd.path / PREDICTIONS, f"{len(tagged)} sentences but attribution.jsonl has {len(ids)}"
        )
    english = {f["sentence_id"]: f.get("english") for f in rd.artifact(FORWARD)}
    answers: dict[str, list] = {}
    for b in rd.artifact(BACKWARD):
        text = source.get(b["sentence_id"], "")
        answers.setdefault(b["sentence_id"], []).append(
            [b["type"], _short(b["phrase"], text), _short(b["answer"], text)]
        )
    out = []
    for sid, (_, gold_tags, pred_tags) in zip(ids, tagged):
        gold = [[s.type, s.start, s.end] for s in tags_to_spans(gold_tags, "conlleval")]
        pred = [[s.type, s.start, s.end] for s in tags_to_spans(pred_tags, "conlleval")]
        tp = len({tuple(g) for g in gold} & {tuple(p) for p in pred})
        en = english.get(sid)
        out.append(
            {
                "type": "sentence",
                "run": name,
                "sentence_id": sid,
                "gold": gold,
                "pred": pred,
                "tp": tp,
                "fp": len(pred) - tp,
                "fn": len(gold) - tp,
                "english": None if en is None else "sha256:" + sha256_text(en)[:16],
                "answers": answers.get(sid, []),
                "redirect": starts_with_redirect(source.get(sid, ""), redirect_words),
            }
        )
    return out


def _extractor(identity: dict | None) -> dict | None:
    """The English NER a run used: its name and the first 12 hex of its model folder's fingerprint (the path is
    local to one machine; two trainings of one recipe are told apart by the fingerprint)."""
    if not identity:
        return None
    fp = identity.get("fingerprint")
    return {"name": identity.get("name"), **({"fingerprint": fp[:12]} if fp else {})}


def e2e_records(run_dirs, machine: str | None) -> list[dict]:
    """The run and sentence lines of finished eatlab run dirs (eatlab.rundir.RunDir), in the order given."""
    from eatlab.analysis.alignment import is_align_eval
    from eatlab.rundir import ATTRIBUTION, DONE

    out, seen = [], set()
    for rd in run_dirs:
        if rd.status != DONE or is_align_eval(rd) or not rd.artifact_path(ATTRIBUTION).is_file():
            print(f"skipped: {rd.path} (not a finished eatlab run)", file=sys.stderr)
            continue
        name = _unique_name(rd, seen)
        m, prov, cfg = rd.metrics, rd.provenance or {}, rd.config or {}
        run, data = m["run"], m.get("data") or {}
        out.append(
            {
                "type": "run",
                "run": name,
                "language": run["language"],
                "split": run.get("split"),
                "sample": (cfg.get("data") or {}).get("sample"),
                "limit": (cfg.get("data") or {}).get("limit"),
                "model": run.get("model"),
                "factors": _e2e_factors(rd),
                "adapter": prov.get("adapter"),
                "extractor": _extractor(prov.get("extractor")),
                **_provenance(rd, machine),
                "data_sha256": data.get("files_sha256") or (prov.get("data") or {}).get("files_sha256"),
                "n_sentences": m.get("n_sentences"),
                "llm_calls": m.get("llm_calls"),
                "seconds": (m.get("seconds") or {}).get("total"),
                "reported": {**{k: m.get(k) for k in REPORTED}, "failures": m.get("failures")},
            }
        )
        out += sentence_records(name, rd)
    return out


def write(path: Path, name_of_table: str, kind: str, records: list[dict], built_by: str) -> int:
    """Write the header and `records` as gzip JSONL with reproducible bytes; returns the file's size."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    header = {"type": "header", "schema": SCHEMA, "table": name_of_table, "kind": kind, "built_by": built_by}
    lines = [json.dumps(r, ensure_ascii=False, sort_keys=True) for r in [header, *records]]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(("\n".join(lines) + "\n").encode("utf-8"))
    return path.stat().st_size


def read(path: Path) -> tuple[dict, list[dict], list[dict]]:
    """(header, run lines, sample lines: `pair` or `sentence`) of an evidence file; a bad file is one error
    naming it."""
    from eatlab.errors import DataError

    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except (OSError, EOFError, json.JSONDecodeError) as e:
        raise DataError(path, f"not a readable evidence file ({e})") from e
    if not rows or rows[0].get("type") != "header" or rows[0].get("schema") != SCHEMA:
        raise DataError(path, f"no evidence header of schema {SCHEMA} on its first line")
    header = rows[0]
    if header.get("kind") not in KINDS:
        raise DataError(path, f"kind {header.get('kind')!r}: expected one of {KINDS}")
    runs = [r for r in rows[1:] if r.get("type") == "run"]
    samples = [r for r in rows[1:] if r.get("type") in ("pair", "sentence")]
    return header, runs, samples
