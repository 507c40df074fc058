"""HTTP backend and model faults through full pipeline runs against a real server on 127.0.0.1 that injects them.

The server (eatlab.testing.fault_server) answers as an oracle from the gold entities, so a clean run scores
near 1.0 and every fault's effect is exact: transient faults are cured by the retries (same result as the
clean run), persistent ones fail exactly the samples they hit (recorded with the reason, the rest untouched),
a server going away mid-run ends in counted failures instead of a crash, and model faults are counted.
"""

from __future__ import annotations

import json
import secrets
import unicodedata

import pytest

from eatlab.cli.run import run_eat
from eatlab.data.loader import select_sentences
from eatlab.testing.fault_server import HTTP_FAULTS, FaultRule, FaultServer, OracleModel

SECRET = "sk-" + secrets.token_hex(20)  # made at run time: it is in no file, git.diff included
SENTENCES = select_sentences("zh", "test", limit=8).sentences
TEXTS = [s.text for s in SENTENCES]
ORACLE = OracleModel.from_sentences(SENTENCES)
N_GOLD = [len(ORACLE.gold[t]) for t in TEXTS]


def overrides(srv: FaultServer, cache, *extra: str) -> list[str]:
    return ["language=zh", "data.limit=8", "extractor=llm", "backend=openai", f"backend.base_url={srv.base_url}",
            "backend.concurrency=4", "backend.max_retries=2", "backend.backoff_s=0.01", "backend.timeout_s=2",
            f"cache.path={cache}", *extra]  # fmt: skip


def attribution(run_dir) -> dict[str, dict]:
    return {r["sentence_id"]: r for r in map(json.loads, (run_dir / "artifacts/attribution.jsonl").open())}


def jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.open()]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The clean run (no fault), composed like the `compose` fixture does."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from eatlab.paths import CONF_DIR

    tmp = tmp_path_factory.mktemp("clean")
    with FaultServer(ORACLE) as srv:
        base = [f"paths.output_dir={tmp / 'out'}", f"paths.run_dir={tmp / 'run'}", "tracking=none"]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=base + overrides(srv, tmp / "cache.sqlite"))
        OmegaConf.resolve(cfg)
        m = run_eat(cfg, tmp / "run")
    assert m["llm_errors"] == 0 and m["entity_f1"] > 0.9
    return m, tmp / "run"


@pytest.mark.slow
def test_transient_http_faults_are_retried_to_the_clean_result(compose, tmp_path, clean):
    """429, 500, 503, malformed JSON, no choices, dropped connections and timeouts on first attempts only."""
    ref, ref_dir = clean
    kinds = [k for k in HTTP_FAULTS if k != "timeout"]
    slow = {ORACLE.english(TEXTS[0]), ORACLE.english(TEXTS[1])}  # their NER requests time out once
    rules = [
        FaultRule("timeout", when=lambda r: r.stage == "ner" and r.sentence in slow, attempts=1, delay_s=1.5)
    ]
    # each kind on the first attempt of about 1 request in 8, chosen by content (deterministic)
    rules += [
        FaultRule(k, when=lambda r, i=i: int(r.body_sha, 16) % 8 == i, attempts=1)
        for i, k in enumerate(kinds)
    ]
    with FaultServer(ORACLE, rules) as srv:  # wall time (target 60 s): `eatlab-bench --timings`
        m = run_eat(compose(overrides(srv, tmp_path / "c.sqlite", "backend.timeout_s=0.5")), tmp_path / "run")
    faulted = [r for r in srv.requests if r.fault]
    assert {r.fault for r in faulted} == set(HTTP_FAULTS)
    assert sum(r.fault == "timeout" for r in faulted) == 2  # the two slow NER requests, each timed out once
    assert len(srv.requests) == m["llm_calls"] + len(faulted)  # one retry per fault, nothing else
    assert m["llm_errors"] == 0 and m["counts"]["failed_forward"] == m["counts"]["failed_backward"] == 0
    for key in ("entity_f1", "per_type", "failures", "llm_calls"):
        assert m[key] == ref[key], key
    assert (tmp_path / "run/predictions.conll").read_bytes() == (ref_dir / "predictions.conll").read_bytes()


