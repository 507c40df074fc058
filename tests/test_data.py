"""The WikiANN data layer: readers, records, BIO/span conversions, selection, bad input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eatlab.data.bio import Span, spans_to_tags, tags_to_spans
from eatlab.data.conll import read_conll, write_conll
from eatlab.data.languages import ALL_CODES, get_language
from eatlab.data.loader import is_redirect, select_sentences
from eatlab.errors import ConfigError, DataError

SIZES = {
    "en": 10000,
    "zh": 10000,
    "ja": 10000,
    "ko": 10000,
    "ar": 10000,
    "ru": 10000,
    "hi": 1000,
    "ka": 10000,
    "hy": 1000,
}


def test_language_table_has_all_13_languages():
    for code in ALL_CODES:
        lang = get_language(code)
        assert lang.code == code and lang.name and lang.sacrebleu_tokenizer
    assert get_language("zh").char_tokenized and get_language("ja").char_tokenized
    assert not get_language("ko").char_tokenized
    assert sum(get_language(c).nsl for c in ALL_CODES) == 8
    with pytest.raises(ConfigError, match="language=xx"):
        get_language("xx")


@pytest.mark.parametrize("lang", sorted(SIZES))
def test_full_test_split_sentence_counts(wikiann_dir, lang):
    sents = read_conll(wikiann_dir / lang / "test.txt", lang, "test")
    assert len(sents) == SIZES[lang]
    assert sents[5].id == f"{lang}-test-5"
    for s in sents[:200]:
        assert len(s.tokens) == len(s.tags) == len(s.offsets)
        for tok, (a, b) in zip(s.tokens, s.offsets):
            assert s.text[a:b] == (" " if s.char_tokenized and tok == "#" else tok)


def test_zh_text_joins_characters_and_reads_hash_as_space(tmp_path):
    p = tmp_path / "zh.txt"
    p.write_text("北\tB-LOC\n京\tI-LOC\n#\tO\nA\tB-ORG\n\n", encoding="utf-8")
    (s,) = read_conll(p, "zh")
    assert s.text == "北京 A" and s.offsets == [(0, 1), (1, 2), (2, 3), (3, 4)]
    en = tmp_path / "en.txt"
    en.write_text("New B-LOC\nYork I-LOC\nis O\n\n", encoding="utf-8")
    (e,) = read_conll(en, "en")
    assert e.text == "New York is" and e.offsets[1] == (4, 8)


def test_raw_rahimi_prefix_is_stripped_and_last_column_is_the_tag(tmp_path):
    p = tmp_path / "raw.txt"
    p.write_text("zh:北\tB-LOC\nzh:京\tI-LOC\n\n", encoding="utf-8")
    (s,) = read_conll(p, "zh")
    assert s.tokens == ["北", "京"]
    three = tmp_path / "pred.txt"
    three.write_text("Paris\tB-LOC\tB-PER\nis\tO\tO\n\n", encoding="utf-8")
    (s,) = read_conll(three, "en")
    assert s.tags == ["B-PER", "O"]  # read as a prediction: the last column


def test_write_then_read_roundtrip(tmp_path):
    sents = select_sentences("ko", "test", limit=5).sentences
    write_conll(tmp_path / "x.txt", sents, [s.tags for s in sents])
    back = read_conll(tmp_path / "x.txt", "ko")
    assert [b.tokens for b in back] == [s.tokens for s in sents]
    assert [b.tags for b in back] == [s.tags for s in sents]


@pytest.mark.parametrize(
    ("content", "line", "what"),
    [
        ("Paris\tB-LOC\nlonely\n\n", 2, "single column"),
        ("Paris\tB-LOC\nis\tB-MISC\n\n", 2, "unknown tag"),
        ("", None, "empty"),
        ("\n\n", None, "empty"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, content, line, what):
    p = tmp_path / "bad.txt"
    p.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as exc:
        read_conll(p, "en")
    msg = str(exc.value)
    assert msg.startswith(f"{p}:{line}:" if line else f"{p}:") and what in msg
    assert "\n" not in msg


def test_a_line_with_other_columns_than_the_first_is_an_error_not_a_misread_tag(tmp_path):
    """On f4a7be8 the stray 3-column line read its last column as gold (O), leaving an orphan I-LOC behind it."""
    p = tmp_path / "gold.txt"
    p.write_text("City\tB-LOC\nHall\tI-LOC\tO\nPark\tI-LOC\n\n", encoding="utf-8")
    with pytest.raises(DataError) as exc:
        read_conll(p, "en")
    assert str(exc.value) == (
        f"{p}:2: 3 columns where line 1 has 2: every line must have the same columns "
        "('token<TAB>tag', or 'token<TAB>gold<TAB>pred'): 'Hall\\tI-LOC\\tO'"
    )
    p.write_text("City\tB-LOC\tO\nHall\tI-LOC\n\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"gold\.txt:2: 2 columns where line 1 has 3"):
        read_conll(p, "en")


def test_a_byte_order_mark_is_not_part_of_the_first_token(tmp_path):
    """An editor's BOM (and one from files joined with cat) was read into the first token on f4a7be8."""
    (tmp_path / "zh").mkdir()
    p = tmp_path / "zh" / "test.txt"
    p.write_text("北\tB-LOC\n京\tI-LOC\n\n\ufeff上\tB-LOC\n海\tI-LOC\n\n", encoding="utf-8-sig")
    assert p.read_bytes()[:3] == b"\xef\xbb\xbf"
    first, second = select_sentences("zh", "test", root=tmp_path).sentences
    assert (first.tokens, first.text, second.tokens) == (["北", "京"], "北京", ["上", "海"])
    # a token that is a lone U+FEFF (ka/test.txt:57365 of the real data) stays a token
    p.write_text("\ufeff\tO\nა\tO\n\n", encoding="utf-8")
    (s,) = read_conll(p, "ka")
    assert s.tokens == ["\ufeff", "ა"]


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_conll(tmp_path / "nope.txt", "en")


