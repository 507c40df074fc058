"""The SQLite response cache: keys, round trips, modes, and several processes writing one file at once."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3

import pytest

from eatlab.errors import ConfigError
from eatlab.llm.base import GenerationSettings, Reply
from eatlab.llm.cache import ResponseCache, cache_key

CONV = [{"role": "system", "content": "sys"}, {"role": "user", "content": "Übersetze: 東京"}]
GREEDY = GenerationSettings(max_new_tokens=16)


def test_key_covers_engine_model_messages_settings():
    base = cache_key("hf", "m", CONV, GREEDY)
    assert base == cache_key("hf", "m", [dict(m) for m in CONV], GenerationSettings(max_new_tokens=16))
    assert base != cache_key("vllm", "m", CONV, GREEDY)
    assert base != cache_key("hf", "m2", CONV, GREEDY)
    assert base != cache_key("hf", "m", CONV[:1] + [{"role": "user", "content": "x"}], GREEDY)
    assert base != cache_key("hf", "m", CONV, GenerationSettings(max_new_tokens=17))
    # sampling knobs do not matter when greedy; extra message fields never do
    assert base == cache_key("hf", "m", CONV, GenerationSettings(max_new_tokens=16, temperature=0.3, seed=5))
    assert base == cache_key("hf", "m", [{**m, "name": "x"} for m in CONV], GREEDY)
    sampled = GenerationSettings(max_new_tokens=16, do_sample=True, seed=1)
    assert cache_key("hf", "m", CONV, sampled) != cache_key("hf", "m", CONV, GenerationSettings(
        max_new_tokens=16, do_sample=True, seed=2))  # fmt: skip


def test_round_trip_keeps_reply_fields(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    reply = Reply(text=" Tokyo ", prompt_tokens=12, completion_tokens=3, entropies=[0.5, 1.25, 2.0],
                  finish_reason="stop", meta={"k": 1})  # fmt: skip
    assert cache.put("hf", "m", CONV, GREEDY, reply, stage="forward") == 1
    got = cache.get(cache_key("hf", "m", CONV, GREEDY))
    assert got.text == " Tokyo " and got.cached and not got.entropy_approx
    assert (got.prompt_tokens, got.completion_tokens, got.finish_reason, got.meta) == (
        12,
        3,
        "stop",
        {"k": 1},
    )
    assert got.entropies == pytest.approx([0.5, 1.25, 2.0])
    (entry,) = cache.entries()
    assert entry.messages == CONV and entry.settings == GREEDY.key_dict() and entry.stage == "forward"
    # first answer wins: storing again adds nothing
    assert cache.put("hf", "m", CONV, GREEDY, Reply(text="other")) == 0
    assert cache.get(cache_key("hf", "m", CONV, GREEDY)).text == " Tokyo "
    assert cache.stats()[0]["answers"] == 1


def test_errors_and_unseeded_samples_are_not_stored(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    assert cache.put("hf", "m", CONV, GREEDY, Reply(text="", error="timeout")) == 0
    unseeded = GenerationSettings(max_new_tokens=16, do_sample=True)
    assert cache.put("hf", "m", CONV, unseeded, Reply(text="x")) == 0
    seeded = GenerationSettings(max_new_tokens=16, do_sample=True, seed=3)
    assert cache.put("hf", "m", CONV, seeded, Reply(text="x")) == 1
    assert len(cache) == 1


def test_modes(tmp_path):
    path = tmp_path / "c.sqlite"
    with pytest.raises(ConfigError, match="cache.mode"):
        ResponseCache(path, mode="sometimes")
    ro = ResponseCache(path, mode="readonly")
    assert ro.get_many(["x"]) == {} and not path.exists()  # an absent file is an empty cache
    ResponseCache(path).put("hf", "m", CONV, GREEDY, Reply(text="a"))
    key = cache_key("hf", "m", CONV, GREEDY)
    assert ro.get(key).text == "a"
    assert ro.put("hf", "m", CONV, GenerationSettings(max_new_tokens=3), Reply(text="b")) == 0
    assert len(ResponseCache(path)) == 1
    off = ResponseCache(path, mode="off")
    assert (
        off.get(key) is None
        and off.put("hf", "m", CONV, GenerationSettings(max_new_tokens=4), Reply("c")) == 0
    )
    assert len(ResponseCache(path)) == 1


def test_wal_mode_and_default_path(tmp_path, monkeypatch):
    cache = ResponseCache(tmp_path / "c.sqlite")
    cache.put("hf", "m", CONV, GREEDY, Reply(text="a"))
    mode = sqlite3.connect(tmp_path / "c.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    monkeypatch.setenv("EATLAB_OUTPUTS", str(tmp_path / "out"))
    assert ResponseCache().path == tmp_path / "out" / "cache" / "responses.sqlite"


def _writer(path: str, worker: int, n: int, shared: int, start) -> None:
    cache = ResponseCache(path, timeout_s=30)
    start.wait()
    for i in range(n):
        conv = [{"role": "user", "content": f"worker {worker} question {i}"}]
        cache.put("hf", "m", conv, GREEDY, Reply(text=f"{worker}-{i}", entropies=[0.1] * 50))
        if i % 10 == 0:  # a batch of keys both workers write
            items = [("hf", "m", [{"role": "user", "content": f"shared {j}"}], GREEDY, Reply(text=f"s{j}"))
                     for j in range(i * shared // n, (i + 10) * shared // n)]  # fmt: skip
            cache.put_many(items)
    cache.close()


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    path = tmp_path / "shared.sqlite"
    ctx = mp.get_context("fork")
    start = ctx.Event()
    n, shared = 300, 100
    procs = [ctx.Process(target=_writer, args=(str(path), w, n, shared, start)) for w in range(2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    cache = ResponseCache(path, mode="readonly")
    assert len(cache) == 2 * n + shared
    texts = {e.reply.text for e in cache.entries()}
    assert {f"{w}-{i}" for w in range(2) for i in range(n)} <= texts
    assert {f"s{j}" for j in range(shared)} <= texts
