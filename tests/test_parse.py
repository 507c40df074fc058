"""Parsing `(TYPE, entity)` lists and cleaning chatty translations, on handmade shapes and real model replies."""

from __future__ import annotations

import json

import pytest

from eatlab.llm.parse import clean_translation, parse_entity_list

NSL = ("ar", "hi", "hy", "ja", "ka", "ko", "ru", "zh")
# spaCy entities listed in each language's forward transcripts (duplicates included)
N_ENGLISH_ENTITIES = {"ar": 2, "hi": 11, "hy": 3, "ja": 6, "ka": 6, "ko": 2, "ru": 8, "zh": 5}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(PER, John Smith) (LOC, London)", [("PER", "John Smith"), ("LOC", "London")]),
        ("(PER, John Smith), (LOC, London).", [("PER", "John Smith"), ("LOC", "London")]),
        ("(PER, John Smith)\n(ORG, Acme Inc.)", [("PER", "John Smith"), ("ORG", "Acme Inc.")]),
        ("1. (PER, John Smith)\n2. (LOC, London)", [("PER", "John Smith"), ("LOC", "London")]),
        ("- (ORG, NASA)\n* (LOC, Paris)", [("ORG", "NASA"), ("LOC", "Paris")]),
        ('- **Person**: John Smith\n- **Location**: "London"', [("PER", "John Smith"), ("LOC", "London")]),
        ("Person: John Smith", [("PER", "John Smith")]),
        ("PERSON - Mary Jones", [("PER", "Mary Jones")]),
        ("Barack Obama (PERSON)", [("PER", "Barack Obama")]),
        ("[LOCATION] Paris", [("LOC", "Paris")]),
        ("Organization: `NASA`", [("ORG", "NASA")]),
        ("(GPE, Washington, D.C.)", [("LOC", "Washington, D.C.")]),
        ("(FAC, Old Trafford)", [("LOC", "Old Trafford")]),
        ("(location, Rome)", [("LOC", "Rome")]),
        ("(ORGANIZATION, United Nations)", [("ORG", "United Nations")]),
        ("(John Smith, PER)", [("PER", "John Smith")]),
        ("John Smith: PERSON", [("PER", "John Smith")]),
        ("Locations: Paris, Rome; Berlin", [("LOC", "Paris"), ("LOC", "Rome"), ("LOC", "Berlin")]),
        ("PER: Ann Lee, LOC: Oslo", [("PER", "Ann Lee"), ("LOC", "Oslo")]),
        ("(ORG, Real Madrid (football club))", [("ORG", "Real Madrid (football club)")]),
        ("(PER, 'Jane Doe')", [("PER", "Jane Doe")]),
        ("(PER, “Jane Doe”)", [("PER", "Jane Doe")]),
        ("(LOC, Paris", [("LOC", "Paris")]),
        ("### Entities\n1. **John** (PER)", [("PER", "John")]),
        ("```\n(PER, John Smith)\n(LOC, London)\n```", [("PER", "John Smith"), ("LOC", "London")]),
        (
            "(PER, John Smith) (PER, John Smith) (LOC, London) (PER, John Smith)",
            [("PER", "John Smith"), ("LOC", "London")],
        ),
        ("(MISC, English) (PER, John)", [("PER", "John")]),
        ("(NORP, French) (FOO, bar) (per, x)", [("PER", "x")]),
        ("(ＰＥＲ, Ｊｏｈｎ)", [("PER", "John")]),
        ("None", []),
        ("(PER, None)", []),
        ("The sentence has no named entities.", []),
        ("", []),
    ],
)
def test_parse_shapes(text, expected):
    assert parse_entity_list(text) == expected


def test_parse_keeps_first_occurrence_order_and_distinct_types():
    text = "(LOC, Georgia) (PER, Georgia) (LOC, Georgia) (ORG, Acme)"
    assert parse_entity_list(text) == [("LOC", "Georgia"), ("PER", "Georgia"), ("ORG", "Acme")]


@pytest.mark.parametrize("bad", [None, 3, "((((", "(PER,", ")))(((", "\x00\n\t", "(, )", "PER:"])
def test_parse_never_raises(bad):
    out = parse_entity_list(bad)
    assert all(t in ("PER", "ORG", "LOC") and e for t, e in out)