def test_selection_limit_sample_and_redirects():
    full = select_sentences("ar", "test")
    assert len(full.sentences) == 100 and full.files and all(len(h) == 64 for h in full.files.values())
    assert [s.id for s in select_sentences("ar", "test", limit=3).sentences] == [
        "ar-test-0",
        "ar-test-1",
        "ar-test-2",
    ]
    a = select_sentences("ar", "test", sample=10, seed=3).sentences
    b = select_sentences("ar", "test", sample=10, seed=3).sentences
    c = select_sentences("ar", "test", sample=10, seed=4).sentences
    assert [s.id for s in a] == [s.id for s in b] != [s.id for s in c]
    ids = [int(s.id.rsplit("-", 1)[1]) for s in a]
    assert ids == sorted(ids)
    dropped = select_sentences("ar", "test", drop_redirects=True)
    n_redirect = sum(is_redirect(s, get_language("ar")) for s in full.sentences)
    assert n_redirect > 20  # about half of Arabic WikiANN is redirect artefacts
    assert dropped.n_redirects_removed == n_redirect == 100 - len(dropped.sentences)
    assert dropped.provenance()["n_redirects_removed"] == n_redirect


def test_redirect_share_matches_method_doc(wikiann_dir):
    lang = get_language("ar")
    sents = read_conll(wikiann_dir / "ar" / "test.txt", "ar")
    share = sum(is_redirect(s, lang) for s in sents) / len(sents)
    assert abs(share - 0.507) < 0.01


def test_hub_offline_fails_with_one_line():
    with pytest.raises(DataError) as exc:
        select_sentences("zh", "test", source="hub")
    assert "data.source=local data.root=DIR" in str(exc.value) and "\n" not in str(exc.value)


# ---------------------------------------------------------------- BIO <-> spans
TAGS = st.sampled_from(["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"])


def test_chunking_rules_differ_as_documented():
    tags = ["B-PER", "I-LOC", "O", "I-ORG", "I-ORG"]
    assert tags_to_spans(tags, "conlleval") == [Span(0, 1, "PER"), Span(1, 2, "LOC"), Span(3, 5, "ORG")]
    assert tags_to_spans(tags, "reference") == [Span(0, 2, "PER"), Span(3, 5, "ORG")]


@given(st.lists(TAGS, max_size=30))
def test_conlleval_spans_roundtrip_to_canonical_tags(tags):
    spans = tags_to_spans(tags, "conlleval")
    canon = spans_to_tags(spans, len(tags))
    assert tags_to_spans(canon, "conlleval") == spans
    assert all(0 <= s.start < s.end <= len(tags) for s in spans)


@given(st.lists(TAGS, max_size=30))
def test_reference_chunks_cover_every_non_o_tag_once(tags):
    spans = tags_to_spans(tags, "reference")
    covered = [i for s in spans for i in range(s.start, s.end)]
    assert covered == [i for i, t in enumerate(tags) if t != "O"] or len(covered) == len(set(covered))
    assert sorted(set(covered)) == [i for i, t in enumerate(tags) if t != "O"]
