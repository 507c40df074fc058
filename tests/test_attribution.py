"""Failure attribution on constructed sentences (issue 22 item 5): a prediction on the gold span with the wrong
type is an English NER error (`ner_wrong_type`); only answers dropped or placed elsewhere are misaligned."""

from __future__ import annotations

import json

from eatlab.data.bio import Span
from eatlab.data.record import Sentence
from eatlab.eat.attribution import GOLD_CLASSES, attribute_sentence, summarize
from eatlab.eat.evaluate import evaluate_results
from eatlab.eat.stages import SentenceResult

# "Иван Петров живёт в Москве ." : PER on tokens 0-1, LOC on token 4
TOKENS = ["Иван", "Петров", "живёт", "в", "Москве", "."]
TAGS = ["B-PER", "I-PER", "O", "O", "B-LOC", "O"]
PER, LOC = Span(0, 2, "PER"), Span(4, 5, "LOC")
ENGLISH = "Ivan Petrov lives in Moscow."


def test_wrong_type_on_the_gold_span_is_an_ner_error():
    gold, pred = attribute_sentence([PER], [Span(0, 2, "ORG")], ENGLISH, [("ORG", "Ivan Petrov")], 0)
    assert (gold, pred) == (["ner_wrong_type"], ["wrong_type"])


def test_an_answer_placed_with_the_wrong_boundary_is_misaligned():
    gold, pred = attribute_sentence([PER], [Span(1, 2, "PER")], ENGLISH, [("PER", "Ivan Petrov")], 0)
    assert (gold, pred) == (["misaligned_backward"], ["wrong_boundary"])


def test_a_dropped_answer_is_charged_as_misaligned():
    gold, pred = attribute_sentence([LOC], [], ENGLISH, [("LOC", "Moscow")], 1)
    assert (gold, pred) == (["misaligned_backward"], [])


def test_the_wrong_type_does_not_use_up_a_dropped_answer():
    """The PER span came back with the NER's wrong type; the one dropped answer is charged to the LOC."""
    extracted = [("ORG", "Ivan Petrov"), ("LOC", "Moscow")]
    gold, pred = attribute_sentence([PER, LOC], [Span(0, 2, "ORG")], ENGLISH, extracted, 1)
    assert (gold, pred) == (["ner_wrong_type", "misaligned_backward"], ["wrong_type"])


def test_wrong_type_wins_over_an_overlapping_misplaced_span():
    gold, _ = attribute_sentence([PER], [Span(0, 2, "LOC"), Span(1, 3, "PER")], ENGLISH, [], 0)
    assert gold == ["ner_wrong_type"]


def test_missed_by_ner_and_lost_in_translation():
    gold, _ = attribute_sentence([PER, LOC], [], ENGLISH, [], 0)  # two uncovered names in the English
    assert gold == ["missed_by_ner", "missed_by_ner"]
    gold, _ = attribute_sentence([PER, LOC], [], "He lives there.", [], 0)
    assert gold == ["lost_in_translation", "lost_in_translation"]


def test_summary_has_every_class():
    s = summarize(["found", "ner_wrong_type", "ner_wrong_type"], ["correct", "wrong_type"])
    assert list(s["gold"]) == list(GOLD_CLASSES)
    assert s["gold"] == {
        "found": 1,
        "lost_in_translation": 0,
        "missed_by_ner": 0,
        "ner_wrong_type": 2,
        "misaligned_backward": 0,
    }


def test_metrics_and_attribution_artifact(tmp_path):
    """Through the scorer: the NER's wrong type is counted as such in metrics and in attribution.jsonl."""
    sentence = Sentence("ru-test-0", "ru", TOKENS, TAGS)
    result = SentenceResult(sentence, sentence.text, english=ENGLISH)
    result.entities = [("ORG", "Ivan Petrov"), ("LOC", "Moscow")]
    result.alignments = [
        {
            "type": "ORG",
            "phrase": "Ivan Petrov",
            "answer": "Иван Петров",
            "span": Span(0, 2, "ORG"),
            "reason": None,
        },
        {"type": "LOC", "phrase": "Moscow", "answer": "Moscow", "span": None, "reason": "no_match"},
    ]
    result.pred_spans = [Span(0, 2, "ORG")]
    out = evaluate_results([result], "ru", tmp_path)
    assert out["failures"]["gold"]["ner_wrong_type"] == 1
    assert out["failures"]["gold"]["misaligned_backward"] == 1
    assert out["failures"]["dropped_entities"] == {"no_match": 1}
    (rec,) = [
        json.loads(x) for x in (tmp_path / "artifacts" / "attribution.jsonl.partial").read_text().splitlines()
    ]
    assert rec["gold"] == [["Иван Петров", "PER", "ner_wrong_type"], ["Москве", "LOC", "misaligned_backward"]]