def _forward_records(transcripts_dir, lang):
    for line in (transcripts_dir / f"{lang}.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec["kind"] == "forward":
            yield rec


@pytest.mark.parametrize("lang", NSL)
def test_parse_roundtrips_the_transcripts_entity_lists(transcripts_dir, lang):
    """The transcripts' spaCy lists, written in the extractor's output format, parse back unchanged."""
    n = 0
    for rec in _forward_records(transcripts_dir, lang):
        ents = [tuple(e) for e in rec["english_entities"]]
        text = " ".join(f"({t}, {e})" for t, e in ents)
        expected = list(dict.fromkeys(ents))
        assert parse_entity_list(text) == expected
        numbered = "\n".join(f"{i + 1}. **{e}** ({t})" for i, (t, e) in enumerate(ents))
        assert parse_entity_list(numbered) == expected
        n += len(ents)
    assert n == N_ENGLISH_ENTITIES[lang]


@pytest.mark.parametrize("lang", NSL)
def test_parse_on_real_chatty_replies_never_raises(transcripts_dir, lang):
    """Every real model reply (all rounds) goes through the parser without error and yields only our types."""
    for line in (transcripts_dir / f"{lang}.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        for msg in rec["messages"][3:]:
            for typ, ent in parse_entity_list(msg["content"]):
                assert typ in ("PER", "ORG", "LOC") and ent == ent.strip() and ent


# ----------------------------------------------------------------------------------------- clean_translation
@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            'The sentence "Отличился во время боёв" can be translated as "He distinguished himself in battle."',
            "He distinguished himself in battle.",
        ),
        ("Translation: Hello world.", "Hello world."),
        ("**Translation:** Hello world.", "Hello world."),
        ("The English translation is: Paris is big.", "Paris is big."),
        ('"I was in the combat during the German war. "', "I was in the combat during the German war."),
        ("```\nRose Lake\n```", "Rose Lake"),
        ("Rose Lake\n\nNote: 玫瑰 means rose.", "Rose Lake"),
        ('The final result without other words is "Saga Prefecture".', "Saga Prefecture"),
        ('The final result without other words is:\n\n"Saga Prefecture"', "Saga Prefecture"),
        ("District of Pre-Town", "District of Pre-Town"),
        ("Brown's house", "Brown's house"),
        ("nothing to clean here", "nothing to clean here"),
    ],
)
def test_clean_translation(reply, expected):
    assert clean_translation(reply) == expected


@pytest.mark.parametrize(
    ("sentence_id", "expected"),
    [
        ("hi-dev-6", "New Delhi, Delhi, Ravelo, Stadium"),
        ("ko-dev-0", "Open Software Foundation"),
        ("ru-dev-0", "I was in the combat during the German war."),
        ("zh-dev-3", "Mobile soldier V Gundam (Ketaribah)"),
        ("zh-dev-5", "Rose Lake"),
        ("ja-dev-4", ":トレンティーノ＝アルト・アディジェ州：トレント"),
    ],
)
def test_clean_translation_real_replies(transcripts_dir, sentence_id, expected):
    lang = sentence_id.split("-")[0]
    rec = next(r for r in _forward_records(transcripts_dir, lang) if r["sentence_id"] == sentence_id)
    assert clean_translation(rec["english"]) == expected


def test_clean_translation_is_conservative(transcripts_dir):
    """Never empty for a non-empty reply; an unmatched reply comes back as it was (stripped)."""
    for lang in NSL:
        for rec in _forward_records(transcripts_dir, lang):
            out = clean_translation(rec["english"])
            assert out.strip() and len(out) <= len(rec["english"].strip())
    assert clean_translation("  Sakagawa Prefecture \n") == "Sakagawa Prefecture"
    assert clean_translation("") == "" and clean_translation(None) == ""


@pytest.mark.parametrize(
    ("sentence_id", "expected"),
    [
        ("ar-dev-6", [("LOC", "هولندا"), ("PER", "تحويل"), ("ORG", "فيليم")]),
        ("hi-dev-3", [("LOC", "पूर्णिया"), ("PER", "बिहार"), ("PER", "एक"), ("ORG", "प्रखण्ड")]),
        ("hi-dev-2", [("LOC", "India"), ("PER", "Indian"), ("ORG", "India")]),
        ("ka-dev-3", [("LOC", "Georgian sentence"), ("LOC", "The Georgian sentence is"), ("LOC", "თუმცა")]),
    ],
)
def test_parse_real_round1_entity_analyses(transcripts_dir, sentence_id, expected):
    """Round 1 of the forward conversation lists entities in the model's own shapes: `- LOCATION: X`,
    `1. X (Location)`, `1. "X" - explanation ... [LOCATION].`"""
    lang = sentence_id.split("-")[0]
    rec = next(r for r in _forward_records(transcripts_dir, lang) if r["sentence_id"] == sentence_id)
    assert parse_entity_list(rec["messages"][4]["content"]) == expected
