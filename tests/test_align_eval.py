"""The entity-alignment benchmark (eatlab.eat.align_eval, `eatlab-align-eval`) and its analysis tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eatlab.data.languages import get_language
from eatlab.eat.align_eval import char_f1, make_case, normalize_name, tokenize
from eatlab.eval.bootstrap import bootstrap_mean_ci, paired_bootstrap_mean_test
from eatlab.finetune.eacl import AlignedPair, FilterOptions, prepare_language

PLUGINS = Path(__file__).parent / "plugins"

# the in-repo EACL sample's zh held-out slice (seed 0, val_fraction 0.05): index, English mention, phrase
ZH_HELDOUT = [
    (3, "Germany", "德國"),
    (8, "BSE", "孟买证券交易所"),
    (37, "Germans", "德意志人"),
    (62, "Israel Radio", "以色列陆军广播电台"),
    (90, "Kurds", "庫爾德人"),
    (110, "Gaza", "加沙"),
    (116, "Taleban", "塔利班"),
    (122, "Islamic Taleban", "塔利班"),
    (178, "Finance Ministry", "财政部"),
]


def test_the_benchmark_pairs_are_the_finetuning_heldout_slice():
    split = prepare_language(None, "zh", FilterOptions(), 0.05, 200, 0)
    assert [(p.index, p.eng_entity, p.phrase) for p in split.val] == ZH_HELDOUT
    trained = {p.tgt_entity for p in split.train}
    assert not trained & {p.tgt_entity for p in split.val}  # drawn by title: never trained on


def test_tokenize_like_wikiann():
    toks, offs = tokenize("德國 (Deutschland)", True)
    assert toks == ["德", "國", "#", "(", "D", "e", "u", "t", "s", "c", "h", "l", "a", "n", "d", ")"]
    assert offs[2] == (2, 3)
    toks, offs = tokenize("Тетюши (Казанской губернии).", False)
    assert toks == ["Тетюши", "(", "Казанской", "губернии", ")", "."]
    assert offs[:2] == [(0, 6), (7, 8)]


def test_make_case_gold_span_covers_the_phrase_tokens():
    text = "Президент посетил Ноттингемский университет."
    pair = AlignedPair("ru", 7, "Nottingham", "Ноттингем", text, 18, 27, "normalized")
    case = make_case(pair, get_language("ru"))
    assert case.id == "ru-eacl-7"
    assert case.sentence.tokens[case.gold.start : case.gold.end] == ["Ноттингемский"]  # widened to the token
    assert case.sentence.text == text and case.gold_chars == (18, 27)
    with pytest.raises(ValueError, match="not located"):
        make_case(AlignedPair("ru", 8, "X", "Y", text, -1, -1, "none"), get_language("ru"))


def test_char_f1_and_name_normalisation():
    text = "以色列陆军广播电台"
    assert char_f1((0, 3), (0, 9), text) == pytest.approx(0.5)
    assert char_f1((0, 9), (0, 9), text) == 1.0
    assert char_f1(None, (0, 9), text) == 0.0
    assert char_f1((3, 5), (0, 2), text) == 0.0
    assert normalize_name("The  Germans.") == normalize_name("germans") == "germans"
    assert normalize_name("«Reuters»") == "reuters"
    assert normalize_name("Bombay Stock Exchange") != normalize_name("BSE")


def test_mean_bootstrap_pins():
    assert bootstrap_mean_ci([1, 0, 1, 1, 0, 0, 1, 1], n_boot=1000, seed=0) == (0.25, 0.875)
    same = paired_bootstrap_mean_test([1, 0, 1, 1], [1, 0, 1, 1])
    assert same["delta"] == 0.0 and same["p_value"] == 1.0
    better = paired_bootstrap_mean_test([1.0] * 10, [0.0] * 10, n_boot=999)
    assert better["delta"] == 1.0 and better["p_value"] == pytest.approx(1 / 1000)
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap_mean_test([1, 0], [1])


# answers of a scripted model (tests/plugins/mylab.py LookupBackend), keyed by the prompts' first lines
PARTLY_RIGHT = {
    "English phrase: Germany\n": "德國",  # exact
    "English phrase: BSE\n": "孟买证券交易所",  # exact
    "English phrase: Germans\n": "The phrase is 德意志人.",  # exact after clean-up
    "English phrase: Israel Radio\n": "以色列",  # a third of the phrase
    "English phrase: Kurds\n": "Kurds",  # an English echo: nowhere in the sentence
    "English phrase: Gaza\n": "加沙",
    "English phrase: Taleban\n": "塔利班",
    "English phrase: Islamic Taleban\n": "",
    "English phrase: Finance Ministry\n": "财政",  # most of it
    "Chinese phrase: 德國\n": "Germany",
    "Chinese phrase: 孟买证券交易所\n": "Bombay Stock Exchange",
    "Chinese phrase: 德意志人\n": "the Germans",
    "Chinese phrase: 塔利班\n": "Taliban",
}


def _run_align_eval(
    tmp_path: Path, overrides: list[str], multirun: bool = False
) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("eatlab-align-eval")
    cmd = (
        [str(exe)]
        if exe.exists()
        else [sys.executable, "-c", "from eatlab.cli.align_eval import main; main()"]
    )
    cmd += (["-m"] if multirun else []) + [
        f"hydra.searchpath=[file://{PLUGINS / 'conf'}]",
        "backend=lookup",
        "alignment=free",  # the scripted model decodes nothing: no constraint to apply
        "language=zh",
        "align_eval.limit=null",
        "align_eval.batch_size=4",
        "align_eval.n_boot=200",
        "tracking=none",
        f"paths.output_dir={tmp_path / 'outputs'}",
        *overrides,
    ]
    env = {**os.environ, "PYTHONPATH": str(PLUGINS)}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two settings on the same 9 pairs: a partly right model and an always right one."""
    tmp = tmp_path_factory.mktemp("align")
    right = {f"English phrase: {e}\n": p for _, e, p in ZH_HELDOUT} | {
        f"Chinese phrase: {p}\n": e for _, e, p in ZH_HELDOUT
    }
    (tmp / "partly.json").write_text(json.dumps(PARTLY_RIGHT, ensure_ascii=False), encoding="utf-8")
    (tmp / "right.json").write_text(json.dumps(right, ensure_ascii=False), encoding="utf-8")
    proc = _run_align_eval(
        tmp,
        ["backend.table=partly.json,right.json", f"hydra.sweep.dir={tmp / 'sweep'}"],
        multirun=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "sweep", proc


@pytest.mark.slow
def test_align_eval_scores_a_scripted_model(sweep):
    sweep_dir, proc = sweep
    run = next(p for p in sweep_dir.iterdir() if p.name.startswith("0_"))
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert m["schema_version"] == 1 and m["run"]["task"] == "align_eval"
    assert m["data"]["pairs"] == 9 and m["data"]["heldout_pairs"] == 9
    # 9 pairs x 3 backward rounds + 8 naming questions (the two Taleban pairs share sentence and phrase: one
    # request); the empty answers are counted
    assert m["llm_calls"] == 35 and m["stages"]["backward"]["llm_calls"] == 27
    assert (
        m["counts"]["empty_answers"] == 7
    )  # 3 rounds for Islamic Taleban + 4 naming pairs without an answer
    ours, ref = m["backward"]["eatlab"], m["backward"]["reference"]
    assert ours["n"] == 9
    assert ours["exact"]["mean"] == pytest.approx(5 / 9)  # Germany, BSE, Germans, Gaza, Taleban
    # + Israel Radio, Finance Ministry (partial) and Kurds, placed on the romanised "Kurd" in the sentence
    assert ours["placed"]["mean"] == pytest.approx(8 / 9)
    assert ours["char_f1"]["mean"] == pytest.approx((5 + 0.5 + 0.8) / 9, abs=1e-6)
    lo, hi = ours["exact"]["ci95"]
    assert 0 <= lo < 5 / 9 < hi <= 1
    # the reference recovery gets the same exact matches but never places a Latin answer in a zh sentence
    assert ref["exact"]["mean"] == pytest.approx(5 / 9) and ref["placed"]["mean"] == pytest.approx(7 / 9)
    assert m["backward"]["verbatim_share"] == pytest.approx(6 / 9)
    assert m["naming"]["exact"]["mean"] == pytest.approx(2 / 9)  # Germany, the Germans
    rows = [json.loads(x) for x in (run / "artifacts" / "align_backward.jsonl").read_text().splitlines()]
    assert [r["pair_id"] for r in rows] == [f"zh-eacl-{i}" for i, _, _ in ZH_HELDOUT]
    kurds = rows[4]
    assert (
        kurds["answer"] == "Kurds" and kurds["eatlab"]["text"] == "Kurd" and kurds["eatlab"]["char_f1"] == 0.0
    )
    assert rows[7]["eatlab"]["reason"] == "empty_answer"
    assert "align-eval zh: 9/9 pairs" in (run / "task.log").read_text(encoding="utf-8")  # the progress line
    assert not (run / "artifacts" / "forward.jsonl").exists()  # only the benchmark's own artifacts
    prov = json.loads((run / "provenance.json").read_text(encoding="utf-8"))
    assert prov["data"]["pair_ids"][0] == "zh-eacl-3"


@pytest.mark.slow
def test_align_eval_perfect_answers_score_one(sweep):
    sweep_dir, _ = sweep
    run = next(p for p in sweep_dir.iterdir() if p.name.startswith("1_"))
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    for rec in ("eatlab", "reference"):
        assert m["backward"][rec]["exact"]["mean"] == 1.0, rec
    # both Taleban pairs ask for the English of 塔利班: one answer ("Islamic Taleban") for both
    assert m["naming"]["exact"]["mean"] == pytest.approx(8 / 9)


def test_align_eval_bad_key_is_one_line(tmp_path):
    proc = _run_align_eval(tmp_path, ["backend.table=x.json", "align_eval.n_boot=0"])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: align_eval.n_boot=0: expected a whole number >= 1"


@pytest.mark.slow
def test_align_eval_on_the_tiny_model_constrained(tmp_path):
    """The real hf backend with random weights: every final backward answer is copied from its sentence."""
    proc = _run_align_eval(
        tmp_path,
        [
            "backend=hf",
            "model=tiny",
            "align_eval.limit=3",
            "alignment.constrained=true",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text(encoding="utf-8"))
    assert m["data"]["pairs"] == 3 and m["run"]["alignment"]["constrained"] is True
    assert m["backward"]["verbatim_share"] == 1.0
    rows = [
        json.loads(x)
        for x in (tmp_path / "run" / "artifacts" / "align_backward.jsonl").read_text().splitlines()
    ]
    assert [r["pair_id"] for r in rows] == ["zh-eacl-3", "zh-eacl-8", "zh-eacl-37"]


@pytest.mark.slow
def test_analyze_shows_the_alignment_tables_and_paired_tests(sweep, tmp_path):
    from eatlab.analysis.analyze import analyze_sweep

    sweep_dir, _ = sweep
    a = analyze_sweep(sweep_dir, tmp_path / "analysis", roundtrip=False, n_boot=200)
    table = a.tables["alignment"]
    assert len(table) == 4  # 2 runs x 2 recoveries
    assert set(table["setting"]) == {
        "eatlab r3 free [backend.table=partly.json]",
        "eatlab r3 free [backend.table=right.json]",
    }
    row = table[(table["recovery"] == "eatlab") & table["setting"].str.contains("partly")].iloc[0]
    assert row["pairs"] == 9 and row["exact %"].startswith("55.6 [")
    paired = a.tables["alignment_paired"]
    # baseline: the first free setting with eatlab's recovery (no reference-prompt run in this sweep)
    assert set(paired["baseline"]) == {"eatlab r3 free [backend.table=partly.json] / eatlab"}
    right = paired[(paired["recovery"] == "eatlab") & paired["setting"].str.contains("right")].iloc[0]
    assert right["pairs"] == 9 and right["exact_delta"] == pytest.approx(4 / 9)
    # 4 vs 0 discordant pairs: the exact McNemar test gives p = 0.125 (not "significant")
    assert (right["exact_a_only"], right["exact_b_only"]) == (4, 0)
    assert right["exact_p"] == pytest.approx(0.125)
    assert a.runs.empty  # no end-to-end runs in this sweep
    assert "Alignment benchmark: paired tests" in (tmp_path / "analysis" / "report.html").read_text(
        encoding="utf-8"
    )


def test_align_eval_directions_are_checked():
    from hydra import compose, initialize_config_dir

    from eatlab.cli.config_check import validate_for
    from eatlab.errors import ConfigError
    from eatlab.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="align_eval", overrides=["align_eval.directions=[backward,forward]"])
        with pytest.raises(ConfigError, match=r"align_eval.directions=\['backward', 'forward'\]: expected"):
            validate_for("align_eval", cfg)
        validate_for(
            "align_eval", compose(config_name="align_eval", overrides=["align_eval.directions=[naming]"])
        )
