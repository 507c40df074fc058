"""Baselines on the same harness: one sweep puts EAT, direct LLM NER and translate-test side by side."""

from __future__ import annotations

import csv

import pytest
from test_sweep import eatlab_multirun, tiny_models_dir

from eatlab.data.record import Sentence
from eatlab.eat.methods.translate_test import fuzzy_align
from eatlab.eat.stages import SentenceResult


@pytest.mark.slow
def test_methods_sweep_and_one_report_table(tmp_path):
    from eatlab.cli.analyze import main as analyze

    sweep = eatlab_multirun(
        tmp_path / "o",
        tiny_models_dir(),
        "method=eat,direct_llm,translate_test",
        "language=zh",
        "data.limit=8",
    )
    for job in sorted(p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit()):
        assert (job / "metrics.json").is_file() and (job / "predictions.conll").is_file(), job
    assert analyze([str(sweep), "--no-roundtrip"]) in (0, None)
    with (sweep / "analysis/tables/method_comparison.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["method"] for r in rows} == {"direct_llm", "translate_test"}
    assert all(r["baseline"] == "method=eat" and r["p_value"] != "" for r in rows)
    html = (sweep / "analysis/report.html").read_text(encoding="utf-8")
    text = html.replace("<wbr>", "")  # the report may break long names after an underscore
    assert "direct_llm" in text and "translate_test" in text


def test_translate_test_aligns_transliterated_names():
    ru = Sentence(
        "ru-test-0", "ru", ["Владимир", "Путин", "посетил", "Берлин"], ["B-PER", "I-PER", "O", "B-LOC"]
    )
    res = SentenceResult(ru, ru.text)
    span, score = fuzzy_align("Vladimir Putin", res, 0.6)
    assert (span.start, span.end) == (0, 2) and score > 0.8
    span, _ = fuzzy_align("Berlin", res, 0.6)
    assert (span.start, span.end) == (3, 4)
    assert fuzzy_align("Tokyo", res, 0.6)[0] is None
    zh = Sentence(
        "zh-test-0",
        "zh",
        list("我在NASA工作"),
        ["O", "O", "B-ORG", "I-ORG", "I-ORG", "I-ORG", "O", "O"],
        True,
    )
    span, _ = fuzzy_align("NASA", SentenceResult(zh, zh.text), 0.6)
    assert (span.start, span.end) == (2, 6)
