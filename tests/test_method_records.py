"""Stages own their records (issue 23 item 8): EAT, direct LLM NER and translate-test write one layout per
artifact, through the shared stage functions, and the W&B tables build from each method's run.

The methods run end to end against the oracle server on 127.0.0.1 (eatlab.testing.fault_server), which answers
every prompt from the gold entities, so each method's placements are known exactly."""

from __future__ import annotations

import json
import time

import pytest

from eatlab.cli.run import run_eat
from eatlab.data.loader import select_sentences
from eatlab.eat.stages import BACKWARD_KEYS, FORWARD_KEYS, NER_KEYS
from eatlab.testing.fault_server import FaultServer, OracleModel

SENTENCES = select_sentences("zh", "test", limit=4).sentences
ORACLE = OracleModel.from_sentences(SENTENCES)
N_GOLD = sum(len(ORACLE.gold[s.text]) for s in SENTENCES)


def jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.open(encoding="utf-8")]


@pytest.fixture(scope="module")
def server():
    with FaultServer(ORACLE) as srv:
        yield srv


def run_method(compose, tmp_path, srv, method: str, *extra: str):
    overrides = [
        f"method={method}", "language=zh", "data.limit=4", "extractor=llm", "backend=openai",
        f"backend.base_url={srv.base_url}", "backend.concurrency=4", f"cache.path={tmp_path / 'c.sqlite'}",
        "alignment=free", *extra,
    ]  # fmt: skip
    run = tmp_path / method
    return run_eat(compose(overrides, run_dir=run), run), run / "artifacts"


@pytest.mark.parametrize("method", ["eat", "direct_llm", "translate_test"])
def test_every_method_writes_the_one_layout(compose, tmp_path, server, method):
    m, art = run_method(compose, tmp_path, server, method)
    backward, ner = jsonl(art / "backward.jsonl"), jsonl(art / "ner.jsonl")
    assert backward and all(list(r) == list(BACKWARD_KEYS) for r in backward)
    assert len(ner) == len(SENTENCES) and all(list(r) == list(NER_KEYS) for r in ner)
    assert all(list(r) == list(FORWARD_KEYS) for r in jsonl(art / "forward.jsonl"))
    # one backward record per entity found, placed or dropped (the metrics count the same drops)
    assert len(backward) == sum(len(r["entities"]) for r in ner)
    dropped = sum(r["span"] is None for r in backward)
    assert dropped == sum(m["failures"]["dropped_entities"].values())
    placed_by = {r["placed_by"] for r in backward if r["span"]}
    if method == "eat":  # the oracle's backward answers are the gold entities, copied
        assert placed_by == {"recovery"} and all(r["messages"] and r["messages_sha256"] for r in backward)
        assert all(r["text"] != "" and r["messages"] for r in ner)  # the LLM extractor's conversations
    if method == "direct_llm":  # listed in the source language: the listing conversation is the NER record's
        assert placed_by == {"recovery"} and all(r["messages"] is None for r in backward)
        assert [r["text"] for r in ner] == [s.text for s in SENTENCES]
        assert all(r["extractor"] == "direct_llm" and r["messages"] for r in ner)
        assert not (art / "forward.jsonl").read_text()
    if method == "translate_test":  # romanised English names, found by their sound in the Han source
        assert placed_by == {"fuzzy"} and all(r["messages"] is None for r in backward)
        assert all(0 < r["score"] <= 1 for r in backward if r["span"])
    for r in backward:
        assert (r["dropped_reason"] is None) == (r["span"] is not None)
        assert r["constraint_violated"] is None  # alignment=free: nothing to check
    if method != "translate_test":
        assert dropped == 0 and m["n_gold_entities"] == N_GOLD
        assert m["entity_f1"] == pytest.approx(ORACLE.ceiling)


@pytest.mark.slow
def test_wandb_tables_build_from_every_method(compose, tmp_path, server):
    """One offline W&B run per method: the sample table holds each stage's records as text."""
    from eatlab.tracking.offline import find_offline_runs, read_offline_run

    for method in ("eat", "direct_llm", "translate_test"):
        _, art = run_method(compose, tmp_path, server, method, "tracking=wandb", "tracking.mode=offline")
        (found,) = find_offline_runs(art.parent)
        deadline = time.monotonic() + 20
        run = read_offline_run(found)
        while run.exit_code is None and time.monotonic() < deadline:
            time.sleep(0.5)
            run = read_offline_run(found)
        logged = {k.split("/")[0]: v for row in run.history for k, v in row.items() if k.endswith("/_type")}
        assert logged == dict.fromkeys(("per_type", "stages", "failures", "sample_predictions"), "table-file")
        (table,) = found.glob("files/media/table/sample_predictions_*.table.json")
        table = json.loads(table.read_text(encoding="utf-8"))
        rows = [dict(zip(table["columns"], row)) for row in table["data"]]
        assert [r["sentence_id"] for r in rows] == [s.id for s in SENTENCES], method
        assert all(r["backward_conversations"].startswith("--- ") for r in rows if r["alignments"]), method
        assert all(r["ner_conversation"] for r in rows), method  # the LLM extractor's, or the direct listing


def test_sample_text_of_each_layout(compose, tmp_path, server):
    from eatlab.tracking.wandb_tables import sample_conversations

    ids = {s.id for s in SENTENCES}
    texts = {}
    for method in ("eat", "direct_llm", "translate_test"):
        _, art = run_method(compose, tmp_path, server, method)
        texts[method] = sample_conversations(art.parent, ids)
    eat, direct, tt = texts["eat"], texts["direct_llm"], texts["translate_test"]
    assert set(eat["forward"]) == set(eat["ner"]) == ids and "assistant:" in eat["backward"]["zh-test-0"]
    assert direct["forward"] == {} and set(direct["ner"]) == ids
    assert (
        "(recovery [" in direct["backward"]["zh-test-0"]
        and "assistant:" not in direct["backward"]["zh-test-0"]
    )
    assert "(fuzzy [" in tt["backward"]["zh-test-0"]
