"""Property tests that extend tests/test_recovery_props.py (whose strategies they reuse) to what it lacks:

- answers as a model or a server really sends them (control characters, terminal escapes, CRLF, maximum-length
  rambling) through the pipeline's own path: `sanitize_reply`, then span recovery;
- the translate-test baseline's fuzzy alignment, in all 13 scripts;
- the `(TYPE, entity)` format written and parsed back with entities in all 13 scripts;
- the script judgement behind `counts.wrong_script_answers`.
"""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_recovery_props import (
    LANGS,
    SCRIPTS,
    _check_tags,
    answers_for,
    recover_all,
    recovered_tags,
    sentences,
)

from eatlab.data.bio import ENTITY_TYPES, Span
from eatlab.eat.methods.translate_test import fuzzy_align
from eatlab.eat.stages import SentenceResult
from eatlab.llm.answers import char_script, scripts, strip_control, wrong_script
from eatlab.llm.base import Reply
from eatlab.llm.conversation import sanitize_reply
from eatlab.llm.parse import parse_entity_list

NOISE = [
    "\x00",
    "\x07",
    "\x08",
    "\x1b[31m",
    "\x1b[0m",
    "\x1b]0;t\x07",
    "\r\n",
    "\x7f",
    "\u0085",
    "\x9b",
    "\t",
    "\n",
]
KEPT_FORMAT = ["\u200d", "\u200c", "\u200f", "\u00ad"]  # ZWJ/ZWNJ (Devanagari, Persian), RLM, soft hyphen


@st.composite
def noisy(draw, text: str) -> str:
    """`text` with control characters and escapes inserted at random places (and maybe rambling after it)."""
    out = list(text)
    for _ in range(draw(st.integers(0, 6))):
        out.insert(draw(st.integers(0, len(out))), draw(st.sampled_from(NOISE + KEPT_FORMAT)))
    tail = draw(st.sampled_from(["", " and so on" * 30, "\n\nNote: the answer above is final."]))
    return "".join(out) + tail


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_raw_model_answers_through_sanitize_and_recovery(data):
    s = data.draw(sentences())
    raw = [data.draw(noisy(data.draw(answers_for(s)))) for _ in range(data.draw(st.integers(1, 3)))]
    cleaned = []
    for text in raw:
        rep = Reply(text=text, finish_reason=data.draw(st.sampled_from(["stop", "length", None])))
        faults = sanitize_reply(rep)
        assert not any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in rep.text)
        assert rep.text == rep.text.strip() and ("empty_answers" in faults) == (rep.text == "")
        assert ("truncated_answers" in faults) == (rep.finish_reason == "length")
        assert strip_control(rep.text) == (rep.text, 0)  # idempotent
        cleaned.append((rep.text, data.draw(st.sampled_from(ENTITY_TYPES))))
    recs = recover_all(cleaned, s, s.language)
    for rec in recs:
        if rec.span is not None:
            assert 0 <= rec.span.start < rec.span.end <= len(s.tokens)
    _check_tags(recovered_tags(recs, len(s.tokens)), len(s.tokens))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_strip_control_keeps_every_printable_and_format_character(text):
    out, removed = strip_control(text)
    norm = text.replace("\r\n", "\n")
    kept = [c for c in norm if c in "\n\t" or unicodedata.category(c) != "Cc"]
    assert len(out) + removed == len(norm)
    assert all(c in "\n\t" or unicodedata.category(c) != "Cc" for c in out)
    if "\x1b" not in text:  # without escape sequences, exactly the Cc characters go
        assert out == "".join(kept)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzy_alignment_stays_inside_and_off_taken_tokens(data):
    s = data.draw(sentences())
    phrase = data.draw(answers_for(s))
    result = SentenceResult(s, s.text)
    if len(s.tokens) > 1 and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(s.tokens) - 1))
        result.pred_spans.append(Span(i, i + 1, "PER"))
    taken = {i for sp in result.pred_spans for i in range(sp.start, sp.end)}
    min_score = data.draw(st.sampled_from([0.0, 0.6, 1.0]))
    span, score = fuzzy_align(phrase, result, min_score)
    assert 0.0 <= score <= 1.0
    if span is not None:
        assert 0 <= span.start < span.end <= len(s.tokens) and score >= min_score
        assert not taken & set(range(span.start, span.end))


def _label_like(entity: str) -> bool:
    from eatlab.llm import parse

    return entity.lower() in parse._TYPE_WORDS or entity.lower() in parse._PLACEHOLDERS


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(ENTITY_TYPES),
            st.sampled_from(LANGS).flatmap(
                lambda lang: st.lists(
                    st.text(alphabet=[c for c in SCRIPTS[lang] if c.isalpha()], min_size=2, max_size=8),
                    min_size=1, max_size=3,
                ).map(" ".join)
            ),
        ),
        max_size=6,
    )
)  # fmt: skip
def test_entity_lists_in_every_script_parse_back(pairs):
    for sep in (", ", "\n", " "):
        text = sep.join(f"({t}, {e})" for t, e in pairs)
        out = parse_entity_list(text)
        assert all(t in ENTITY_TYPES for t, _ in out)
        # as the parser reads them: NFKC, no repeats
        want = list(dict.fromkeys((t, unicodedata.normalize("NFKC", e)) for t, e in pairs))
        # every entity comes back, in order, except words that read as a label or a placeholder ("EVENT", "null")
        assert out == [(t, e) for t, e in want if (t, e) in out or not _label_like(e)]


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_script_judgement(data):
    s = data.draw(sentences())
    own = set(scripts(s.text))
    assert not wrong_script(s.text, own)
    other = data.draw(st.text(max_size=60))
    assert isinstance(wrong_script(other, own), bool)
    assert all(char_script(c) is None or char_script(c).isupper() for c in other)
