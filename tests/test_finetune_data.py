"""EACL loading, the phrase filters and their report, the held-out split, chat examples and the corpus builder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from eatlab.errors import ConfigError, DataError
from eatlab.finetune import builder
from eatlab.finetune.eacl import (
    EACL_SAMPLES_DIR,
    FILTER_STEPS,
    SLICES,
    AlignedPair,
    FilterOptions,
    align,
    clean_text,
    crop,
    eacl_path,
    filter_report,
    find_phrase,
    format_report,
    load_eacl,
    mix,
    normalize,
    prepare_language,
    split_heldout,
)
from eatlab.finetune.tasks import (
    IGNORE_INDEX,
    Collator,
    Templates,
    build_examples,
    encode_examples,
    examples_sha256,
)
from eatlab.paths import CONF_DIR, PROMPTS_DIR
from eatlab.utils.io import sha256_file

REPO = Path(__file__).resolve().parents[1]
ALL_EACL = ("ar", "de", "es", "fr", "ja", "ka", "ko", "nl", "ru", "zh")


def _templates() -> Templates:
    cfg = yaml.safe_load((CONF_DIR / "finetune" / "eacl_qlora.yaml").read_text(encoding="utf-8"))
    return Templates.from_config(cfg["templates"])


@pytest.fixture(scope="module")
def tokenizer():
    import os

    from transformers import AutoTokenizer

    from eatlab.llm.tiny import ensure_tiny_model

    models = Path(os.environ.get("EATLAB_TEST_MODELS", str(REPO / "outputs" / "test-models")))
    return AutoTokenizer.from_pretrained(str(ensure_tiny_model(models / "tiny-qwen2")))


# --- matching ----------------------------------------------------------------------------------------------------
def test_normalisation_maps_back_to_the_original_text():
    text = "Европе́йский сою́з (Евросою́з, ЕС) — объединение"
    start, end = find_phrase(text, "европейский союз")
    assert text[start:end] == "Европе́йский сою́з"  # stress marks kept in the span, matched without them
    text = "Die Straße von Ｍｅｓｓｉｎａ"
    start, end = find_phrase(text, "STRASSE VON MESSINA")
    assert text[start:end] == "Straße von Ｍｅｓｓｉｎａ"
    assert normalize("Ａｂ\u0301") == "ab"
    assert find_phrase("abc", "x") is None
    assert find_phrase("Ab", "ab", normalized=False) is None


def test_traditional_title_found_in_simplified_text_and_back():
    text = "德意志聯邦共和國，通稱德國，是位於中西歐的聯邦共和國。"
    assert find_phrase(text, "德国", t2s=False) is None
    start, end = find_phrase(text, "德国", t2s=True)
    assert text[start:end] == "德國"


def test_title_variants_and_the_step_that_found_them():
    opts = FilterOptions()
    pairs = [
        ("Ajax", "Аякс (футбольный клуб)", "Аякс — нидерландский клуб.", "qualifier", "Аякс"),
        ("Patrick Fischler", "Фишлер, Патрик", "Па́трик Фи́шлер (англ.", "inverted", "Патрик Фишлер"),
        ("EU", "Европейский союз", "Европе́йский сою́з (ЕС)", "normalized", "Европейский союз"),
        ("Germany", "德国", "通稱德國。", "t2s", "德國"),
        ("One-month", "月", "年。", None, None),
    ]
    from eatlab.finetune.eacl import EaclPair

    for i, (eng, tgt, text, step, phrase) in enumerate(pairs):
        lang = "zh" if step in ("t2s", None) else "ru"
        kept, counts, dropped = align([EaclPair(lang, i, eng, tgt, text)], opts)
        if step is None:
            assert kept == [] and dropped == {"phrase_not_in_text": 1}
            continue
        assert kept[0].match == step and kept[0].phrase == phrase, (tgt, kept)
        assert kept[0].phrase in kept[0].text  # a backward answer is always a substring of the sentence
        assert "\u0301" not in kept[0].text  # WikiANN's Russian has no stress marks; training text neither


def test_disabled_filter_keeps_unlocated_pairs_with_the_title_as_phrase():
    from eatlab.finetune.eacl import EaclPair

    kept, counts, _ = align(
        [EaclPair("zh", 0, "One-month", "月", "年。")], FilterOptions(phrase_in_text=False)
    )
    assert kept[0].start == -1 and kept[0].phrase == "月" and kept[0].match == "none"
    assert counts["dedup"] == 1 and counts["verbatim"] == 0


def test_crop_keeps_the_phrase_and_cuts_at_spaces():
    text = "aaaa bbbb cccc dddd TARGET eeee ffff gggg hhhh"
    s = text.index("TARGET")
    out, a, b = crop(text, s, s + 6, 20)
    assert out[a:b] == "TARGET" and len(out) <= 20 and not out.startswith(" ") and not out.endswith(" ")
    assert crop("short", 0, 5, 300) == ("short", 0, 5)
    assert clean_text(" a\n\n b  c ") == "a b c"


# --- files -------------------------------------------------------------------------------------------------------
def test_bad_files_raise_data_errors(tmp_path):
    bad = tmp_path / "corpus_xx.json"
    bad.write_text('[{"eng_entity": "A", "tgt_entity": "B"}]', encoding="utf-8")
    with pytest.raises(DataError, match="record 0: missing text"):
        load_eacl(bad, "xx")
    bad.write_text("[{", encoding="utf-8")
    with pytest.raises(DataError, match=r"corpus_xx.json:1: not valid JSON"):
        load_eacl(bad, "xx")
    bad.write_text('{"a": 1}', encoding="utf-8")
    with pytest.raises(DataError, match="expected a JSON list"):
        load_eacl(bad, "xx")
    with pytest.raises(ConfigError, match="no EACL file for 'ru'"):
        eacl_path(None, "ru")


def test_samples_are_the_first_200_release_records_byte_for_byte(shared_dir):
    sums = dict(
        reversed(line.split())
        for line in (EACL_SAMPLES_DIR / "SHA256SUMS").read_text().splitlines()
        if line.strip()
    )
    for lang in ("zh", "ja"):
        sample = (EACL_SAMPLES_DIR / f"corpus_{lang}.json").read_bytes()
        release = (shared_dir / "data" / "eacl" / f"corpus_{lang}.json").read_bytes()
        assert len(json.loads(sample)) == 200
        assert release.startswith(sample[:-1]) and sample.endswith(b"]")
        assert sha256_file(EACL_SAMPLES_DIR / f"corpus_{lang}.json") == sums[f"corpus_{lang}.json"]


@pytest.mark.slow
def test_filter_report_on_the_full_release(shared_dir, tmp_path):
    root = shared_dir / "data" / "eacl"
    splits = [prepare_language(root, lang, FilterOptions(), seed=0) for lang in ALL_EACL]
    report = filter_report(splits)
    table = format_report(report)
    assert table.count("\n") == len(ALL_EACL) + 1
    for lang, r in report["languages"].items():
        c = r["counts"]
        assert list(c) == list(FILTER_STEPS)
        assert c["read"] >= c["nonempty"] >= c["t2s"] >= c["dedup"], lang
        assert c["verbatim"] <= c["normalized"] <= c["qualifier"] <= c["inverted"] <= c["t2s"] == c["dedup"]
        assert c["train"] + c["dev"] + c["test"] == c["dedup"]
        assert 0 < c["dev"] <= 200 and 0 < c["test"] <= 200
    # The README's verbatim shares, and what normalisation recovers where titles and texts differ in form only
    ru, zh = report["languages"]["ru"]["counts"], report["languages"]["zh"]["counts"]
    assert ru["read"] == 3640 and ru["verbatim"] == 797 and ru["normalized"] > 0.5 * ru["read"]
    assert ru["inverted"] > ru["qualifier"]  # "Surname, Given" titles
    assert zh["read"] == 3395 and zh["verbatim"] == 2382 and zh["t2s"] > zh["inverted"] + 300
    assert all(r["counts"]["dedup"] / r["counts"]["read"] > 0.75 for r in report["languages"].values())
    for s in splits:
        _assert_disjoint(s)
    # train / dev / test per language; ja's and ru's dev slices lost the 3 and 2 pairs (Olympics, Chicago Cubs;
    # Nottingham, Inter) whose sentences a training pair shares under another title
    sizes = {s.language: (len(s.train), len(s.val), len(s.test)) for s in splits}
    assert {k: sizes[k] for k in ("zh", "ja", "ko", "ar", "ru")} == {
        "zh": (2545, 142, 141), "ja": (2750, 149, 151), "ko": (1885, 105, 104),
        "ar": (2671, 149, 148), "ru": (2732, 150, 151),
    }  # fmt: skip


# --- split and mix -------------------------------------------------------------------------------------------------
def test_heldout_split_is_seeded_and_keeps_titles_on_one_side():
    splits = [
        prepare_language(None, lang, FilterOptions(), val_fraction=0.1, seed=3) for lang in ("zh", "ja")
    ]
    again = [prepare_language(None, lang, FilterOptions(), val_fraction=0.1, seed=3) for lang in ("zh", "ja")]
    assert [s.val for s in splits] == [s.val for s in again]
    other = prepare_language(None, "zh", FilterOptions(), val_fraction=0.1, seed=4)
    assert other.val != splits[0].val
    for s in splits:
        assert {normalize(p.tgt_entity) for p in s.train}.isdisjoint({normalize(p.tgt_entity) for p in s.val})
        assert len(s.train) + len(s.val) + len(s.test) == s.counts["dedup"]
    train, val = mix(splits, seed=3)
    assert {p.language for p in train} == {"zh", "ja"}
    assert [p.language for p in train[:40]] != sorted(p.language for p in train[:40])  # interleaved
    assert len(val) == sum(len(s.val) for s in splits)
    with pytest.raises(ConfigError, match="val_fraction"):
        split_heldout(train, 1.5, None, 0)


def _assert_disjoint(split) -> None:
    """Titles (normalised) and sentences (normalised, uncropped) of train, dev and test never meet."""
    titles = {n: {normalize(p.tgt_entity) for p in split.pairs(n)} for n in SLICES}
    sentences = {n: {p.sentence_key for p in split.pairs(n)} for n in SLICES}
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert titles[a].isdisjoint(titles[b]), (split.language, a, b)
        assert sentences[a].isdisjoint(sentences[b]), (split.language, a, b)


def test_sample_slices_are_disjoint_in_titles_and_sentences():
    for lang in ("zh", "ja"):
        split = prepare_language(None, lang, FilterOptions(), seed=0)
        _assert_disjoint(split)
        assert (len(split.train), len(split.val), len(split.test)) == {"zh": (153, 9, 9), "ja": (163, 9, 9)}[
            lang
        ]
        assert split.counts["dev"] == len(split.val) and split.pairs("dev") is split.val
    with pytest.raises(ConfigError, match="split=val: expected one of train, dev, test"):
        split.pairs("val")
    # eatlab-finetune trains on train and validates on dev; test never reaches it
    splits = [prepare_language(None, lang, FilterOptions(), seed=0) for lang in ("zh", "ja")]
    train, val = mix(splits, seed=0)
    tested = {(p.language, p.index) for s in splits for p in s.test}
    assert tested and not tested & {(p.language, p.index) for p in train + val}
    assert val == [p for s in splits for p in s.val]


def _pair(i: int, title: str, text: str, lead: str | None = None) -> AlignedPair:
    start = text.index(title)
    return AlignedPair(
        "xx", i, f"E{i}", title, text, start, start + len(title), "verbatim", lead=lead or text
    )


def _titles(pairs) -> list[str]:
    return [p.tgt_entity for p in pairs]


def test_a_heldout_title_whose_sentence_is_in_train_goes_to_train():
    pairs = [_pair(i, t, f"{t} is place {i}.") for i, t in enumerate("ABCDEFGHIJ")]
    train, dev, test = split_heldout(pairs, 0.1, None, 0, 0.1, None)
    assert (_titles(dev), _titles(test)) == (["H"], ["I"])  # seed 0: H is dev, I is test
    # H has a second sentence, which it shares with the training title A (another case, another crop of the
    # same lead sentence): both H pairs go to train, dev is left empty (it is not refilled)
    shared = [
        *pairs[1:],
        _pair(0, "A", "A", lead="A AND H, PLACE 7."),
        _pair(10, "H", "H, place 7", "A and H, place 7."),
    ]
    train, dev, test = split_heldout(shared, 0.1, None, 0, 0.1, None)
    assert sorted(_titles(train)) == ["A", "B", "C", "D", "E", "F", "G", "H", "H", "J"]
    assert (dev, _titles(test)) == ([], ["I"])
    # a test title sharing a sentence with a dev title joins dev
    joint = [*pairs[:7], _pair(7, "H", "H and I."), _pair(8, "I", "H and I."), pairs[9]]
    train, dev, test = split_heldout(joint, 0.1, None, 0, 0.1, None)
    assert (_titles(dev), test) == (["H", "I"], [])
    assert len(train) == 8
    with pytest.raises(ConfigError, match="test_fraction"):
        split_heldout(pairs, 0.1, None, 0, 1.0, None)


# --- examples ------------------------------------------------------------------------------------------------------
def test_backward_template_is_the_pipelines_one_round_backward_prompt():
    prompts = yaml.safe_load((PROMPTS_DIR / "eatlab_v1.yaml").read_text(encoding="utf-8"))
    t = _templates()
    assert t.backward == prompts["backward"]["rounds"]["locate_only"]["text"]
    assert t.system == prompts["system"]


def test_examples_labels_cover_the_answer_only(tokenizer):
    split = prepare_language(None, "zh", FilterOptions(max_pairs_per_language=6), seed=0)
    examples = build_examples(split.train[:3], ["backward", "forward"], _templates())
    assert [e.direction for e in examples] == ["backward", "forward"] * 3
    back, fwd = examples[0], examples[1]
    assert back.answer == split.train[0].phrase and back.answer in back.messages[-1]["content"]
    assert "English phrase: " + split.train[0].eng_entity in back.messages[-1]["content"]
    assert "Chinese sentence:" in back.messages[-1]["content"]
    assert fwd.answer == split.train[0].eng_entity
    encoded, too_long = encode_examples(tokenizer, examples, 512)
    assert too_long == 0
    for enc in encoded:
        answer_ids = [t for t in enc.labels if t != IGNORE_INDEX]
        assert tokenizer.decode(answer_ids) == enc.example.answer + "<|im_end|>"
        assert enc.labels[: len(enc.prompt)] == [IGNORE_INDEX] * len(enc.prompt)
        assert enc.input_ids[: len(enc.prompt)] == enc.prompt
        assert tokenizer.decode(enc.prompt).endswith("<|im_start|>assistant\n")
    batch = Collator(tokenizer.pad_token_id, with_prompts=True)(encoded)
    keep = batch["keep"]
    # every answer token lies in the last keep-1 label positions (left padding)
    assert int((batch["labels"][:, : -(keep - 1)] != IGNORE_INDEX).sum()) == 0
    assert batch["position_ids"][0, -1] == len(encoded[0].input_ids) - 1
    _, short = encode_examples(tokenizer, examples, 20)
    assert short == len(examples)
    assert examples_sha256(examples, []) == examples_sha256(list(examples), [])
    assert examples_sha256(examples, []) != examples_sha256(examples[:-1], [])
    with pytest.raises(ConfigError, match="directions"):
        build_examples(split.train[:1], ["sideways"], _templates())


# --- builder -------------------------------------------------------------------------------------------------------
def test_builder_makes_an_eacl_corpus_that_trains(tmp_path):
    links = tmp_path / "links.tsv"
    links.write_text(
        "eng_entity\ttgt_title\nIndia\tभारत\nNew Delhi\tनई दिल्ली\nGermany\tजर्मनी\n# comment\n\nBharat\tभारत\n",
        encoding="utf-8",
    )
    leads = tmp_path / "leads.jsonl"
    leads.write_text(
        json.dumps({"title": "भारत", "text": "भारत दक्षिण एशिया में स्थित एक देश है।"}, ensure_ascii=False)
        + "\n"
        + json.dumps({"title": "नई दिल्ली", "text": "नई दिल्ली भारत की राजधानी है।"}, ensure_ascii=False)
        + "\n",
        encoding="utf-8",
    )
    args = ["--language", "hi", "--links", str(links), "--leads", str(leads), "--out", str(tmp_path / "eacl")]
    assert builder.main(args) == 0
    corpus = tmp_path / "eacl" / "corpus_hi.json"
    records = json.loads(corpus.read_text(encoding="utf-8"))
    assert [r["eng_entity"] for r in records] == ["India", "New Delhi", "Bharat"]
    assert set(records[0]) == {"eng_entity", "tgt_entity", "text"}
    # the release's layout: one line, not ASCII-escaped
    assert corpus.read_text(encoding="utf-8") == json.dumps(records, ensure_ascii=False)
    report = json.loads((tmp_path / "eacl" / "corpus_hi.build.json").read_text(encoding="utf-8"))
    assert report["counts"] == {"links": 4, "pairs": 3, "links_without_lead": 1, "repeated_lead_titles": 0}
    split = prepare_language(tmp_path / "eacl", "hi", FilterOptions(), val_fraction=0.0, test_fraction=0.0)
    assert [p.phrase for p in split.train] == ["भारत", "नई दिल्ली", "भारत"]
    tsv = tmp_path / "leads.tsv"
    tsv.write_text("tgt_title\tlead\nभारत\tभारत एक देश है।\nभारत\tदूसरा\n", encoding="utf-8")
    leads_map, repeated = builder.read_leads(tsv)
    assert leads_map == {"भारत": "भारत एक देश है।"} and repeated == 1


def test_builder_errors_name_the_line(tmp_path, capsys):
    links = tmp_path / "links.tsv"
    links.write_text("India\tभारत\nbroken line\n", encoding="utf-8")
    leads = tmp_path / "leads.tsv"
    leads.write_text("भारत\tभारत एक देश है।\n", encoding="utf-8")
    args = ["--language", "hi", "--links", str(links), "--leads", str(leads), "--out", str(tmp_path)]
    assert builder.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("error: ")
        and "links.tsv:2: expected 2 tab-separated fields" in err
        and "\n" not in err
    )


@pytest.mark.slow
def test_cli_report_only_prints_and_saves_the_table(tmp_path):
    """`eatlab-finetune finetune.report_only=true`: the filter table without loading any model."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "eatlab.cli.finetune", "tracking=none", f"paths.output_dir={out}",
           "finetune.report_only=true", "finetune.languages=[zh,ja]", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| zh | 200 |" in proc.stdout and "| ja | 200 |" in proc.stdout
    report = json.loads((tmp_path / "run" / "eacl_filter_report.json").read_text(encoding="utf-8"))
    assert list(report["languages"]) == ["zh", "ja"] and report["source"].startswith("in-repo sample")
    bad = subprocess.run(cmd[:-2] + ["finetune.languages=[ru]", f"hydra.run.dir={tmp_path / 'run2'}"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: finetune.languages: no EACL file for 'ru'")
