"""End-to-end evidence (kind `e2e`): finished eatlab run dirs kept per sentence, and the generated block of
docs/results.md computed from that evidence alone (experiments/real_model: records, generated, tables)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from eatlab.cli.run import run_eat
from eatlab.data.bio import tags_to_spans
from eatlab.errors import DataError
from eatlab.eval.bootstrap import bootstrap_f1_ci, paired_bootstrap_test
from eatlab.eval.entity import entity_counts, entity_scores
from eatlab.eval.stats import holm
from eatlab.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
REAL_MODEL = ROOT / "experiments" / "real_model"
PLUGINS = Path(__file__).parent / "plugins"
SEARCH = f"hydra.searchpath=[file://{PLUGINS / 'conf'}]"
sys.path.insert(0, str(REAL_MODEL))

import generated  # noqa: E402  (experiments/real_model/generated.py)
import records  # noqa: E402

# the tiny model on 8 zh sentences, free vs constrained alignment (one factor apart)
TINY = [SEARCH, "model=tiny", "language=zh", "data.limit=8", "prompt_rounds=r1", "extractor=capitalised"]
# no model: the echo backend "translates" a sentence into itself, so copying each capitalised word finds names
ECHO = [SEARCH, "backend=echo", "extractor=capitalised", "prompt_rounds=r1", "data.limit=6", "alignment=free"]


def _tables(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REAL_MODEL / "tables.py"), *cmd],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def run_dirs(compose, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))
    tiny, echo = tmp_path / "tiny", tmp_path / "echo"
    for name, extra in (("zh-free", ["alignment=free"]), ("zh-constrained", ["alignment=constrained"])):
        run_eat(compose([*TINY, *extra], run_dir=tiny / name), tiny / name)
    for lang in ("fr", "es"):
        for name, extra in ((f"{lang}-eat", []), (f"{lang}-copy", ["method=exact_copy"])):
            run_eat(compose([*ECHO, f"language={lang}", *extra], run_dir=echo / name), echo / name)
    (tiny / "unfinished" / ".hydra").mkdir(parents=True)  # a sweep's job that has not finished
    (tiny / "unfinished" / ".hydra" / "overrides.yaml").write_text("- language=zh\n")
    return tiny, echo


def _tags(run: Path, ids: list[str]) -> tuple[list, list]:
    """Gold and predicted tags of `ids`, straight from a run dir's predictions.conll (not via records.py)."""
    rd = RunDir(run)
    tagged = dict(zip((a["sentence_id"] for a in rd.artifact("attribution")), rd.predictions(), strict=True))
    return [tagged[s][1] for s in ids], [tagged[s][2] for s in ids]


def _direct(run: Path, ids: list[str]):
    return entity_counts(*_tags(run, ids))


def _final(run: Path) -> dict:
    """Per sentence id: the final translation and the (type, phrase, answer) of each backward record."""
    rd = RunDir(run)
    out = {f["sentence_id"]: [f["english"]] for f in rd.artifact("forward")}
    for b in rd.artifact("backward"):
        out[b["sentence_id"]].append((b["type"], b["phrase"], b["answer"]))
    return out


def _row(text: str, start: str) -> str:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(start)]
    return line


def _f1_cell(counts) -> str:
    s = entity_scores(counts)
    lo, hi = bootstrap_f1_ci(counts, n_boot=1000, seed=0)
    return (
        f"{100 * s['entity_f1']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] | {100 * s['entity_precision']:.1f} | "
        f"{100 * s['entity_recall']:.1f} |"
    )