@pytest.mark.slow
def test_persistent_faults_fail_exactly_their_samples_and_a_rerun_retries_only_them(
    compose, tmp_path, clean, capsys, monkeypatch
):
    """Forward of sentence 2 always 503, NER of sentence 3 always dropped, backward of sentence 5 always malformed.

    Also: the API key (a secret in OPENAI_API_KEY) reaches the server but never the run dir, W&B or the cache.
    """
    ref, ref_dir = clean
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    rules = [
        FaultRule("503", when=lambda r: r.stage == "forward" and r.sentence == TEXTS[2]),
        FaultRule("drop", when=lambda r: r.stage == "ner" and r.sentence == ORACLE.english(TEXTS[3])),
        FaultRule("malformed", when=lambda r: r.stage == "backward" and r.sentence == TEXTS[5]),
    ]
    cache, run = tmp_path / "c.sqlite", tmp_path / "run"
    with FaultServer(ORACLE, rules) as srv:
        m = run_eat(compose(overrides(srv, cache, "tracking=wandb")), run)
    assert {r.authorization for r in srv.requests} == {f"Bearer {SECRET}"}
    c = m["counts"]
    assert (c["failed_forward"], c["failed_ner"], c["failed_backward"]) == (1, 1, N_GOLD[5])
    assert m["llm_errors"] == 1 + 1 + N_GOLD[5]
    # each failed request was tried 1 + max_retries times
    assert sum(r.fault is not None for r in srv.requests) == 3 * m["llm_errors"]
    out = capsys.readouterr().out
    assert (
        f"failed requests (after retries): forward 1, ner 1, backward {N_GOLD[5]}; LLM errors {m['llm_errors']}"
        in out
    )
    # the failed samples are recorded with the reason; every other sentence is exactly as in the clean run
    fwd = {r["sentence_id"]: r for r in jsonl(run / "artifacts/forward.jsonl")}
    assert "HTTP 503" in fwd["zh-test-2"]["error"] and all(
        fwd[f"zh-test-{i}"]["error"] is None for i in (0, 1, 3)
    )
    bwd = [r for r in jsonl(run / "artifacts/backward.jsonl") if r["sentence_id"] == "zh-test-5"]
    assert len(bwd) == N_GOLD[5] and all(
        r["dropped_reason"] == "request_failed" and "malformed response body" in r["error"] for r in bwd
    )
    got, want = attribution(run), attribution(ref_dir)
    for i, s in enumerate(SENTENCES):
        if i in (2, 3, 5):
            assert got[s.id]["predicted"] == [] and N_GOLD[i] > 0
        else:
            assert got[s.id] == want[s.id]
    assert m["entity_recall"] < ref["entity_recall"]
    # no secret anywhere on disk: run dir (configs, logs, artifacts, W&B offline run) and the cache
    assert (run / "wandb").is_dir()
    for path in [*run.rglob("*"), *tmp_path.glob("c.sqlite*")]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    # re-running the same command retries only what failed, and gets the clean result
    rows = _rows(cache)
    with FaultServer(ORACLE) as srv:
        m2 = run_eat(compose(overrides(srv, cache)), tmp_path / "run2")
    assert m2["llm_calls"] == ref["llm_calls"] - rows and m2["llm_errors"] == 0
    for key in ("entity_f1", "per_type", "failures"):
        assert m2[key] == ref[key], key


def _rows(cache) -> int:
    import sqlite3

    with sqlite3.connect(cache) as conn:
        return conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]


def test_server_gone_mid_run_gives_counted_failures_quickly(compose, tmp_path, capsys):
    """The server answers 30 requests, then closes its socket: connection refused for the rest of the run."""
    with FaultServer(ORACLE, shutdown_after=30) as srv:  # wall time (target 60 s): `eatlab-bench --timings`
        m = run_eat(
            compose(overrides(srv, tmp_path / "c.sqlite", "backend.backoff_s=0.05")), tmp_path / "run"
        )
    assert sum(r.answered for r in srv.requests) == 30
    assert m["llm_errors"] > 0 and m["counts"]["failed_forward"] + m["counts"]["failed_backward"] > 0
    errors = [r["error"] for r in jsonl(tmp_path / "run/artifacts/forward.jsonl") if r.get("error")]
    errors += [r["error"] for r in jsonl(tmp_path / "run/artifacts/backward.jsonl") if r.get("error")]
    assert errors and all("connection error" in e or "server down" in e for e in errors)
    assert "failed requests (after retries)" in capsys.readouterr().out
    # 24 forward and 6 of the 8 NER requests were answered; every later request failed, none hung the run
    c = m["counts"]
    assert (c["failed_forward"], c["failed_ner"]) == (0, 2)
    n_backward = len(jsonl(tmp_path / "run/artifacts/backward.jsonl"))
    assert c["failed_backward"] == n_backward == len(errors) and m["llm_errors"] == 2 + n_backward


