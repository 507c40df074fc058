"""Scoring English extractors: entity strings placed on tokens, the oracle scores 1, the CLI prints the table."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from eatlab.data.bio import Span
from eatlab.data.conll import read_conll
from eatlab.data.loader import split_path
from eatlab.data.record import Sentence
from eatlab.extractors.base import EntityList, Extractor
from eatlab.extractors.evaluate import entity_spans, entity_tags, evaluate_extractor
from eatlab.paths import REPO_DIR

TOKENS = ["John", "Smith", "met", "John", "in", "New", "York", ",", "not", "in", "York", "."]


class GoldExtractor(Extractor):
    """Lists each sentence's gold entities as text, in sentence order: an upper bound for the placement."""

    name = "gold"

    def __init__(self, sentences: list[Sentence]):
        from eatlab.data.bio import tags_to_spans

        self.by_text = {
            s.text: [(sp.type, " ".join(s.tokens[sp.start : sp.end])) for sp in tags_to_spans(s.tags)]
            for s in sentences
        }

    def extract(self, sentences: list[str]) -> list[EntityList]:
        return [self.by_text[s] for s in sentences]


def test_first_free_occurrence_in_listed_order():
    spans, unplaced = entity_spans(TOKENS, [("PER", "John Smith"), ("PER", "John"), ("LOC", "York")])
    assert spans == [Span(0, 2, "PER"), Span(3, 4, "PER"), Span(6, 7, "LOC")]
    assert unplaced == []
    # "New York" listed after "York": York took the first free York, the one inside New York
    spans, unplaced = entity_spans(TOKENS, [("LOC", "York"), ("LOC", "New York")])
    assert spans == [Span(6, 7, "LOC")] and unplaced == [("LOC", "New York")]


def test_whitespace_insensitive_match_on_token_edges_and_unplaced():
    tokens = ["He", "visited", "St.", "Lawrence", "River", "and", "Sony", "'s", "office", "."]
    tags, unplaced = entity_tags(tokens, [("LOC", "St.Lawrence River"), ("ORG", "Sony's"), ("ORG", "Apple")])
    assert tags == ["O", "O", "B-LOC", "I-LOC", "I-LOC", "O", "B-ORG", "I-ORG", "O", "O"]
    assert unplaced == [("ORG", "Apple")]
    # a string that ends inside a token is not placed (no partial tokens)
    assert entity_tags(tokens, [("LOC", "Lawr")])[1] == [("LOC", "Lawr")]


def test_gold_extractor_scores_one_on_the_sample():
    sentences = read_conll(split_path(None, "en", "test"), "en", "test")
    result = evaluate_extractor(GoldExtractor(sentences), sentences, n_boot=10)
    assert result["scores"]["entity_f1"] == 1.0
    assert result["counts"]["n_unplaced_entities"] == 0
    assert [s.tags for s in sentences] == result["pred_tags"]


def test_gold_extractor_on_real_english_test(wikiann_dir):
    sentences = read_conll(wikiann_dir / "en" / "test.txt", "en", "test")[:2000]
    result = evaluate_extractor(GoldExtractor(sentences), sentences, n_boot=10)
    # repeated entity strings can land on an earlier, unlabelled occurrence: rare, never more than 1%
    assert result["scores"]["entity_f1"] >= 0.99
    assert result["scores"]["n_sentences"] == 2000


def test_spacy_on_the_sample_through_the_config(compose, tmp_path):
    from eatlab.cli.extractor import evaluate_from_config

    cfg = compose(["extractor=spacy", "data.limit=null"])
    metrics = evaluate_from_config(cfg, tmp_path / "eval")
    assert metrics["n_sentences"] == 100 and metrics["language"] == "en"
    assert 0.1 < metrics["entity_f1"] < 0.9
    assert set(metrics["per_type"]) >= {"PER", "ORG", "LOC"}
    assert metrics["extractor"]["version"].startswith("core_web_sm")
    saved = json.loads((tmp_path / "eval" / "extractor_metrics.json").read_text())
    assert saved["entity_f1"] == metrics["entity_f1"]
    pred = read_conll(tmp_path / "eval" / "predictions.conll", "en", "test")
    assert len(pred) == 100


def _cli(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    code = "from eatlab.cli.extractor import eval_main; eval_main()"
    env = {**os.environ, "EATLAB_OUTPUTS": str(tmp_path / "outputs"), "OMP_NUM_THREADS": "1"}
    env.pop("EATLAB_DATA", None)
    return subprocess.run(
        [sys.executable, "-c", code, "tracking=none", *args],
        cwd=REPO_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_eval_cli_prints_the_per_type_table(tmp_path):
    proc = _cli(["extractor=spacy", "data.limit=20"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "extractor=spacy on English WikiANN test (20 sentences)" in proc.stdout
    for word in ("PER", "ORG", "LOC", "micro", "entities listed"):
        assert word in proc.stdout
    runs = list((tmp_path / "outputs" / "runs" / "eval_extractor").glob("*/extractor_metrics.json"))
    assert len(runs) == 1


@pytest.mark.slow  # a subprocess: ~8 s
def test_eval_cli_one_line_error_without_a_checkpoint(tmp_path):
    proc = _cli(["extractor=flan_t5"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: extractor.checkpoint")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("checkpoint", ["outputs/extractors/none/best", "/nonexistent/model"])
def test_missing_checkpoint_folder_is_a_config_error(checkpoint):
    from eatlab.errors import ConfigError
    from eatlab.extractors.flan_t5 import FlanT5Extractor

    with pytest.raises(ConfigError, match="no such folder"):
        FlanT5Extractor(checkpoint).extract(["A sentence ."])


@pytest.mark.slow
def test_llm_extractor_through_the_eval_config(compose, tmp_path):
    """The run's own LLM as the extractor (the tiny smoke model here): the same scoring, its call counters."""
    from eatlab.cli.extractor import evaluate_from_config

    cfg = compose(["extractor=llm", "data.limit=2", "model=tiny"])
    metrics = evaluate_from_config(cfg, tmp_path / "eval")
    assert metrics["n_sentences"] == 2 and metrics["extractor"] == {"name": "llm"}
    ner = metrics["llm"]["ner"]
    assert ner["llm_calls"] + ner["llm_cache_hits"] == 2  # one NER conversation per sentence
