"""Check that the constraint fired (issue 24 item 4): a server that ignores the grammar parameter answers freely
with a 200; eatlab checks every constrained answer when it comes back, counts the violations in metrics.json,
flags them in backward.jsonl and names the backend and parameter in a warning.

End to end through `backend=openai` against the fault server on 127.0.0.1 (eatlab.testing.fault_server), whose
oracle copies the gold entities (always substrings) unless `ignore_grammar` makes it drop the grammar and echo
the English phrase, as free answers often do."""

from __future__ import annotations

import json
import logging

import pytest

from eatlab.cli.run import run_eat
from eatlab.data.loader import select_sentences
from eatlab.eat.stages import within_constraint
from eatlab.testing.fault_server import FaultRule, FaultServer, OracleModel

SENTENCES = select_sentences("zh", "test", limit=4).sentences
ORACLE = OracleModel.from_sentences(SENTENCES)


def overrides(srv: FaultServer, tmp_path, *extra: str) -> list[str]:
    return ["language=zh", "data.limit=4", "extractor=llm", "backend=openai", f"backend.base_url={srv.base_url}",
            "backend.concurrency=4", f"cache.path={tmp_path / 'c.sqlite'}", "alignment=constrained",
            *extra]  # fmt: skip


def final_backward(srv: FaultServer) -> list:
    return [r for r in srv.requests if r.stage == "backward" and r.final]


def test_the_check_allows_rule_3_and_nothing_else():
    text = "أدريان كنوب (مواليد 2 يوليو 1968)"
    assert within_constraint(" أدريان كنوب", text)  # rule 3: one leading space on the first token
    assert within_constraint("كنوب", text)
    assert not within_constraint("Adrian Knup", text)
    assert not within_constraint("", text) and not within_constraint("  ", text)
    assert within_constraint(
        "黃百\ufffd", "監製黃百鳴", truncated=True
    )  # cut inside a character at the budget
    assert not within_constraint("黃百\ufffd", "監製黃百鳴")


def test_an_honoured_grammar_has_no_violation(compose, tmp_path):
    with FaultServer(ORACLE) as srv:
        m = run_eat(compose(overrides(srv, tmp_path, "backend.constraint_param=grammar")), tmp_path / "run")
    assert final_backward(srv) and all("grammar" in r.params for r in final_backward(srv))
    assert m["counts"]["constraint_violations"] == 0 and m["counts"]["unconstrained_answers"] == 0
    back = [json.loads(x) for x in (tmp_path / "run/artifacts/backward.jsonl").open()]
    assert back and {r["constraint_violated"] for r in back} == {False}


@pytest.mark.parametrize("param", ["grammar", "structured_outputs"])
def test_an_ignored_grammar_is_counted_flagged_and_named(compose, tmp_path, caplog, param):
    rule = FaultRule("ignore_grammar", when=lambda r: r.stage == "backward" and r.final)
    with caplog.at_level(logging.WARNING), FaultServer(ORACLE, [rule]) as srv:
        m = run_eat(compose(overrides(srv, tmp_path, f"backend.constraint_param={param}")), tmp_path / "run")
    finals = final_backward(srv)
    assert finals and all(r.fault == "ignore_grammar" and param in r.params for r in finals)
    # the echoed English phrase is outside the Han sentence unless the entity is written the same in both
    expected = sum(r.phrase not in r.sentence for r in finals)
    assert expected > 0
    assert m["counts"]["constraint_violations"] == expected
    back = [json.loads(x) for x in (tmp_path / "run/artifacts/backward.jsonl").open()]
    assert sum(r["constraint_violated"] is True for r in back) == expected
    warning = [r.getMessage() for r in caplog.records if "constraint_violations" in r.getMessage()]
    assert len(warning) == 1
    assert "backend=openai" in warning[0] and f"backend.constraint_param={param}" in warning[0]
    assert f"{expected} of {len(finals)} constrained backward answers" in warning[0]
    # the same answers from the cache (the server gone, no backend built): checked and named all the same
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = run_eat(
            compose(overrides(srv, tmp_path, f"backend.constraint_param={param}")), tmp_path / "r2"
        )
    assert again["llm_calls"] == 0 and again["counts"]["constraint_violations"] == expected
    assert any(f"backend.constraint_param={param}" in r.getMessage() for r in caplog.records)


def test_answers_reported_free_are_not_checked_twice(compose, tmp_path):
    """Without backend.constraint_param the backend says it decoded freely (unconstrained_answers): no
    violation is counted for those answers, whatever they are."""
    rule = FaultRule("ignore_grammar", when=lambda r: r.stage == "backward" and r.final)
    with FaultServer(ORACLE, [rule]) as srv:
        m = run_eat(compose(overrides(srv, tmp_path)), tmp_path / "run")
    assert m["counts"]["unconstrained_answers"] == len(final_backward(srv))
    assert m["counts"]["constraint_violations"] == 0


@pytest.mark.slow
def test_the_hf_constraint_passes_its_own_check(compose, tmp_path):
    """backend=hf (tiny model): the logits processor's answers are all within their sentences."""
    cfg = compose(["language=ja", "data.limit=3", "extractor=spacy", "alignment=constrained"])
    m = run_eat(cfg, tmp_path / "run")
    back = [json.loads(x) for x in (tmp_path / "run/artifacts/backward.jsonl").open()]
    assert back and {r["constraint_violated"] for r in back if not r["error"]} == {False}
    assert m["counts"]["constraint_violations"] == 0
