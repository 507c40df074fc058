"""Markdown tables of the real-model runs for docs/results.md, read from their run dirs.

    python experiments/real_model/tables.py align outputs/real/align-r1 [more sweep dirs...]
    python experiments/real_model/tables.py cost outputs/real/align-r1 [...]   # calls and seconds of the runs
    python experiments/real_model/tables.py e2e outputs/real/e2e

Evidence kept, and the generated blocks of docs/results.md rebuilt from it alone (records.py, generated.py):

    python experiments/real_model/tables.py evidence RUN_DIR... --out experiments/real_model/evidence/NAME.jsonl.gz
    python experiments/real_model/tables.py e2e-evidence RUN_DIR... --out ...   # eatlab runs, per sentence
    python experiments/real_model/tables.py control-evidence --eacl-root ../shared/data/eacl --out ...
    python experiments/real_model/tables.py regen [--check]

Scores come from metrics.json through eatlab's own readers (eatlab.rundir, eatlab.analysis.alignment); the
paired tests are eatlab-analyze's (docs/metrics.md, "Statistics"): exact match with its Wilson interval, exact
deltas by the exact McNemar test with the discordant pairs shown, char F1 deltas by the paired bootstrap over
(sentence, gold) units, and Holm-adjusted p over each printed paired table. Percentages, as in every
human-readable table of the project.
"""

from __future__ import annotations

import sys
from pathlib import Path

from eatlab.analysis.alignment import load_alignment, paired_tests
from eatlab.errors import DataError
from eatlab.eval.stats import holm
from eatlab.rundir import DONE, iter_run_dirs


def _dirs(dirs: list[str]):
    """The run dirs under each folder that exists (a phase not run yet is skipped, with a note)."""
    for d in dirs:
        if not Path(d).is_dir():
            print(f"skipped: {d} (not a folder)", file=sys.stderr)
            continue
        yield from iter_run_dirs(d)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _ci(mean, lo, hi) -> str:
    return f"{100 * mean:.1f} [{100 * lo:.0f}, {100 * hi:.0f}]"