@pytest.mark.slow
def test_e2e_evidence_from_run_dirs_renders_and_regenerates(run_dirs, tmp_path):
    tiny, echo = run_dirs
    ev = tmp_path / "evidence"
    out_tiny, out_echo = ev / "e2e-tiny.jsonl.gz", ev / "e2e-echo.jsonl.gz"
    proc = _tables(["e2e-evidence", str(tiny), "--out", str(out_tiny), "--machine", "test"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 runs, 16 sentences" in proc.stdout and "unfinished (not a finished eatlab run)" in proc.stderr
    build_echo = ["e2e-evidence", str(echo), "--out", str(out_echo), "--machine", "test"]
    assert _tables(build_echo).returncode == 0
    first = out_echo.read_bytes()
    assert _tables(build_echo).returncode == 0 and out_echo.read_bytes() == first  # reproducible bytes

    # what a line holds: the run's factors and provenance, each sentence's entities, counts and answers
    header, runs, sents = records.read(out_tiny)
    assert header["kind"] == "e2e" and [r["run"] for r in runs] == ["zh-constrained", "zh-free"]
    free = runs[1]
    assert free["factors"] == {"model": free["model"], "method": "eat", "prompts": "eatlab", "rounds": 1,
                               "alignment": "free", "finetune": "none", "dtype": "float32",
                               "batch_invariant": "n/a"}  # fmt: skip
    assert (free["language"], free["split"], free["limit"], free["machine"]) == ("zh", "test", 8, "test")
    assert len(free["commit"]) == 40 and free["command"] and len(*free["data_sha256"].values()) == 64
    rd = RunDir(tiny / "zh-free")
    assert free["llm_calls"] == rd.metrics["llm_calls"] > 0
    mine = [s for s in sents if s["run"] == "zh-free"]
    ids = [f"zh-test-{i}" for i in range(8)]
    assert [s["sentence_id"] for s in mine] == ids
    direct = _direct(tiny / "zh-free", ids)
    assert [s["tp"] for s in mine] == direct.tp.sum(axis=1).tolist()
    assert [s["tp"] + s["fp"] for s in mine] == direct.pred.sum(axis=1).tolist()
    assert [s["tp"] + s["fn"] for s in mine] == direct.gold.sum(axis=1).tolist()
    _, gold_tags, pred_tags = rd.predictions()[0]
    assert mine[0]["gold"] == [[x.type, x.start, x.end] for x in tags_to_spans(gold_tags)]
    assert mine[0]["pred"] == [[x.type, x.start, x.end] for x in tags_to_spans(pred_tags)]
    english = rd.artifact("forward")[0]["english"]
    assert mine[0]["english"] == "sha256:" + hashlib.sha256(english.encode()).hexdigest()[:16]
    backward = [b for b in rd.artifact("backward") if b["sentence_id"] == ids[0]]
    assert [a[:2] for a in mine[0]["answers"]] == [[b["type"], b["phrase"]] for b in backward]
    assert all(len(a[2]) <= records.SHORT_ANSWER or a[2].startswith("sha256:") for a in mine[0]["answers"])
    kept = json.dumps(
        sents, ensure_ascii=False
    )  # no source sentence is copied (answers holding one are hashed)
    assert not [
        a["text"]
        for a in rd.artifact("attribution")
        if len(a["text"].strip()) > 4 and a["text"].strip() in kept
    ]

    # the page: two blocks regenerated from the evidence alone, then checked
    page = tmp_path / "page.md"
    page.write_text(
        "# t\n<!-- generated: e2e-tiny -->\nstale\n<!-- end generated: e2e-tiny -->\n"
        "<!-- generated: e2e-echo -->\n<!-- end generated: e2e-echo -->\nend\n",
        "utf-8",
    )
    assert _tables(["regen", "--page", str(page), "--evidence", str(ev)]).returncode == 0
    text = page.read_text(encoding="utf-8")
    assert (
        "stale" not in text
        and text.startswith("# t\n<!-- generated: e2e-tiny -->\n")
        and text.endswith("<!-- end generated: e2e-echo -->\nend\n")
    )
    assert generated.regenerate(text, ev, "page") == (text, [])  # what `regen --check` checks

    # the tiny model: each row as computed from the run dirs directly; its interval is the run's own
    for run, setting in (("zh-free", "free"), ("zh-constrained", "constrained")):
        counts = _direct(tiny / run, ids)
        assert f"| zh | {setting} | 8 (16) | {_f1_cell(counts)}" in text
        lo, hi = RunDir(tiny / run).metrics["entity_f1_ci95"]
        assert bootstrap_f1_ci(counts, n_boot=1000, seed=0) == pytest.approx((lo, hi))
    a, b = _direct(tiny / "zh-constrained", ids), _direct(tiny / "zh-free", ids)
    t = paired_bootstrap_test(a, b, n_boot=1000, seed=0)
    same = sum(
        x == y for x, y in zip(_tags(tiny / "zh-constrained", ids)[1], _tags(tiny / "zh-free", ids)[1])
    )
    fa, fb = _final(tiny / "zh-constrained"), _final(tiny / "zh-free")
    answers = sum(fa[i] == fb[i] for i in ids)
    row = _row(text, "| zh | constrained | free | 8 |")
    delta = f"{100 * t.delta:+.1f} [{100 * t.delta_ci95[0]:+.1f}, {100 * t.delta_ci95[1]:+.1f}]"
    assert f"| {delta} | {same}/8 | {answers}/8 |" in row
    assert row.endswith(f"| {t.p_value:.3f} | {t.p_value:.3f} | no |")  # one test: Holm changes nothing

    # no model (echo): every number pinned; two languages, so pooled rows too
    _, runs, _ = records.read(out_echo)
    alignment = {r["run"]: r["factors"]["alignment"] for r in runs}
    assert alignment == {"es-copy": "n/a", "es-eat": "free", "fr-copy": "n/a", "fr-eat": "free"}
    tags = {(lang, m): _tags(echo / f"{lang}-{m}", [f"{lang}-test-{i}" for i in range(6)])
            for lang in ("es", "fr") for m in ("eat", "copy")}  # fmt: skip
    assert "| es | eat, free | 6 (6) | 25.0 [0.0, 60.0] | 50.0 | 16.7 |" in text
    # no true positive: the upper end is scipy's exact bound for 0 of the sentences holding gold, as F1
    from scipy.stats import binomtest

    k = sum(any(t != "O" for t in g) for g in tags[("es", "copy")][0])
    r = binomtest(0, k).proportion_ci(method="exact").high
    assert f"| es | exact_copy, n/a | 6 (6) | 0.0 [0.0, {100 * 2 * r / (1 + r):.1f}] | 0.0 | 0.0 |" in text
    assert "| pooled | eat, free | 12 (12) | 13.3 [0.0, 37.6] | 33.3 | 8.3 |" in text
    both = {m: [t for lang in ("es", "fr") for t in tags[(lang, m)][1]] for m in ("eat", "copy")}
    gold = [t for lang in ("es", "fr") for t in tags[(lang, "eat")][0]]
    pairs = [
        (entity_counts(*tags[(lang, "copy")]), entity_counts(*tags[(lang, "eat")])) for lang in ("es", "fr")
    ]
    pairs.append((entity_counts(gold, both["copy"]), entity_counts(gold, both["eat"])))
    tests = [paired_bootstrap_test(a, b, n_boot=1000, seed=0) for a, b in pairs]
    rows = [ln for ln in text.splitlines() if "| exact_copy, n/a | eat, free |" in ln]
    assert [r.split(" | ")[0] for r in rows] == ["| es", "| fr", "| pooled"]
    assert rows[0].startswith(
        "| es | exact_copy, n/a | eat, free | 6 | 0.0 | 25.0 | -25.0 [-60.0, +0.0] | 1/6 | 1/6 |"
    )
    for r, t, ph in zip(rows, tests, holm([t.p_value for t in tests])):
        assert r.endswith(f"| {t.p_value:.3f} | {ph:.3f} | no |"), r  # 6 sentences: nothing passes Holm
    assert "Holm over the 3 p-values" in text and "Machine: test." in text
    extractor = {r["run"]: r["extractor"] for r in runs}["es-eat"]
    assert extractor == {"name": "capitalised_words"}  # no model folder, so no fingerprint
    assert " English NER: capitalised_words (es, fr; 4 runs). " in text
    # both metrics and the attribution, as each run reported them
    reported, run = {r["run"]: r["reported"] for r in runs}, {r["run"]: r for r in runs}["es-eat"]
    es_eat = _row(text, "| es | eat, free | 6 (6) |")
    token_f1 = 100 * reported["es-eat"]["reference_token_micro_f1"]
    assert es_eat.endswith(f"| {token_f1:.1f} | {run['llm_calls']} / {run['seconds']:.0f} |"), es_eat
    found = reported["es-eat"]["failures"]["gold"]  # in the pipeline's order
    kinds = [k for k in ("found", "lost_in_translation", "missed_by_ner", "ner_wrong_type", "misaligned_backward")
             if k in found]  # fmt: skip
    assert set(kinds) == set(found)
    assert "| lang | setting | " + " | ".join(k.replace("_", " ") for k in kinds) + " |" in text
    assert "| es | eat, free | " + " | ".join(str(found[k]) for k in kinds) + " |" in text


def test_e2e_redirect_artefacts_are_reported_both_ways(run_dirs, tmp_path):
    """The Spanish sample's second sentence is a redirect artefact ("REDIRECCIÓN Sancho I de Cerdaña"): it is
    flagged, counts in the language's rows and is left out of the `w/o redirects` rows (per language and
    pooled); with no flagged sentence there are no such rows."""
    _, echo = run_dirs
    out = tmp_path / "e2e-echo.jsonl.gz"
    assert _tables(["e2e-evidence", str(echo), "--out", str(out), "--machine", "test"]).returncode == 0
    header, runs, sents = records.read(out)
    assert {s["sentence_id"] for s in sents if s["redirect"]} == {"es-test-1"}
    text = generated.render(out)
    assert "| es | eat, free | 6 (" in text and "| es w/o redirects | eat, free | 5 (" in text
    assert "| pooled w/o redirects | eat, free | 11 (" in text and "fr w/o redirects" not in text
    for s in sents:
        s["redirect"] = False
    plain = tmp_path / "plain.jsonl.gz"
    records.write(plain, header["table"], "e2e", [*runs, *sents], header["built_by"])
    assert "w/o redirects" not in generated.render(plain)


def test_a_sentence_line_that_disagrees_with_its_run_is_refused(tmp_path):
    """The renderer recomputes each run's entity counts and F1, and refuses evidence that disagrees."""
    reported = {"n_gold_entities": 2, "n_pred_entities": 1, "entity_f1": 2 / 3}
    run = {"type": "run", "run": "r", "language": "zh", "split": "dev", "model": "m", "n_sentences": 2,
           "factors": {"method": "eat"}, "reported": reported}  # fmt: skip
    sent = [
        {"type": "sentence", "run": "r", "sentence_id": "zh-dev-0", "gold": [["PER", 0, 2]],
         "pred": [["PER", 0, 2]], "tp": 1, "fp": 0, "fn": 0, "english": None, "answers": []},
        {"type": "sentence", "run": "r", "sentence_id": "zh-dev-1", "gold": [["LOC", 1, 2]], "pred": [],
         "tp": 0, "fp": 0, "fn": 1, "english": None, "answers": []},
    ]  # fmt: skip
    path = tmp_path / "x.jsonl.gz"
    records.write(path, "x", "e2e", [run, *sent], "test")
    assert "| zh | eat | 2 (2) | 66.7 [" in generated.render(path)
    sent[1] = {**sent[1], "fp": 1}
    records.write(path, "x", "e2e", [run, *sent], "test")
    with pytest.raises(DataError, match="n_pred_entities: the sentences give 2, the run reported 1"):
        generated.render(path)


def test_an_adapter_run_is_labelled_by_its_factor_and_named_once(run_dirs, tmp_path):
    """A tuned run differs from its untuned twin in the `finetune` factor only: its adapter path (an override)
    is no `variant`, the pair is tested, and the note names the adapter it loaded (hash, languages, data)."""
    _, echo = run_dirs
    out = tmp_path / "e2e-echo.jsonl.gz"
    assert _tables(["e2e-evidence", str(echo), "--out", str(out), "--machine", "test"]).returncode == 0
    header, runs, sents = records.read(out)
    (twin,) = [r for r in runs if r["run"] == "es-eat"]
    tuned = {**twin, "run": "es-eat-ft", "factors": {**twin["factors"], "finetune": "eacl_qlora"}}
    tuned["overrides"] = [*twin["overrides"], "finetune=eacl_qlora", "finetune.adapter_path=/x/es-0123abcd"]
    tuned["adapter"] = {"hash": "0123abcd4567", "languages": ["es"], "directions": ["backward", "forward"],
                        "data_sha256": "f" * 64}  # fmt: skip
    copies = [{**s, "run": "es-eat-ft"} for s in sents if s["run"] == "es-eat"]
    path = tmp_path / "tuned.jsonl.gz"
    records.write(path, header["table"], "e2e", [*runs, tuned, *sents, *copies], header["built_by"])
    text = generated.render(path)
    assert "/x/es-0123abcd" not in text
    row = _row(text, "| es | eat, free, eacl_qlora | eat, free, none | 6 |")
    assert "| +0.0 [+0.0, +0.0] | 6/6 | 6/6 |" in row
    assert (
        f"Adapters (finetune eacl_qlora): es {twin['model']}: `0123abcd4567` (EACL es, backward+forward, data "
        "`ffffffffffff`)." in text
    )


def test_a_finding_needs_holm_and_the_interval_to_agree():
    """The `finding` column's one rule: Holm p below 0.05 and the interval on one side of 0, else `no`."""
    assert generated._finding(0.02, 0.10, 0.01) == "A higher"
    assert generated._finding(-0.10, -0.02, 0.049) == "B higher"
    assert generated._finding(-0.01, 0.10, 0.01) == "no"  # the test and the interval disagree: no finding
    assert generated._finding(0.02, 0.10, 0.05) == "no"  # not below the level
    assert generated._finding(0.02, 0.10, 0.20) == "no"


def test_evidence_grows_by_new_runs_with_add_and_refuses_a_name_twice(run_dirs, tmp_path):
    """`--add` keeps the runs already in the file (their run dirs may be gone) and adds the new ones; the result
    holds what a build over all the run dirs at once holds; a run name already there is one error line."""
    _, echo = run_dirs
    out, whole = tmp_path / "grown.jsonl.gz", tmp_path / "whole.jsonl.gz"
    fr, es = [str(echo / f"{lang}-{m}") for lang in ("fr",) for m in ("eat", "copy")], [str(echo / "es-eat")]
    assert _tables(["e2e-evidence", *fr, "--out", str(out), "--machine", "test"]).returncode == 0
    proc = _tables(["e2e-evidence", *es, "--out", str(out), "--machine", "test", "--add"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 runs, 18 sentences" in proc.stdout
    assert _tables(["e2e-evidence", *fr, *es, "--out", str(whole), "--machine", "test"]).returncode == 0
    header, runs, sents = records.read(out)
    _, whole_runs, whole_sents = records.read(whole)
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert sorted(map(key, runs)) == sorted(map(key, whole_runs))
    assert sorted(map(key, sents)) == sorted(map(key, whole_sents))
    assert " ; then " in header["built_by"] and "--add" in header["built_by"]
    again = _tables(["e2e-evidence", *es, "--out", str(out), "--machine", "test", "--add"])
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"error: {out}: already holds the runs es-eat; rebuild it without --add"
    ]


def test_the_note_names_each_runs_english_ner_and_says_where_it_was_not_kept():
    runs = [
        {"language": "ja", "extractor": {"name": "spacy_wikiann", "fingerprint": "752e57e21e85"}},
        {"language": "ar", "extractor": {"name": "spacy_wikiann", "fingerprint": "752e57e21e85"}},
        {"language": "ja", "extractor": None},  # direct_llm: no NER
        {"language": "zh"},  # kept before the field existed
    ]
    assert generated._extractors(runs) == (
        " English NER: spacy_wikiann `752e57e21e85` (ar, ja; 2 runs); not recorded for the 1 run kept before this "
        "field."
    )
    assert generated._extractors([{"language": "zh"}]) == ""
