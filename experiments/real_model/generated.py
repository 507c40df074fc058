"""The generated blocks of docs/results.md: each table computed from its evidence file alone, deterministically.

A block sits between `<!-- generated: NAME -->` and `<!-- end generated: NAME -->` and is rebuilt from
`experiments/real_model/evidence/NAME.jsonl.gz` (records.py). The file's header names the renderer (`kind`):
- `control`: the copy-the-head control with no model, per language and slice (first 50 pairs, all pairs);
- `align`: align-eval runs, per language: scores per setting beside the control on the same pairs, then paired
  tests between runs that differ in one factor (free vs constrained, fp32 vs bf16, ...) and of each run against
  the control, on all pairs and on the shifted variants;
- `e2e`: eatlab runs, per language and setting (and pooled over the languages): entity F1 with its bootstrap
  interval over sentences (eatlab.eval.bootstrap.bootstrap_f1_ci), P, R, calls and seconds; then the paired
  bootstrap test over sentences (paired_bootstrap_test) between runs that differ in one factor, with how many
  sentences got the same predictions and the same final answers.

Statistics as eatlab-analyze computes them (docs/metrics.md, "Statistics"): exact match (a share of pairs) with
its Wilson interval (eatlab.eval.stats.proportion_ci); char F1 (a mean) with the percentile bootstrap over
(sentence, normalised gold) units (eatlab.eval.bootstrap.bootstrap_mean_ci, 1,000 resamples, seed 0); paired
exact match by the exact McNemar test with its agreeing interval (eatlab.eval.stats.paired_exact), Holm over the
table's p-values (eatlab.eval.stats.holm). Scores are fractions in the files, percentages here.
"""

from __future__ import annotations

import difflib
import re
from itertools import combinations
from pathlib import Path

import numpy as np
import records

from eatlab.errors import DataError
from eatlab.eval.bootstrap import bootstrap_f1_ci, bootstrap_mean_ci, paired_bootstrap_test
from eatlab.eval.entity import EntityCounts, prf
from eatlab.eval.stats import holm, n_boot_for_family, paired_exact, proportion_ci

REPO = Path(__file__).resolve().parents[2]
N_BOOT, SEED = 1000, 0
ALPHA = 0.05  # the family-wise level of every "finding" cell
FINDING = (
    f"finding: `A higher` or `B higher` where the Holm p is below {ALPHA} and the interval excludes 0 on that "
    "side, else `no` (not shown at this n)"
)
FIRST = (
    50  # align-eval's default align_eval.limit: the control is also shown on the first 50 pairs of a slice
)
RECOVERY = (
    "eatlab"  # the recovery the generated tables score (the reference release's is in the evidence too)
)
BASELINE = {"alignment": "free", "dtype": "float32", "finetune": "none", "method": "eat", "prompts": "eatlab",
            "rounds": 1}  # fmt: skip
# overrides the named factors (or the run's place) already say: not a `variant` (a key, or a prefix ending in .)
OWN_KEYS = ("language", "alignment", "backend.dtype", "backend.batch_invariant", "method", "prompts",
            "prompt_rounds", "finetune", "finetune.", "cache.", "hydra.", "paths.", "align_eval.split", "tracking",
            "tracking.", "model", "model.")  # fmt: skip
SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "qwen2.5-coder-0.5b-instruct-q4km": "0.5B",
         "qwen2.5-coder-1.5b-instruct-q4km": "1.5B"}  # fmt: skip
CONTROL = "copy-the-head control (no model)"
POOLED = "pooled"  # the lang cell of a row over every language's sentences
BLOCK = re.compile(r"(<!-- generated: (\S+) -->\n)(.*?)(<!-- end generated: \2 -->)", re.S)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _share(hits: list[bool]) -> str:
    """k/n in percent with its Wilson interval; '-' for no pairs."""
    if not hits:
        return "-"
    lo, hi = proportion_ci(sum(hits), len(hits))
    return f"{_pct(sum(hits) / len(hits))} [{_pct(lo)}, {_pct(hi)}]"