@pytest.mark.slow
def test_model_faults_are_counted_and_never_crash(compose, tmp_path, clean):
    """Empty, maximum-length (finish_reason length), wrong-script and control-character answers."""
    ref, _ = clean

    def final(stage, i):
        return lambda r: r.stage == stage and r.final and r.sentence == TEXTS[i]

    rules = [
        FaultRule("empty", when=final("forward", 1)),
        FaultRule("length", when=final("forward", 6)),
        FaultRule("wrong_script", when=final("backward", 4)),
        FaultRule("control", when=final("backward", 7)),
        FaultRule("control", when=final("forward", 0)),
    ]
    run = tmp_path / "run"
    with FaultServer(ORACLE, rules) as srv:
        m = run_eat(compose(overrides(srv, tmp_path / "c.sqlite")), run)
    c, per_stage = m["counts"], m["answer_faults"]
    assert c["empty_answers"] >= 1 and per_stage["forward"]["empty_answers"] >= 1
    assert c["truncated_answers"] >= 1 and per_stage["forward"]["truncated_answers"] >= 1
    assert per_stage["backward"]["wrong_script_answers"] == N_GOLD[4]
    assert per_stage["backward"]["control_chars_stripped"] == N_GOLD[7]
    assert per_stage["forward"]["control_chars_stripped"] == 1
    assert m["llm_errors"] == 0
    # control characters never reach the artifacts; the stripped answers are the oracle's, so they still align
    for name in ("forward", "ner", "backward", "attribution"):
        for rec in jsonl(run / f"artifacts/{name}.jsonl"):
            text = json.dumps(rec, ensure_ascii=False)
            assert not any(unicodedata.category(ch) == "Cc" for ch in text), (name, rec["sentence_id"])
    got = attribution(run)
    assert got["zh-test-7"]["predicted"] == attribution(clean[1])["zh-test-7"]["predicted"]
    assert got["zh-test-0"]["english"] == ORACLE.english(TEXTS[0])
    assert got["zh-test-1"]["english"] == "" and got["zh-test-1"]["predicted"] == []
    assert all(p[2] != "correct" for p in got["zh-test-4"]["predicted"]) or not got["zh-test-4"]["predicted"]
    assert m["entity_f1"] < ref["entity_f1"]


def test_a_run_where_most_requests_failed_is_a_failed_job(compose, tmp_path):
    """The server answers 3 requests, then is gone: more than half of the requests fail, so the job fails
    (exit status 1) with error.json naming the count and the last error; metrics.json and
    the 3 cached answers stay for the re-run, and the run dir reads as failed."""
    from eatlab.errors import RequestsFailed
    from eatlab.rundir import FAILED, RunDir

    run, cache = tmp_path / "run", tmp_path / "c.sqlite"
    with FaultServer(ORACLE, shutdown_after=3) as srv, pytest.raises(RequestsFailed) as info:
        run_eat(compose(overrides(srv, cache, "backend.backoff_s=0.01", "backend.max_retries=0")), run)
    assert info.value.exit_code == 1
    err = json.loads((run / "error.json").read_text(encoding="utf-8"))
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert err["error_type"] == "RequestsFailed" and err["failed_requests"] == m["llm_errors"] == 8
    assert err["requests"] == m["llm_calls"] == 11 and "connection error" in err["last_error"]
    assert err["message"].startswith("8 of 11 model requests failed after their retries (more than ")
    assert _rows(cache) == 3 and RunDir(run).status == FAILED


def test_the_oracle_knows_the_one_gold_entity_no_answer_can_place():
    """Why a clean run scores 0.9375, not the 1.0 the oracle's docstring promised on f4a7be8: answers name
    entities, not positions, and zh-test-6's gold tags the second of seven 辛巴威 (the first is inside the
    untagged title 辛巴威議會), so recovery (the earliest free occurrence) places it on the first."""
    from eatlab.data.bio import Span, tags_to_spans

    off = {s.id: (tags_to_spans(s.tags), ORACLE.placed[s.text]) for s in SENTENCES}
    off = {k: v for k, v in off.items() if v[0] != v[1]}
    assert list(off) == ["zh-test-6"]
    gold, placed = off["zh-test-6"]
    assert set(gold) - set(placed) == {Span(12, 15, "LOC")} and set(placed) - set(gold) == {Span(3, 6, "LOC")}
    assert TEXTS[6][3:6] == TEXTS[6][12:15] == "辛巴威"
    assert ORACLE.ceiling == 0.9375  # 15 of 16 gold found, 15 of 16 predicted right


@pytest.mark.slow
def test_a_clean_run_predicts_what_the_oracle_places_and_scores_its_ceiling(clean):
    """Every sentence's predicted spans are the oracle's: F1 1.0 on the 7 sentences it can place whole."""
    from eatlab.data.bio import tags_to_spans
    from eatlab.data.conll import read_conll
    from eatlab.eval.entity import entity_counts, entity_scores

    m, run_dir = clean
    predicted = read_conll(run_dir / "predictions.conll", "zh")  # token gold pred: the last column
    assert [p.tokens for p in predicted] == [s.tokens for s in SENTENCES]
    for p, s in zip(predicted, SENTENCES):
        assert sorted(tags_to_spans(p.tags)) == sorted(ORACLE.placed[s.text]), s.id
    assert m["entity_f1"] == ORACLE.ceiling == 0.9375
    others = [(s.tags, p.tags) for p, s in zip(predicted, SENTENCES) if s.id != "zh-test-6"]
    assert entity_scores(entity_counts(*zip(*others)))["entity_f1"] == 1.0
