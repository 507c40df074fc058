"""Replaying the shared transcripts: `eatlab-cache import`, then the client answers every recorded question from
the cache with 0 model calls and no weights; export and re-import restore the same cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from eatlab.cli.cache import main as cache_main
from eatlab.errors import DataError
from eatlab.llm.base import GenerationSettings
from eatlab.llm.cache import ResponseCache
from eatlab.llm.client import LLMClient
from eatlab.llm.conversation import run_conversations, scripted
from eatlab.llm.factory import backend_identity, build_client
from eatlab.llm.transcripts import read_transcript_calls
from eatlab.paths import CONF_DIR

MODEL_ID = "qwen2.5-coder-0.5b-instruct-q4km"  # named in ../shared/data/llm_transcripts/README.md


def _no_weights():
    raise AssertionError("the backend was created: a fully cached run must not need a model")


@pytest.fixture(scope="module")
def files(transcripts_dir) -> list[Path]:
    found = sorted(transcripts_dir.glob("*.jsonl"))
    assert len(found) == 8
    return found


@pytest.fixture(scope="module")
def records(files) -> list[dict]:
    return [json.loads(line) for f in files for line in f.read_text(encoding="utf-8").splitlines() if line]


@pytest.fixture(scope="module")
def imported(files, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cache") / "responses.sqlite"
    assert cache_main(["import", *map(str, files), "--model", MODEL_ID, "--cache", str(path)]) == 0
    return path


def _replay_config(cache_path: Path):
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        return compose(
            "config",
            overrides=[
                f"model={MODEL_ID}",
                "backend=hf",
                "generation=greedy",
                f"cache.path={cache_path}",
                "cache.mode=readonly",
            ],  # fmt: skip
        )


def test_import_counts_and_is_idempotent(imported, files, records, capsys):
    assert len(records) == 107
    assert len(ResponseCache(imported, mode="readonly")) == 321
    assert cache_main(["import", *map(str, files), "--model", MODEL_ID, "--cache", str(imported)]) == 0
    assert "(0 new, 321 already cached)" in capsys.readouterr().out
    assert len(ResponseCache(imported, mode="readonly")) == 321
    assert cache_main(["stats", "--cache", str(imported)]) == 0
    out = capsys.readouterr().out
    assert MODEL_ID in out and "321" in out and "forward,backward" in out


def test_recorded_conversations_replay_from_cache_without_weights(imported, records):
    cfg = _replay_config(imported)
    kind, model_key = backend_identity(cfg)
    assert (kind, model_key) == ("hf", MODEL_ID)
    client = LLMClient(_no_weights, ResponseCache(imported, mode="readonly"), kind=kind, model_key=model_key)
    for stage in ("forward", "backward"):
        recs = [r for r in records if r["kind"] == stage]
        budgets = recs[0]["generation"]["max_new_tokens_by_round"]
        assert all(r["generation"]["max_new_tokens_by_round"] == budgets for r in recs)
        prefixes = [r["messages"][:3] for r in recs]
        rounds = [[r["messages"][3 + 2 * k]["content"] for r in recs] for k in range(3)]
        direction, values = scripted(rounds, budgets)
        results = run_conversations(client, prefixes, direction, values, {"do_sample": False}, stage)
        for r, res in zip(recs, results, strict=True):
            assert res.messages == r["messages"]  # every recorded answer came back, in place
        assert all(rep.cached and rep.error is None for res in results for rep in res.replies)
    counters = client.counters_dict()
    assert counters["total"]["llm_calls"] == 0
    assert counters["total"]["llm_cache_hits"] == 321
    assert counters["forward"]["llm_cache_hits"] == 64 * 3
    assert not client.backend_created


def test_build_client_from_config_serves_the_transcripts(imported, records):
    client = build_client(_replay_config(imported))
    rec = records[0]
    (reply,) = client.chat([rec["messages"][:4]], GenerationSettings(max_new_tokens=200))
    assert reply.text == rec["messages"][4]["content"]
    assert client.counters_dict()["total"]["llm_calls"] == 0 and not client.backend_created


def test_export_then_import_restores_the_cache(imported, tmp_path):
    out = tmp_path / "export.jsonl"
    assert cache_main(["export", "--out", str(out), "--model", MODEL_ID, "--cache", str(imported)]) == 0
    exported = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(exported) == 107  # one record per conversation
    assert {r["kind"] for r in exported} == {"forward", "backward"}
    assert all(len(r["messages"]) == 9 and r["first_reply_index"] == 4 for r in exported)
    again = tmp_path / "again.sqlite"
    assert cache_main(["import", str(out), "--model", MODEL_ID, "--cache", str(again)]) == 0
    a = {e.key: e.reply.text for e in ResponseCache(imported, mode="readonly").entries()}
    b = {e.key: e.reply.text for e in ResponseCache(again, mode="readonly").entries()}
    assert a == b and len(a) == 321


def test_bad_transcript_line_is_reported_with_its_line(tmp_path, records, capsys):
    bad = tmp_path / "bad.jsonl"
    rec = dict(records[0])
    rec["generation"] = {"do_sample": False}
    bad.write_text(json.dumps(records[1]) + "\n" + json.dumps(rec) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:2: .*max_new_tokens_by_round"):
        list(read_transcript_calls(bad))
    assert cache_main(["import", str(bad), "--model", "x", "--cache", str(tmp_path / "c.sqlite")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert len(ResponseCache(tmp_path / "c.sqlite", mode="readonly")) == 0  # nothing half-imported