def _mean(values: list[float], units: list[str]) -> str:
    """A mean in percent with its bootstrap interval over units; '-' for no pairs."""
    if not values:
        return "-"
    lo, hi = bootstrap_mean_ci(values, n_boot=N_BOOT, seed=SEED, units=units)
    return f"{_pct(sum(values) / len(values))} [{_pct(lo)}, {_pct(hi)}]"


def _exact(pairs: list[dict], who: str | None = None) -> list[bool]:
    return [(p[who] if who else p)[RECOVERY]["exact"] for p in pairs]


def _by_run(runs: list[dict], pairs: list[dict]) -> dict[str, tuple[list[dict], list[dict]]]:
    """run name -> (its pairs, its shifted variants), each in file order."""
    out = {r["run"]: ([], []) for r in runs}
    for p in pairs:
        if p["run"] not in out:
            raise DataError(p["run"], "a pair line names a run with no run line")
        out[p["run"]][p["position"] == "shifted"].append(p)
    return out


def _slices(pairs: list[dict], shifted: list[dict]) -> dict[str, list[dict]]:
    """all, initial, later (gold position) and the shifted variants of exactly these pairs."""
    ids = {p["pair_id"] + "-shifted" for p in pairs}
    return {
        "all": pairs,
        "initial": [p for p in pairs if p["position"] == "initial"],
        "later": [p for p in pairs if p["position"] == "later"],
        "shifted": [p for p in shifted if p["pair_id"] in ids],
    }


def _npct(pairs: list[dict], who: str | None = None) -> str:
    return f"{len(pairs)}, {_share(_exact(pairs, who))}" if pairs else "0, -"


def _commits(runs: list[dict]) -> str:
    seen = {}
    for r in runs:
        c = (r.get("commit") or "unknown")[:7]
        seen[c] = seen.get(c, False) or bool(r.get("dirty"))
    return ", ".join(
        f"`{c}`" + (" (with uncommitted changes to eatlab/ or conf/)" if d else "") for c, d in seen.items()
    )


def _shown(path: Path) -> str:
    """A path as the page shows it: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _provenance(path: Path, runs: list[dict], noun: str = "runs") -> str:
    machines = list(dict.fromkeys(r.get("machine") or "not recorded" for r in runs))
    return (
        f"Evidence: `{_shown(path)}` ({len(runs)} {noun}; each one's command "
        f"line and data file hash are in it). Commit: {_commits(runs)}. Machine: {'; '.join(machines)}."
    )


def render_control(path: Path, header: dict, runs: list[dict], pairs: list[dict]) -> str:
    """The control's exact match (eatlab's recovery) per language and slice, with the gold-position split."""
    by = _by_run(runs, pairs)
    lines = [
        "| lang | slice | pairs (units) | exact, all | initial: pairs, exact | later: pairs, exact "
        "| shifted: pairs, exact | char F1, all |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        own, moved = by[r["run"]]
        for label, chosen in ((f"first {FIRST}", own[:FIRST]), ("all", own)):
            if label == "all" and len(own) <= FIRST:
                continue
            s = _slices(chosen, moved)
            units = [p["unit"] for p in chosen]
            f1 = [p["control"][RECOVERY]["char_f1"] for p in chosen]
            lines.append(
                f"| {r['language']} | {r['split']}, {label} | {len(chosen)} ({len(set(units))}) | "
                f"{_share(_exact(chosen, 'control'))} | {_npct(s['initial'], 'control')} | "
                f"{_npct(s['later'], 'control')} | {_npct(s['shifted'], 'control')} | {_mean(f1, units)} |"
            )
    lines += [
        "",
        "Exact match with eatlab's recovery, %, Wilson 95% interval; char F1 with the bootstrap over (sentence, "
        "normalised gold) units. " + _provenance(path, runs, "slices"),
    ]
    return "\n".join(lines)


def _label(factors: dict, varying: list[str]) -> str:
    """The varying factors' values: `r3` for three rounds each way (`f1b3`: one forward, three backward)."""
    return ", ".join(
        f"r{v}"
        if k == "rounds" and isinstance(v, int)
        else f"{k}={str(v).lower()}"
        if isinstance(v, bool)
        else SHORT.get(str(v), str(v))
        for k, v in ((k, factors.get(k)) for k in varying)
    )


