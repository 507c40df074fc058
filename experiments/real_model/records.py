"""Evidence records: the per-sample records a table of docs/results.md is computed from, kept as small gzip JSONL.

Why: a run dir is large and was never kept, so a table could not be re-derived. An evidence file keeps what the
table needs and nothing else: one header line, one `run` line per run (what ran, where, at which commit, with
which command, on which machine; its calls and seconds; its own reported scores, to check the recomputation),
and one `pair` line per pair (id, unit, gold position, gold token span, the answer, each recovery's span, exact
match, char F1 and reason, and the copy-the-head control's answer and placements). Sentences are not copied:
the pair id (`<lang>-eacl-<index in corpus_<lang>.json>`) and `data_sha256` name them in the EACL release.

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
KINDS = ("align", "control")  # the renderer a file's header names (generated.py)


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


def _factors(rd) -> dict:
    """What a run is, as the factors a table compares: prompts, rounds, alignment, adapter, compute dtype."""
    run = rd.metrics["run"]
    al = run.get("alignment") or {}
    mode = "free"
    if al.get("constrained"):
        mode = "ranked" if al.get("select") == "rank" else "constrained"
    backend = (rd.config or {}).get("backend") or {}
    return {
        "prompts": run.get("prompts"),
        "rounds": (run.get("prompt_rounds") or {}).get("backward"),
        "alignment": mode,
        "finetune": run.get("finetune") or "none",
        "dtype": backend.get("dtype"),
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
        name = rd.path.name
        while name in seen:  # two folders of one name (two sweeps): keep both, apart
            name += "+"
        seen.add(name)
        m, prov = rd.metrics, rd.provenance or {}
        run, data = m["run"], m.get("data") or {}
        git = prov.get("git") or {}
        bw = m.get("backward") or {}
        out.append(
            {
                "type": "run",
                "run": name,
                "language": run["language"],
                "split": run.get("split") or data.get("split"),
                "model": run.get("model"),
                "factors": _factors(rd),
                "commit": git.get("commit") or run.get("git_commit"),
                "dirty": git.get("dirty"),
                "command": prov.get("command"),
                "overrides": rd.overrides,
                "time_utc": prov.get("time_utc"),
                "machine": machine or prov.get("platform"),
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
    """(header, run lines, pair lines) of an evidence file; a bad file is one error naming it."""
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
    pairs = [r for r in rows[1:] if r.get("type") == "pair"]
    return header, runs, pairs