def _p(p: float) -> str:
    """A p-value to three decimals; below 0.001 as "<0.001" (never a bare 0.000)."""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def align(dirs: list[str], vs: str | None = None) -> None:
    """Scores, then paired tests against eatlab r1 free (and, with `vs`, against that setting in the languages
    that have it, e.g. `--vs "eatlab r1 free +eacl_qlora"`)."""
    rds = list(_dirs(dirs))
    runs, pairs = load_alignment(rds)
    # cost columns only when every run computed its answers (re-scored runs have 0 calls; see `cost`)
    cost = bool((runs["llm_calls"] > 0).all())
    print("| lang | setting | recovery | exact | char F1 | placed | verbatim | naming exact / chrF |"
          + (" LLM calls | s |" if cost else ""))  # fmt: skip
    print("|---|---|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if cost else ""))
    for _, r in runs.sort_values(["language", "setting", "recovery"], kind="stable").iterrows():
        print(
            f"| {r.language} | {r.setting} | {r.recovery} | {_ci(r.exact, r.exact_lo, r.exact_hi)} | "
            f"{_ci(r.char_f1, r.char_f1_lo, r.char_f1_hi)} | {_pct(r.placed)} | {_pct(r.verbatim_share)} | "
            f"{_pct(r.naming_exact)} / {_pct(r.naming_chrf)} |"
            + (f" {r.llm_calls} | {r.seconds:.0f} |" if cost else "")
        )
    print()
    ours = pairs[pairs["recovery"] == "eatlab"] if not pairs.empty else pairs
    _paired(paired_tests(ours) if not ours.empty else None)
    if vs is not None and not ours.empty:
        print()
        tests = paired_tests(ours, baseline=(vs, "eatlab"))
        tests = tests[tests["baseline"] == f"{vs} / eatlab"]
        if "+" in vs:  # an adapter's setting: against its own variants only
            tests = tests[tests["setting"].str.contains("+", regex=False)]
        _paired(tests)


def _paired(tests) -> None:
    """The paired tests as printed: one family, Holm-adjusted over the rows shown (both metrics)."""
    if tests is None or tests.empty:
        return
    adjusted = holm(list(tests["exact_p"]) + list(tests["char_f1_p"]))
    n = len(tests)
    print(
        "| lang | setting (eatlab recovery) | vs | pairs | exact delta [95%] | this/base only | p | p Holm "
        "| char F1 delta [95%] | units | p | p Holm |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k, (_, t) in enumerate(tests.iterrows()):
        print(
            f"| {t.language} | {t.setting} | {t.baseline.split(' / ')[0]} | {t.pairs} | "
            f"{100 * t.exact_delta:+.1f} [{100 * t.exact_delta_lo:+.0f}, {100 * t.exact_delta_hi:+.0f}] | "
            f"{t.exact_a_only}/{t.exact_b_only} | {_p(t.exact_p)} | {_p(adjusted[k])} | "
            f"{100 * t.char_f1_delta:+.1f} [{100 * t.char_f1_delta_lo:+.0f}, {100 * t.char_f1_delta_hi:+.0f}] | "
            f"{t.char_f1_units} | {_p(t.char_f1_p)} | {_p(adjusted[n + k])} |"
        )
    print()
    print(
        f"Exact: exact McNemar test, the discordant pairs (this setting only right / baseline only right) and its "
        f"Clopper-Pearson interval; char F1: paired bootstrap over (sentence, gold) units, "
        f"{int(tests['n_boot'].max())} resamples; Holm over the {2 * n} p-values of this table."
    )


def cost(dirs: list[str]) -> None:
    """LLM calls and wall seconds of the runs that computed the answers, one row per language and setting."""
    rds = list(_dirs(dirs))
    runs, _ = load_alignment(rds)
    runs = runs[runs["recovery"] == "eatlab"].sort_values(["setting", "language"], kind="stable")
    print("| setting | " + " | ".join(sorted(set(runs["language"]))) + " |")
    print("|---|" + "---:|" * len(set(runs["language"])))
    for setting, g in runs.groupby("setting", sort=False):
        by = {r.language: f"{r.llm_calls} / {r.seconds:.0f} s" for _, r in g.iterrows()}
        print(
            f"| {setting} | " + " | ".join(by.get(lang, "") for lang in sorted(set(runs["language"]))) + " |"
        )


def e2e(dirs: list[str], cost_dirs: list[str] | None = None) -> None:
    """Scores of `dirs`; LLM calls and seconds from `cost_dirs` (the runs that computed the answers, when `dirs`
    re-scored them from the cache), matched by language, method, alignment."""
    spent = {key: line for key, line in _e2e_rows(cost_dirs)} if cost_dirs else {}
    print(
        "| lang | method | alignment | entity F1 [95%] | P / R | ref. token micro F1 | gold found / lost in "
        "translation / missed by NER / misaligned backward | dropped in recovery | LLM calls | s |"
    )
    print("|---|---|---|---:|---:|---:|---|---|---:|---:|")
    order = {"free": 0, "constrained": 1, "ranked": 2, "-": 3}
    rows = sorted(_e2e_rows(dirs), key=lambda r: (r[0][0], r[0][1] != "eat", r[0][1], order[r[0][2]]))
    for key, (line, calls, secs) in rows:
        if key in spent:
            calls, secs = spent[key][1], spent[key][2]
        print(line + f" {calls} | {secs:.0f} |")


def _e2e_rows(dirs: list[str]):
    """((language, method, alignment), (row without its cost cells, LLM calls, seconds)) per finished run."""
    for rd in _dirs(dirs):
        if rd.status != DONE:
            continue
        m, cfg = rd.metrics, rd.config or {}
        run = m.get("run") or {}
        al = cfg.get("alignment") or {}
        mode = "-" if run.get("method") != "eat" else (
            "free" if not al.get("constrained") else ("ranked" if al.get("select") == "rank" else "constrained")
        )  # fmt: skip
        g = (m.get("failures") or {}).get("gold") or {}
        drops = (m.get("failures") or {}).get("dropped_entities") or {}
        lo, hi = m["entity_f1_ci95"]
        line = (
            f"| {run.get('language')} | {run.get('method')} | {mode} | {_ci(m['entity_f1'], lo, hi)} | "
            f"{_pct(m['entity_precision'])} / {_pct(m['entity_recall'])} | {_pct(m['reference_token_micro_f1'])} | "
            f"{g.get('found', 0)} / {g.get('lost_in_translation', 0)} / {g.get('missed_by_ner', 0)} / "
            f"{g.get('misaligned_backward', 0)} of {m['n_gold_entities']} | "
            + (", ".join(f"{k} {v}" for k, v in sorted(drops.items()) if v) or "-")
            + " |"
        )
        yield (
            (run.get("language"), run.get("method"), mode),
            (line, m["llm_calls"], (m.get("seconds") or {}).get("total", 0)),
        )


REPO = Path(__file__).resolve().parents[2]
EVIDENCE = Path(__file__).resolve().parent / "evidence"
PAGE = REPO / "docs" / "results.md"


def _built_by() -> str:
    return "python " + " ".join(sys.argv)


def evidence(dirs: list[str], out: str, machine: str | None, kind: str = "align", add: bool = False) -> None:
    """The per-sample records of the finished runs under `dirs` as one evidence file: align-eval runs' pairs
    (`align`), or eatlab runs' sentences (`e2e`). With `add`, the runs already in `out` are kept and these join
    them (a table grows by languages whose older run dirs are gone); a run name already there is refused."""
    import records

    build, what, noun = {
        "align": (records.run_records, "align-eval", "pairs"),
        "e2e": (records.e2e_records, "eatlab", "sentences"),
    }[kind]
    recs = build(list(_dirs(dirs)), machine)
    runs = [r for r in recs if r["type"] == "run"]
    if not runs:
        raise DataError(" ".join(dirs), f"no finished {what} run here")
    built_by = _built_by()
    if add and Path(out).is_file():
        header, old_runs, old_samples = records.read(Path(out))
        if header["kind"] != kind:
            raise DataError(out, f"holds {header['kind']} evidence, not {kind}")
        clash = sorted({r["run"] for r in old_runs} & {r["run"] for r in runs})
        if clash:
            raise DataError(out, f"already holds the runs {', '.join(clash)}; rebuild it without --add")
        recs, built_by = [*old_runs, *old_samples, *recs], f"{header['built_by']} ; then {built_by}"
        runs = old_runs + runs
    size = records.write(Path(out), Path(out).name.removesuffix(".jsonl.gz"), kind, recs, built_by)
    print(f"{out}: {len(runs)} runs, {len(recs) - len(runs)} {noun}, {size:,} bytes")


def control_evidence(eacl_root: str, languages: list[str], splits: list[str], out: str, overrides: list[str]):
    """The copy-the-head control on whole slices, no model: one evidence file."""
    import records

    recs = records.control_records(eacl_root, languages, splits, overrides)
    size = records.write(Path(out), Path(out).name.removesuffix(".jsonl.gz"), "control", recs, _built_by())
    print(f"{out}: {sum(r['type'] == 'run' for r in recs)} slices, {size:,} bytes")


def regen(page: Path, evidence_dir: Path, check: bool) -> int:
    """Rebuild the generated blocks of `page` from `evidence_dir`; with `check`, only say whether it would change
    (exit 1 with the diff)."""
    import generated

    old = page.read_text(encoding="utf-8")
    new, changed = generated.regenerate(old, evidence_dir, str(page))
    if check:
        if new != old:
            print(generated.diff(old, new, str(page)))
            print(
                f"{page}: out of date ({', '.join(changed)}); run `python experiments/real_model/tables.py regen`"
            )
            return 1
        print(f"{page}: every generated block matches its evidence")
        return 0
    if new != old:
        page.write_text(new, encoding="utf-8")
    print(f"{page}: " + (f"rewrote {', '.join(changed)}" if changed else "unchanged"))
    return 0


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="table", required=True)
    p = sub.add_parser("align", help="benchmark scores and paired tests")
    p.add_argument("dirs", nargs="+")
    p.add_argument("--vs", help="a second baseline setting, e.g. 'eatlab r1 free +eacl_qlora'")
    sub.add_parser("cost", help="LLM calls and seconds of the benchmark runs").add_argument("dirs", nargs="+")
    p = sub.add_parser("e2e", help="end-to-end scores")
    p.add_argument("dirs", nargs="+")
    p.add_argument("--cost-from", nargs="+", default=None, help="the runs that computed the answers")
    for name, what in (
        ("evidence", "per-pair records of align-eval"),
        ("e2e-evidence", "per-sentence records of eatlab"),
    ):
        p = sub.add_parser(name, help=f"keep the {what} runs (gzip JSONL)")
        p.add_argument(
            "dirs", nargs="+", help="run dirs, or folders of run dirs (unfinished runs are skipped)"
        )
        p.add_argument("--out", required=True, help="experiments/real_model/evidence/NAME.jsonl.gz")
        p.add_argument(
            "--machine", help="what ran it, e.g. '2 CPU cores, shared by 3 jobs' (default: the platform)"
        )
        p.add_argument(
            "--add", action="store_true", help="keep the runs already in --out and add these to them"
        )
    p = sub.add_parser("control-evidence", help="the copy-the-head control on whole EACL slices, no model")
    p.add_argument("--eacl-root", required=True, help="a folder of corpus_<lang>.json")
    p.add_argument("--languages", nargs="+", default=["zh", "ja", "ko", "ar", "ru"])
    p.add_argument("--splits", nargs="+", default=["dev", "test"], choices=["dev", "test"])
    p.add_argument("--out", required=True)
    p.add_argument("overrides", nargs="*", help="eatlab-align-eval overrides of the slice, e.g. seed=1")
    p = sub.add_parser("regen", help="rebuild the generated blocks of docs/results.md from the evidence")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 with a diff if out of date")
    p.add_argument("--page", type=Path, default=PAGE)
    p.add_argument("--evidence", type=Path, default=EVIDENCE, help="the folder of NAME.jsonl.gz files")
    args = parser.parse_args(argv)
    from eatlab.errors import EatlabError

    try:
        _run(args)
    except EatlabError as e:  # a user error: one line, exit 2 (as every eatlab command)
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None


def _run(args) -> None:
    if args.table in ("evidence", "e2e-evidence"):
        kind = "e2e" if args.table == "e2e-evidence" else "align"
        evidence(args.dirs, args.out, args.machine, kind, args.add)
    elif args.table == "control-evidence":
        control_evidence(args.eacl_root, args.languages, args.splits, args.out, args.overrides)
    elif args.table == "regen":
        raise SystemExit(regen(args.page, args.evidence, args.check))
    elif args.table == "align":
        align(args.dirs, args.vs)
    elif args.table == "cost":
        cost(args.dirs)
    else:
        e2e(args.dirs, args.cost_from)


if __name__ == "__main__":
    main()