def _check_reported(run: dict, own: list[dict]) -> None:
    """The evidence must give back what the run itself reported (exact and char F1 means, both recoveries)."""
    for rec, got in (run.get("reported") or {}).items():
        for k, want in got.items():
            if want is None or not own:
                continue
            mean = sum(float(p[rec][k]) for p in own) / len(own)
            if abs(mean - want) > 1e-6:
                raise DataError(
                    run["run"], f"{rec} {k}: the pairs give {mean:.6f}, the run reported {want:.6f}"
                )


def _variants(runs: list[dict]) -> dict[str, str]:
    """Per run, the overrides that set it apart beyond the named factors (say `model=...` or
    `generation=sampled`): those not shared by every run of the file, the named factors' own keys left out."""
    prefixes = tuple(k for k in OWN_KEYS if k.endswith("."))

    def named(o: str) -> bool:
        key = o.split("=", 1)[0].lstrip("+~")
        return key in OWN_KEYS or key.startswith(prefixes)

    own = {r["run"]: [o for o in r.get("overrides") or [] if not named(o)] for r in runs}
    shared = set.intersection(*(set(v) for v in own.values())) if own else set()
    return {k: " ".join(o for o in v if o not in shared) or "-" for k, v in own.items()}


def _settings(runs: list[dict]) -> tuple[list[dict], list[str], list[str], list[str], dict[str, str]]:
    """(runs with their `variant` factor, baseline values first; factor keys; those that vary across the runs;
    those that do not; run name -> setting label from the varying ones)."""
    variant = _variants(runs)
    runs = [{**r, "factors": {**r["factors"], "variant": variant[r["run"]]}} for r in runs]
    keys = sorted({k for r in runs for k in r["factors"]}, key=lambda k: (k != "method", k))  # method first
    varying = [k for k in keys if len({str(r["factors"].get(k)) for r in runs}) > 1] or keys[:1]
    fixed = [k for k in keys if k not in varying]

    def order(r: dict) -> tuple:  # the baseline value of each varying factor first, then by name
        return tuple(
            (str(r["factors"].get(k)) != str(BASELINE.get(k)), str(r["factors"].get(k))) for k in varying
        )

    runs = sorted(runs, key=order)
    return runs, keys, varying, fixed, {r["run"]: _label(r["factors"], varying) for r in runs}


def _one_apart(x: dict, y: dict, keys: list[str]) -> tuple[dict, dict] | None:
    """(A, B) when the runs differ in exactly one factor, B holding its baseline value; else None. A factor
    that does not apply to a run (records.NA: the alignment of a method without a backward LLM) is no
    difference."""
    values = [(str(x["factors"].get(k)), str(y["factors"].get(k))) for k in keys]
    diff = [k for k, (vx, vy) in zip(keys, values) if vx != vy and records.NA not in (vx, vy)]
    if len(diff) != 1:
        return None
    k = diff[0]
    return (x, y) if str(y["factors"].get(k)) == str(BASELINE.get(k)) else (y, x)


def _fixed_text(runs: list[dict], fixed: list[str]) -> str:
    return "; ".join(
        f"{k} {runs[0]['factors'][k]}"
        for k in fixed
        if k != "variant" and runs[0]["factors"].get(k) is not None
    )


