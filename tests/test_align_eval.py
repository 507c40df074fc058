"""The entity-alignment benchmark (eatlab.eat.align_eval, `eatlab-align-eval`) and its analysis tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eatlab.data.languages import get_language
from eatlab.eat.align_eval import (
    char_f1,
    control_scores,
    copy_head,
    make_case,
    normalize_name,
    shifted_cases,
    summarize,
    tokenize,
)
from eatlab.eval.bootstrap import bootstrap_mean_ci, paired_bootstrap_mean_test
from eatlab.eval.stats import proportion_ci
from eatlab.finetune.eacl import AlignedPair, FilterOptions, prepare_language

PLUGINS = Path(__file__).parent / "plugins"

# the in-repo EACL sample's zh dev slice (seed 0, val_fraction 0.05): index, English mention, phrase
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


ZH_TEST_IDS = [19, 41, 80, 120, 166, 171, 174, 182, 198]


def test_the_benchmark_pairs_are_the_finetuning_dev_and_test_slices():
    split = prepare_language(None, "zh", FilterOptions(), 0.05, 200, 0)
    assert [(p.index, p.eng_entity, p.phrase) for p in split.val] == ZH_HELDOUT
    assert [p.index for p in split.test] == ZH_TEST_IDS
    trained = {p.tgt_entity for p in split.train}
    assert not trained & {p.tgt_entity for p in split.val + split.test}  # drawn by title: never trained on


def test_copy_head_stops_at_the_first_delimiter_of_the_script():
    cases = [
        ("zh", "詹姆斯·馬歇爾·亨德里克斯（英語：James Marshall Hendrix）", "詹姆斯·馬歇爾·亨德里克斯"),
        ("zh", "《人民日报》是中国共产党中央委员会的机关报", "人民日报"),
        ("zh", "北京是中国的首都。", "北京"),
        ("ja", "フレッド・カプルス（Fred Couples, 1959年10月3日 - ）は", "フレッド・カプルス"),
        ("ja", "カーディフは、ウェールズの首府。", "カーディフ"),
        ("ko", "BBC 라디오(BBC Radio)는 BBC의 라디오 방송이다.", "BBC 라디오"),
        ("ko", "서울특별시는 대한민국의 수도이다.", "서울특별시"),
        ("ar", "كنيسة الدير هي مجمع كنسي كبير", "كنيسة الدير"),
        ("ar", "تونس، عاصمة الجمهورية التونسية", "تونس"),
        ("ru", "Северная Африка — регион в Африке.", "Северная Африка"),
        ("ru", "«Интер» — итальянский футбольный клуб", "Интер"),
        ("ru", "Фред Каплс - гольфист", "Фред Каплс"),
        ("de", "Köln (kölsch Kölle) ist", "Köln"),
    ]
    assert [copy_head(text, lang) for lang, text, _ in cases] == [head for _, _, head in cases]


def test_position_and_units():
    ru = get_language("ru")
    olympic = "Олимпийские игры и ОЛИМПИЙСКИЕ игры."
    a = make_case(AlignedPair("ru", 1, "Olympic", "Олимпийские", olympic, 0, 11, "verbatim"), ru)
    b = make_case(AlignedPair("ru", 2, "OLYMPIC", "олимпийские", olympic, 0, 11, "normalized"), ru)
    c = make_case(AlignedPair("ru", 3, "Games", "игры", olympic, 12, 16, "verbatim"), ru)
    assert a.unit == b.unit != c.unit and len(a.unit) == 12  # one item: same sentence, same normalised gold
    assert (a.position, c.position) == ("initial", "later")
    quoted = "«Интер» — клуб."
    assert (
        make_case(AlignedPair("ru", 4, "Inter", "Интер", quoted, 1, 6, "verbatim"), ru).position == "initial"
    )
    # Arabic: the gold is inside the sentence's first token (الكأس), which WikiANN's gold covers whole
    cup = "الكأس إناء"
    case = make_case(AlignedPair("ar", 5, "cup", "كأس", cup, 2, 5, "verbatim"), get_language("ar"))
    assert (case.gold.start, case.position) == (0, "initial")


def test_shifted_variants_move_the_gold_behind_another_heldout_sentence():
    zh = get_language("zh")
    pool = prepare_language(None, "zh", FilterOptions(), 0.05, 200, 0).val
    cases = [make_case(p, zh) for p in pool]
    shifted = shifted_cases(cases, pool, zh)
    assert [s.id for s in shifted] == [f"{c.id}-shifted" for c in cases]
    for case, s in zip(cases, shifted):
        prefix = s.sentence.text[: len(s.sentence.text) - len(case.sentence.text)]
        assert s.sentence.text.endswith(case.sentence.text) and prefix in {p.text for p in pool}
        assert s.pair.phrase == case.pair.phrase and s.unit == case.unit and s.position == "later"
        assert case.pair.phrase not in prefix  # recovery would place the answer there first
    # Germany (德國) skips the next sentence (德意志人..., which says 德國人) and takes the one after
    assert shifted[0].sentence.text.startswith("孟买证券交易所") and shifted[0].gold_chars == (228, 230)
    ko = get_language("ko")
    two = [
        AlignedPair("ko", i, "X", t, f"{t} 입니다.", 0, len(t), "verbatim")
        for i, t in enumerate(["서울", "부산"])
    ]
    moved = shifted_cases([make_case(two[0], ko)], two, ko)
    assert moved[0].sentence.text == "부산 입니다. 서울 입니다." and moved[0].gold_chars == (8, 10)  # a space


def test_the_control_on_the_sample_slices():
    zh = get_language("zh")
    split = prepare_language(None, "zh", FilterOptions(), 0.05, 200, 0)
    out = {}
    for name in ("dev", "test"):
        cases = [make_case(p, zh) for p in split.pairs(name)]
        c = control_scores(cases, shifted_cases(cases, split.pairs(name), zh), "zh", 200, 0)
        out[name] = [c["eatlab"]["exact"]["mean"]] + [
            (c["slices"][k]["eatlab"]["n"], c["slices"][k]["eatlab"]["exact"]["mean"]) for k in c["slices"]
        ]
    # the head is exact wherever the gold opens the sentence (dev) and never once another sentence precedes it
    assert out["dev"] == [pytest.approx(7 / 9), (7, 1.0), (2, 0.0), (9, 0.0)]
    assert out["test"] == [pytest.approx(5 / 9), (7, pytest.approx(5 / 7)), (2, 0.0), (9, 0.0)]


def test_summaries_use_wilson_for_shares_and_the_unit_bootstrap_for_means():
    exact = [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    f1 = [1.0, 1.0, 0.5, 1.0, 0.0, 0.25]
    units = ["a", "a", "b", "c", "d", "e"]  # the first two pairs are one item
    out = summarize({"exact": exact, "char_f1": f1}, units, n_boot=500, seed=3)
    assert (out["n"], out["units"]) == (6, 5)
    assert out["exact"] == {"mean": 0.5, "ci95": list(proportion_ci(3, 6))}
    assert out["char_f1"]["ci95"] == list(bootstrap_mean_ci(f1, n_boot=500, seed=3, units=units))
    assert out["char_f1"]["ci95"] != list(bootstrap_mean_ci(f1, n_boot=500, seed=3))
    none = summarize({"exact": [0.0, 0.0]}, ["a", "b"], n_boot=100, seed=0)
    assert none["exact"]["ci95"][0] == 0.0 < none["exact"]["ci95"][1]  # 0/n is never a zero-width interval


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
    assert m["data"]["pairs"] == 9 and m["data"]["heldout_pairs"] == 9 and m["data"]["shifted_pairs"] == 9
    assert m["run"]["split"] == m["data"]["split"] == "dev" and m["run"]["shifted"] is True
    # (9 pairs + their 9 shifted variants) x 3 backward rounds + 8 naming questions (the two Taleban pairs share
    # sentence and phrase: one request); the empty answers are counted
    assert m["llm_calls"] == 62 and m["stages"]["backward"]["llm_calls"] == 54
    # 3 rounds for Islamic Taleban and for its shifted variant + 4 naming pairs without an answer
    assert m["counts"]["empty_answers"] == 10
    ours, ref = m["backward"]["eatlab"], m["backward"]["reference"]
    assert (ours["n"], ours["units"], m["data"]["units"]) == (9, 8, 8)  # the two Taleban pairs are one item
    assert ours["exact"]["ci95"] == list(proportion_ci(5, 9))
    # per gold position and on the shifted variants (the scripted answers do not depend on the sentence)
    sl = m["backward"]["slices"]
    assert {k: (v["eatlab"]["n"], v["eatlab"]["exact"]["mean"]) for k, v in sl.items()} == {
        "initial": (7, pytest.approx(3 / 7)), "later": (2, 1.0), "shifted": (9, pytest.approx(5 / 9)),
    }  # fmt: skip
    # the copy-the-head control: exact wherever the gold opens the sentence, never on the shifted variants
    ctl = m["control"]
    assert ctl["name"] == "copy_head" and ctl["eatlab"]["exact"]["mean"] == pytest.approx(7 / 9)
    assert {k: v["eatlab"]["exact"]["mean"] for k, v in ctl["slices"].items()} == {
        "initial": 1.0, "later": 0.0, "shifted": 0.0,
    }  # fmt: skip
    assert ctl["slices"]["shifted"]["eatlab"]["exact"]["ci95"] == list(proportion_ci(0, 9))
    table = proc.stdout
    assert "align-eval zh, dev slice (9 pairs, 8 distinct sentence+gold items)" in table
    assert "initial (7)" in table and "shifted (9)" in table
    assert "    exact, copy-the-head control      77.8 [45.3, 93.7]     100.0 [64.6, 100.0]" in table
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
    assert rows[6]["unit"] == rows[7]["unit"] and rows[0]["sentence"].startswith("德意志聯邦共和國")
    assert (rows[0]["position"], rows[0]["control"]["answer"], rows[0]["control"]["eatlab"]["exact"]) == (
        "later", "德意志聯邦共和國", False,
    )  # fmt: skip
    moved = [
        json.loads(x) for x in (run / "artifacts" / "align_backward_shifted.jsonl").read_text().splitlines()
    ]
    assert [r["pair_id"] for r in moved] == [f"zh-eacl-{i}-shifted" for i, _, _ in ZH_HELDOUT]
    assert [r["unit"] for r in moved] == [r["unit"] for r in rows]
    assert moved[0]["gold"]["chars"] == [228, 230] and moved[0]["eatlab"]["exact"] is True
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
    proc = _run_align_eval(tmp_path, ["backend.table=x.json", "align_eval.split=val"])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: align_eval.split=val: expected dev or test"


@pytest.mark.slow
def test_align_eval_on_the_tiny_model_constrained(tmp_path):
    """The real hf backend with random weights: every final backward answer is copied from its sentence."""
    proc = _run_align_eval(
        tmp_path,
        [
            "backend=hf",
            "model=tiny",
            "align_eval.limit=3",
            "align_eval.split=test",
            "alignment.constrained=true",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text(encoding="utf-8"))
    assert m["data"]["pairs"] == 3 and m["run"]["alignment"]["constrained"] is True
    assert m["run"]["split"] == "test" and m["data"]["heldout_pairs"] == len(ZH_TEST_IDS)
    assert m["backward"]["verbatim_share"] == 1.0
    assert (
        m["backward"]["slices"]["shifted"]["eatlab"]["n"]
        == m["control"]["slices"]["shifted"]["eatlab"]["n"]
        == 3
    )
    rows = [
        json.loads(x)
        for x in (tmp_path / "run" / "artifacts" / "align_backward.jsonl").read_text().splitlines()
    ]
    assert [r["pair_id"] for r in rows] == [f"zh-eacl-{i}" for i in ZH_TEST_IDS[:3]]


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
