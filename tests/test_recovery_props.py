"""Property tests: random answers in the scripts of all 13 languages against random sentences never raise,
always give spans inside the sentence and valid BIO tags; the parsers never raise on arbitrary text."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eatlab.data.bio import ENTITY_TYPES, VALID_TAGS, Span, spans_to_tags, tags_to_spans
from eatlab.data.record import Sentence
from eatlab.eat.recovery import REASONS, Recovery, fold, recover_span, spans_from_recoveries
from eatlab.eat.reference_recovery import reference_recover_sentence
from eatlab.llm.parse import clean_translation, parse_entity_list

# Letters of each language's script (with marks and variants that matter for normalisation)
_LATIN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
SCRIPTS = {
    "en": _LATIN,
    "de": _LATIN + "äöüßÄÖÜẞ",
    "es": _LATIN + "áéíóúñÁÉÍÓÚÑ¿¡",
    "fr": _LATIN + "àâçéèêëîïôœùûüÿÉÈÇŒ'’",
    "nl": _LATIN + "éëïĳĲ",
    "ru": "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯ\u0301",
    "ar": "".join(chr(c) for c in range(0x0621, 0x064B)) + "\u064e\u064f\u0650\u0651\u0652\u0640\u0660\u0661",
    "hi": "".join(chr(c) for c in range(0x0905, 0x093A))
    + "".join(chr(c) for c in range(0x093C, 0x094E))
    + "\u0958\u095c\u0964\u200d",
    "ka": "".join(chr(c) for c in range(0x10D0, 0x10F1)) + "".join(chr(c) for c in range(0x1C90, 0x1C95)),
    "hy": "".join(chr(c) for c in range(0x0531, 0x0557)) + "".join(chr(c) for c in range(0x0561, 0x0588)),
    "zh": "北京大学上海中国人民共和國臺灣機動戰士布朗玫瑰湖區鎮前" + "·・（）「」《》，。",
    "ja": "佐賀県福井市北海道あいうえおかがきぎくのをんアイウエオカガキギクバンダイチャンネルー・ｶﾞｷﾞ３０",
    "ko": "서울특별시의날씨는맑다부산대한민국넘겨주기를에서가이은는ᄀᄁ",
}
PUNCT = list("()[],.-—:;'\"«»!?") + ["''", "**", "`"]
LANGS = tuple(SCRIPTS)
CHAR_LANGS = ("zh", "ja")


@st.composite
def sentences(draw, lang: str | None = None) -> Sentence:
    lang = lang or draw(st.sampled_from(LANGS))
    letters = SCRIPTS[lang]
    word = st.text(alphabet=letters + "0123456789", min_size=1, max_size=8)
    pieces = draw(st.lists(st.one_of(word, word, word, st.sampled_from(PUNCT)), min_size=1, max_size=10))
    if draw(st.booleans()):  # sometimes a redirect-style sentence
        pieces = [draw(st.sampled_from(["REDIRECT", "перенаправление", "تحويل", "넘겨주기"])), *pieces]
    if lang in CHAR_LANGS:
        text = " ".join(pieces)
        tokens = ["#" if c == " " else c for c in text]
        char = True
    else:
        tokens = [p for p in pieces if p and not any(c.isspace() for c in p)] or ["x"]
        char = False
    return Sentence(f"{lang}-prop-0", lang, tokens, ["O"] * len(tokens), char)


@st.composite
def answers_for(draw, s: Sentence) -> str:
    """A free-text answer: a slice of the sentence (wrapped, case-changed, noised) or random script text."""
    letters = SCRIPTS[s.language]
    kind = draw(st.integers(0, 3))
    if kind == 0 and s.text:
        i = draw(st.integers(0, len(s.text) - 1))
        j = draw(st.integers(i + 1, len(s.text)))
        core = s.text[i:j]
        core = draw(st.sampled_from([core, core.upper(), core.lower(), core.replace(" ", "")]))
    elif kind == 1:
        core = draw(st.text(alphabet=letters + " ", min_size=0, max_size=20))
    elif kind == 2:
        other = SCRIPTS[draw(st.sampled_from(LANGS))]
        core = draw(st.text(alphabet=letters + other + " .,\"'()", min_size=0, max_size=30))
    else:
        core = draw(st.text(max_size=40))
    wrap = draw(
        st.sampled_from(
            [
                "{}",
                '"{}"',
                "「{}」",
                "«{}»",
                "**{}**",
                "`{}`",
                "```\n{}\n```",
                'The final result without other words is "{}".',
                "The final result without other words is:\n\n{}",
                "{} is the translation result.",
                "Answer: {}",
                "- {}",
                '"{}" ({})',
            ]
        )
    )
    return wrap.format(core, core)


def recover_all(answers: list[tuple[str, str]], s: Sentence, language: str | None) -> list[Recovery]:
    """Every (answer, type) of one sentence in order, as the pipeline's recovery stage does it: earlier
    recoveries take their tokens first."""
    taken: list[Span] = []
    out = []
    for answer, typ in answers:
        rec = recover_span(answer, s, typ, taken, language, n_entities=len(answers))
        if rec.span is not None:
            taken.append(rec.span)
        out.append(rec)
    return out


def recovered_tags(recs: list[Recovery], n_tokens: int) -> list[str]:
    return spans_to_tags(spans_from_recoveries(recs), n_tokens)


def _check_tags(tags: list[str], n: int) -> None:
    assert len(tags) == n
    assert all(t in VALID_TAGS for t in tags)
    for i, t in enumerate(tags):
        if t.startswith("I-"):
            assert i > 0 and tags[i - 1] != "O" and tags[i - 1][2:] == t[2:], tags


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_recovery_never_fails_and_stays_inside(data):
    s = data.draw(sentences())
    n_answers = data.draw(st.integers(1, 4))
    answers = [
        (data.draw(answers_for(s)), data.draw(st.sampled_from(ENTITY_TYPES))) for _ in range(n_answers)
    ]
    recs = recover_all(answers, s, s.language)
    for rec in recs:
        assert (rec.span is None) != (rec.reason is None)
        if rec.span is None:
            assert rec.reason in REASONS
        else:
            assert 0 <= rec.span.start < rec.span.end <= len(s.tokens)
            cs, ce = rec.char_span
            assert 0 <= cs < ce <= len(s.text) and rec.matched_text == s.text[cs:ce]
            # the span has at least one token with a letter or digit
            assert any(any(c.isalnum() for c in s.tokens[i]) for i in range(rec.span.start, rec.span.end))
    tags = recovered_tags(recs, len(s.tokens))
    _check_tags(tags, len(s.tokens))
    assert len(tags_to_spans(tags)) == sum(r.span is not None for r in recs)
    ref = reference_recover_sentence(answers, s)
    _check_tags(ref.tags(len(s.tokens)), len(s.tokens))


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_whole_words_of_the_sentence_come_back_as_those_tokens(data):
    """An answer made of 1-3 whole words of a word-written sentence is recovered as tokens spelling it."""
    lang = data.draw(st.sampled_from([c for c in LANGS if c not in CHAR_LANGS]))
    letters = "".join(c for c in SCRIPTS[lang] if c.isalpha() and fold(c)[0])
    words = data.draw(
        st.lists(
            st.text(alphabet=letters, min_size=3, max_size=8), min_size=2, max_size=8, unique_by=str.casefold
        )
    )
    s = Sentence(f"{lang}-prop-0", lang, words, ["O"] * len(words), False)
    i = data.draw(st.integers(0, len(words) - 2))
    j = data.draw(st.integers(i + 1, min(len(words) - 1, i + 3)))
    answer = data.draw(st.sampled_from(["{}", '"{}"', "**{}**"])).format(" ".join(words[i:j]))
    rec = recover_span(answer, s, "PER", None, lang)
    assert rec.reason is None and rec.exact
    assert fold(" ".join(words[rec.span.start : rec.span.end]))[0] == fold(" ".join(words[i:j]))[0]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_parsers_never_raise(text):
    for typ, ent in parse_entity_list(text):
        assert typ in ENTITY_TYPES and ent and ent == ent.strip()
    out = clean_translation(text)
    assert isinstance(out, str)
    assert (out == "") == (text.strip() == "")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["PER", "LOC", "ORG", "MISC", "PERSON", "location", "GPE", "Organization"]),
            st.text(alphabet=_LATIN + " .'-&" + SCRIPTS["ru"][:10], min_size=1, max_size=20),
        ),
        max_size=6,
    )
)
def test_parse_reads_what_the_extractor_format_writes(pairs):
    text = " ".join(f"({t}, {e})" for t, e in pairs)
    out = parse_entity_list(text)
    assert all(t in ENTITY_TYPES for t, _ in out)
    assert len(out) <= len(pairs)