def render_align(path: Path, header: dict, runs: list[dict], pairs: list[dict]) -> str:
    """Scores per language and setting beside the control, then the paired exact tests (one Holm family)."""
    by = _by_run(runs, pairs)
    runs, keys, varying, fixed, label = _settings(runs)
    languages = list(dict.fromkeys(r["language"] for r in runs))
    for r in runs:
        _check_reported(r, by[r["run"]][0])
    lines = [
        "| lang | setting | pairs (units) | exact, all | initial: pairs, exact | later: pairs, exact "
        "| shifted: pairs, exact | char F1, all | char F1, shifted | placed | verbatim | LLM calls / s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    controls: dict[str, tuple[list[dict], list[dict]]] = {}
    for lang in languages:
        mine = [r for r in runs if r["language"] == lang]
        own_all = {p["pair_id"]: p for r in mine for p in by[r["run"]][0]}
        moved_all = {p["pair_id"]: p for r in mine for p in by[r["run"]][1]}
        controls[lang] = (list(own_all.values()), list(moved_all.values()))
        for who, r in [(None, x) for x in mine] + [("control", None)]:
            own, moved = controls[lang] if r is None else by[r["run"]]
            s = _slices(own, moved)
            units = [p["unit"] for p in own]
            pick = (lambda p: p["control"]) if r is None else (lambda p: p)  # noqa: E731
            f1 = [pick(p)[RECOVERY]["char_f1"] for p in own]
            f1s = [pick(p)[RECOVERY]["char_f1"] for p in s["shifted"]]
            placed = sum(pick(p)[RECOVERY]["span"] is not None for p in own) / len(own) if own else 0.0
            cells = [
                lang, CONTROL if r is None else label[r["run"]], f"{len(own)} ({len(set(units))})",
                _share(_exact(own, who)), _npct(s["initial"], who), _npct(s["later"], who),
                _npct(s["shifted"], who), _mean(f1, units), _mean(f1s, [p["unit"] for p in s["shifted"]]),
                _pct(placed),
                "-" if r is None else _pct(sum(bool(p.get("verbatim")) for p in own) / max(len(own), 1)),
                "-" if r is None else f"{r.get('llm_calls')} / {r.get('seconds') or 0:.0f}",
            ]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    tests = []
    for lang in languages:
        mine = [r for r in runs if r["language"] == lang]
        for x, y in combinations(mine, 2):
            if (ab := _one_apart(x, y, keys)) is None:
                continue
            a, b = ab
            for sl in ("all", "shifted"):
                tests.append(
                    (lang, sl, label[a["run"]], label[b["run"]], by[a["run"]], by[b["run"]], None, None)
                )
        for r in mine:
            tests.append(
                (lang, "all", label[r["run"]], CONTROL, by[r["run"]], controls[lang], None, "control")
            )
    rows = []
    for lang, sl, la, lb, (a_own, a_moved), (b_own, b_moved), wa, wb in tests:
        a_s, b_s = _slices(a_own, a_moved)[sl], _slices(b_own, b_moved)[sl]
        b_by = {p["pair_id"]: p for p in b_s}
        shared = [p for p in a_s if p["pair_id"] in b_by]
        ea = _exact(shared, wa)
        eb = _exact([b_by[p["pair_id"]] for p in shared], wb)
        rows.append((lang, sl, la, lb, len(shared), ea, eb, paired_exact(ea, eb)))
    adjusted = holm([t[-1]["p_value"] for t in rows])
    lines += [
        "",
        "| lang | slice | setting A | vs B | pairs | A exact | B exact | delta [95%] | A only / B only | p | p Holm "
        "| finding |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (lang, sl, la, lb, n, ea, eb, t), ph in zip(rows, adjusted):
        lo, hi = t["delta_ci95"]
        lines.append(
            f"| {lang} | {sl} | {la} | {lb} | {n} | {_pct(sum(ea) / max(n, 1))} | {_pct(sum(eb) / max(n, 1))} | "
            f"{100 * t['delta']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | {t['a_only']} / {t['b_only']} | "
            f"{_p(t['p_value'])} | {_p(ph)} | {_finding(lo, hi, ph)} |"
        )
    models = ", ".join(dict.fromkeys(str(r.get("model")) for r in runs))
    splits = ", ".join(dict.fromkeys(str(r.get("split")) for r in runs))
    same = _fixed_text(runs, fixed)
    lines += [
        "",
        f"Model {models}; {splits} slice; eatlab's recovery; every run: {same or 'see the settings'}. Scores in "
        "%: exact match with its Wilson 95% interval, char F1 with the bootstrap over (sentence, normalised gold) "
        "units; `shifted`: each pair behind another sentence of the slice (the control scores 0 there by "
        "construction). Paired rows: the runs that differ in one factor, and each run against the control, on "
        "the pairs both scored; exact McNemar test on the discordant pairs (A only right / B only right, pairs "
        f"as items) with its agreeing interval; Holm over the {len(rows)} p-values of this table; {FINDING}. "
        + _provenance(path, runs),
    ]
    return "\n".join(lines)


def _counts(sentences: list[dict]) -> EntityCounts:
    """Per-sentence entity counts (the types summed into one column), as the bootstrap resamples them."""
    tp, fp, fn = (
        np.array([[s[k]] for s in sentences], dtype=np.int64).reshape(-1, 1) for k in ("tp", "fp", "fn")
    )
    return EntityCounts(("all",), tp, tp + fp, tp + fn)


def _prf(sentences: list[dict]) -> tuple[float, float, float]:
    """Micro entity precision, recall and F1 of the sentences (seqeval's, eatlab.eval.entity.prf)."""
    tp, pred, gold = (int(x) for x in _counts(sentences).totals().sum(axis=0))
    return prf(tp, pred, gold)


def _check_e2e(run: dict, own: list[dict]) -> None:
    """The sentences must give back what the run itself reported (sentences, entities, entity F1)."""
    rep = run.get("reported") or {}
    counts = _counts(own).totals().sum(axis=0)
    got = {"n_sentences": len(own), "n_pred_entities": int(counts[1]), "n_gold_entities": int(counts[2])}
    for k, n in got.items():
        want = run.get(k) if k == "n_sentences" else rep.get(k)
        if want is not None and want != n:
            raise DataError(run["run"], f"{k}: the sentences give {n}, the run reported {want}")
    f1 = _prf(own)[2]
    if rep.get("entity_f1") is not None and abs(f1 - rep["entity_f1"]) > 1e-9:
        raise DataError(
            run["run"], f"entity F1: the sentences give {f1:.6f}, the run reported {rep['entity_f1']:.6f}"
        )


def _shared(a: list[dict], b: list[dict]) -> tuple[list[dict], list[dict]]:
    """The sentences both runs scored, in A's order, as (A's lines, B's lines); their gold must agree."""
    b_by = {s["sentence_id"]: s for s in b}
    sa = [s for s in a if s["sentence_id"] in b_by]
    sb = [b_by[s["sentence_id"]] for s in sa]
    for x, y in zip(sa, sb):
        if x["gold"] != y["gold"]:
            raise DataError(x["sentence_id"], "the two runs' gold entities differ (not the same data)")
    return sa, sb


def _selection(run: dict) -> str:
    """`dev split, a sample of 50`: which sentences an eatlab run read."""
    if run.get("sample"):
        return f"{run.get('split')} split, a sample of {run['sample']}"
    return f"{run.get('split')} split" + (f", first {run['limit']}" if run.get("limit") else "")


def _answers(s: dict) -> tuple:
    return s.get("english"), s.get("answers")


def render_e2e(path: Path, header: dict, runs: list[dict], sentences: list[dict]) -> str:
    """Entity F1 per language and setting (and pooled over the languages), then paired bootstrap tests between
    runs that differ in one factor (one Holm family), with how many sentences got the same predictions and the
    same final answers."""
    by: dict[str, list[dict]] = {r["run"]: [] for r in runs}
    for s in sentences:
        if s["run"] not in by:
            raise DataError(s["run"], "a sentence line names a run with no run line")
        by[s["run"]].append(s)
    runs, keys, _, fixed, label = _settings(runs)
    languages = list(dict.fromkeys(r["language"] for r in runs))
    for r in runs:
        _check_e2e(r, by[r["run"]])
    lines = [
        "| lang | setting | sentences (gold entities) | entity F1 [95%] | P | R | ref-token F1 | LLM calls / s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]

    def row(lang: str, setting: str, own: list[dict], calls, seconds, token_f1=None) -> None:
        p, r, f1 = _prf(own)
        lo, hi = bootstrap_f1_ci(_counts(own), n_boot=N_BOOT, seed=SEED)
        gold = sum(s["tp"] + s["fn"] for s in own)
        cost = "-" if calls is None else f"{calls} / {seconds:.0f}"
        lines.append(
            f"| {lang} | {setting} | {len(own)} ({gold}) | {_pct(f1)} [{_pct(lo)}, {_pct(hi)}] | {_pct(p)} | "
            f"{_pct(r)} | {'-' if token_f1 is None else _pct(token_f1)} | {cost} |"
        )

    for lang in languages:
        for r in (r for r in runs if r["language"] == lang):
            token_f1 = (r.get("reported") or {}).get("reference_token_micro_f1")
            row(lang, label[r["run"]], by[r["run"]], r.get("llm_calls") or 0, r.get("seconds") or 0, token_f1)
    for setting in dict.fromkeys(label.values()):
        mine = [r for r in runs if label[r["run"]] == setting]
        if len({r["language"] for r in mine}) > 1:
            calls, seconds = (sum(r.get(k) or 0 for r in mine) for k in ("llm_calls", "seconds"))
            row(POOLED, setting, [s for r in mine for s in by[r["run"]]], calls, seconds)
    redirects = {lang for r in runs for s in by[r["run"]] if s.get("redirect") for lang in [r["language"]]}
    for lang in [*[x for x in languages if x in redirects], *([POOLED] if redirects else [])]:
        for setting in dict.fromkeys(label.values()):
            mine = [r for r in runs if label[r["run"]] == setting and lang in (POOLED, r["language"])]
            if mine and (lang != POOLED or len({r["language"] for r in mine}) > 1):
                kept = [s for r in mine for s in by[r["run"]] if not s.get("redirect")]
                row(f"{lang} w/o redirects", setting, kept, None, None)
    attribution = _attribution(runs, label)
    tests = []  # (lang, setting A, setting B, A's sentences, B's sentences): the sentences both scored
    for lang in languages:
        mine = [r for r in runs if r["language"] == lang]
        for x, y in combinations(mine, 2):
            if (ab := _one_apart(x, y, keys)) is not None:
                a, b = ab
                tests.append((lang, label[a["run"]], label[b["run"]], *_shared(by[a["run"]], by[b["run"]])))
    across: dict[tuple[str, str], list[tuple]] = {}
    for t in tests:
        across.setdefault((t[1], t[2]), []).append(t)
    for (la, lb), ts in across.items():
        if len({t[0] for t in ts}) > 1:
            tests.append((POOLED, la, lb, [s for t in ts for s in t[3]], [s for t in ts for s in t[4]]))
    n_paired = n_boot_for_family(len(tests))  # enough that the smallest p can pass Holm over the family
    results = [
        paired_bootstrap_test(_counts(sa), _counts(sb), n_boot=n_paired, seed=SEED) for *_, sa, sb in tests
    ]
    adjusted = holm([t.p_value for t in results])
    if tests:
        lines += [
            "",
            "| lang | setting A | vs B | sentences | A F1 | B F1 | delta [95%] | same predictions "
            "| same answers | p | p Holm | finding |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
    for (lang, la, lb, sa, sb), t, ph in zip(tests, results, adjusted):
        lo, hi = t.delta_ci95
        n = len(sa)
        same = sum(x["pred"] == y["pred"] for x, y in zip(sa, sb))
        recorded = any(_answers(x) != (None, []) for x in sa + sb)
        answers = f"{sum(_answers(x) == _answers(y) for x, y in zip(sa, sb))}/{n}" if recorded else "-"
        lines.append(
            f"| {lang} | {la} | {lb} | {n} | {_pct(t.f1_a)} | {_pct(t.f1_b)} | "
            f"{100 * t.delta:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | {same}/{n} | {answers} | "
            f"{_p(t.p_value)} | {_p(ph)} | {_finding(lo, hi, ph)} |"
        )
    lines += attribution
    adapters = _adapters(runs)
    models = ", ".join(dict.fromkeys(str(r.get("model")) for r in runs))
    data = ", ".join(dict.fromkeys(_selection(r) for r in runs))
    same = _fixed_text(runs, fixed)
    lines += [
        "",
        f"Model {models}; {data}; every run: {same or 'see the settings'}. Entity F1 (exact span and type, "
        f"micro, seqeval's default chunking) in % with the percentile bootstrap 95% interval over sentences "
        f"({N_BOOT:,} resamples, seed {SEED}); `{POOLED}`: the sentences of every language that ran the "
        "setting, resampled as one set (calls and seconds summed); ref-token F1: the reference release's "
        "token-level micro F1 as the run reported it."
        + (
            " `w/o redirects`: the same runs without the sentences that are Wikipedia redirect artefacts (text "
            "opening with the language's redirect word)."
            if redirects
            else ""
        )
        + (
            " Attribution: what became of each gold entity (eatlab.eat.attribution), as the run reported it."
            if attribution
            else ""
        )
        + (
            " Paired rows: the runs of one language that differ in one factor (a factor that does not apply to "
            f"a run, `{records.NA}`, is no difference), on the sentences both scored, and the same pair pooled "
            "over the languages; delta A - B in points with the paired bootstrap interval and two-sided p over "
            f"sentences ({n_paired:,} resamples, so the smallest p, 1/{n_paired + 1:,}, is 10x below Holm's "
            "first threshold); same predictions: sentences where A and B predicted the same entities; same answers: "
            "sentences with the same final translation and the same backward answer for each English entity; "
            f"Holm over the {len(tests)} p-values of this table; {FINDING}."
            if tests
            else ""
        )
        + (f" Adapters (finetune eacl_qlora): {adapters}." if adapters else "")
        + _extractors(runs)
        + " "
        + _provenance(path, runs),
    ]
    return "\n".join(lines)


def _finding(lo: float, hi: float, p_holm: float) -> str:
    """The row's reading, by one rule for every row: a difference is a finding only where the family-wise test
    and the interval agree (Holm p below ALPHA, the interval on one side of 0)."""
    if p_holm < ALPHA and lo > 0:
        return "A higher"
    if p_holm < ALPHA and hi < 0:
        return "B higher"
    return "no"


def _adapters(runs: list[dict]) -> str:
    """`zh 1.5B: 5a1c... (EACL zh, backward+forward, data 3f2e...)`: which adapter each tuned run loaded."""
    seen = {}
    for r in runs:
        a = r.get("adapter") or {}
        if a.get("hash"):
            who = " ".join(
                str(x) for x in (r["language"], SHORT.get(str(r.get("model")), r.get("model"))) if x
            )
            langs, dirs = "+".join(a.get("languages") or []), "+".join(a.get("directions") or [])
            seen[who] = (
                f"{who}: `{a['hash']}` (EACL {langs}, {dirs}, data `{str(a.get('data_sha256'))[:12]}`)"
            )
    return "; ".join(seen.values())


def _runs(n: int) -> str:
    return f"{n} run" + ("" if n == 1 else "s")


def _extractors(runs: list[dict]) -> str:
    """` English NER: spacy_wikiann `3f2e...` (ar, ja; 6 runs).`: which NER model each run used, by its model
    folder's fingerprint (a run with no NER has None; evidence kept before the field existed has no key)."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        e = r.get("extractor")
        if e:
            key = e["name"] + (f" `{e['fingerprint']}`" if e.get("fingerprint") else "")
            groups.setdefault(key, []).append(r)
    if not groups:
        return ""
    parts = [
        f"{k} ({', '.join(sorted({r['language'] for r in rs}))}; {_runs(len(rs))})"
        for k, rs in groups.items()
    ]
    missing = sum("extractor" not in r for r in runs)  # None: a run with no NER (direct_llm)
    tail = f"; not recorded for the {_runs(missing)} kept before this field." if missing else "."
    return f" English NER: {'; '.join(parts)}{tail}"


def _attribution(runs: list[dict], label: dict[str, str]) -> list[str]:
    """A table of each run's reported gold-entity attribution (found, lost in translation, missed by NER, ...),
    in the pipeline's order (eatlab.eat.attribution), any other class after."""
    order = ("found", "lost_in_translation", "missed_by_ner", "ner_wrong_type", "misaligned_backward")
    seen = {k for r in runs for k in (((r.get("reported") or {}).get("failures") or {}).get("gold") or {})}
    kinds = [k for k in order if k in seen] + sorted(seen - set(order))
    if not kinds:
        return []
    out = ["", "| lang | setting | " + " | ".join(k.replace("_", " ") for k in kinds) + " |",
           "|---|---|" + "---:|" * len(kinds)]  # fmt: skip
    for r in runs:
        gold = ((r.get("reported") or {}).get("failures") or {}).get("gold") or {}
        out.append(
            f"| {r['language']} | {label[r['run']]} | "
            + " | ".join(str(gold.get(k, 0)) for k in kinds)
            + " |"
        )
    return out


RENDER = {"align": render_align, "control": render_control, "e2e": render_e2e}


def render(path: Path) -> str:
    """The block of one evidence file, from its records alone."""
    header, runs, pairs = records.read(path)
    if not runs:
        raise DataError(path, "no run lines")
    name = path.name.removesuffix(".jsonl.gz")
    body = RENDER[header["kind"]](path, header, runs, pairs)
    intro = (
        f"*Generated from the evidence by `python experiments/real_model/tables.py regen` (`{name}`); "
        "do not edit by hand.*"
    )
    return f"{intro}\n\n{body}"


def regenerate(page_text: str, evidence_dir: Path, page: str = "page") -> tuple[str, list[str]]:
    """The page with every generated block rebuilt from `evidence_dir/<NAME>.jsonl.gz`, and the blocks changed.
    A block with no evidence file, or an evidence file with no block, is an error (nothing is dropped silently)."""
    files = {p.name.removesuffix(".jsonl.gz"): p for p in sorted(evidence_dir.glob("*.jsonl.gz"))}
    names = [m.group(2) for m in BLOCK.finditer(page_text)]
    if missing := [n for n in names if n not in files]:
        raise DataError(evidence_dir, f"no evidence file for the block(s) {', '.join(missing)} of {page}")
    if unused := [n for n in files if n not in names]:
        raise DataError(
            page, f"no block for the evidence {', '.join(unused)}: add `<!-- generated: NAME -->` and "
            "`<!-- end generated: NAME -->` lines where the table goes"
        )  # fmt: skip
    changed = []

    def swap(m: re.Match) -> str:
        new = "\n" + render(files[m.group(2)]) + "\n\n"
        if new != m.group(3):
            changed.append(m.group(2))
        return m.group(1) + new + m.group(4)

    return BLOCK.sub(swap, page_text), changed


def diff(old: str, new: str, page: str) -> str:
    return "".join(
        difflib.unified_diff(old.splitlines(True), new.splitlines(True), page, f"{page} (regenerated)")
    )
