"""Span recovery (EAT step 4): snap a backward-alignment answer onto the source sentence, or say why not.

The LLM's answer is free text. `clean_answer` turns it into candidate strings (most specific first);
`recover_span` matches them against the sentence text at the character level and widens the match to whole
tokens. The rules, and why:

* **Normalisation.** Both sides are compared after NFKC (fullwidth/halfwidth forms, compatibility characters),
  case folding (harmless for scripts without case, and it lets Latin names inside zh/ja/ko text match in any
  case), hiragana for katakana (LLMs switch between the two for names), one form for middle dots, dashes,
  apostrophes and quotes, and without optional marks (Arabic harakat and tatweel, combining stress accents,
  zero-width characters, soft hyphens). Whitespace is ignored on both sides: WikiANN puts spaces around
  punctuation (`Кисо , Ненад ( род .`) that answers do not reproduce. Offsets are kept, so every match maps
  back to characters of `sentence.text`.
* **Exact before partial.** A candidate found whole is used first. Otherwise the longest common substring of a
  candidate and the text is used, if it passes the minimum match below.
* **Minimum match.** Counted in word characters (letters, marks, digits): the aligned part of the match must
  be at least half of the candidate, and the final span must keep at least 2 matched ones. A 1-character
  candidate is accepted only as an exact match, and in word-written languages only when it is a whole token:
  one shared letter is chance, not alignment. zh/ja are exempt from that last condition because one Han
  character can be a name there (`美` = the USA).
* **Widening.** The character match is widened to whole tokens (Korean tokens carry particles, so `서울` found in
  `서울의` tags `서울의`, as the gold does; zh/ja tokens are characters). In word-written languages an edge token
  the match only grazes (fewer than max(2, a third of its word characters)) is dropped instead, so a partial
  overlap at the end of a long match does not swallow the neighbouring word. Punctuation-only tokens at the
  edges are dropped (a closing bracket stays when its opener is inside the span), and so is a leading redirect
  word (`REDIRECT`, `تحويل`, ...: a Wikipedia artefact that the gold never tags).
* **Taken tokens.** Among all occurrences, one whose tokens are free is preferred, then one aligned to token
  boundaries, then the earliest. If every valid occurrence overlaps an earlier recovery, the entity is dropped
  with reason `overlap`: the earlier recovery wins (callers process entities in the English NER's order), so
  the result never depends on anything but that order.
* **Whole sentence.** Many WikiANN sentences are a single entity (a title), so an answer equal to the whole
  sentence is often right: it is accepted when the sentence (without a redirect word) has at most 5 content
  tokens (zh/ja: 12 content characters) and only one English entity was asked for it. The limits are a
  judgement call from WikiANN dev: the share of sentences that are one entity falls from most of them at 1-2
  tokens to 2-17% at 6 tokens (hi: 29%), and from over 90% at 2-4 zh/ja characters to 4-16% at 12. A span covering at least 90% of the sentence's content
  is dropped as `whole_sentence` when the sentence is longer than that, or when several English entities were
  asked for this sentence (one of them cannot be all of it). Any other span longer than nearly all WikiANN
  entities (more than 10 content tokens, or 24 zh/ja characters; the dev sets' 99.9th percentiles are 8-11
  tokens and 18-22 characters) is dropped as `too_long`.

Every dropped entity gets a reason: `empty_answer`, `no_match`, `below_min_match`, `overlap`,
`whole_sentence`, `too_long`, `unknown_type`.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from eatlab.data.bio import ENTITY_TYPES, Span
from eatlab.data.languages import Language, get_language
from eatlab.data.record import Sentence
from eatlab.errors import ConfigError

REASONS = (
    "empty_answer",
    "no_match",
    "below_min_match",
    "overlap",
    "whole_sentence",
    "too_long",
    "unknown_type",
)
MIN_MATCH_CHARS = 2
MIN_MATCH_RATIO = 0.5
WHOLE_SENTENCE_COVER = 0.9
MAX_SPAN_TOKENS = 10  # word-written languages, content tokens (WikiANN dev 99.9th percentile: 8-11)
MAX_SPAN_CHARS = 24  # zh/ja, content characters (WikiANN dev 99.9th percentile: 18-22)
MAX_WHOLE_TOKENS = 5  # a whole-sentence answer is accepted up to this size (word-written languages) ...
MAX_WHOLE_CHARS = 12  # ... and zh/ja (see the module doc for why)

# ------------------------------------------------------------------------------------------------ cleaning
_OPEN_CLOSE = {
    '"': '"',
    "“": "”",
    "„": "“",
    "«": "»",
    "‹": "›",
    "「": "」",
    "『": "』",
    "《": "》",
    "〈": "〉",
    "【": "】",
    "‘": "’",
    "'": "'",
    "`": "`",
    "(": ")",
    "[": "]",
    "{": "}",
}
_QUOTE_OPEN = '"“„«‹「『《〈【‘'
_STRIP_CHARS = "\"'`“”„‟‘’‚‛«»‹›「」『』《》〈〉【】*_~ \t\n"
_TRAIL = ".。．,，、;；:：!！?？…"
_CODE_FENCE = re.compile(r"```[A-Za-z0-9_-]*")
_EMPHASIS = re.compile(r"\*\*|__|~~|(?<!\w)[*_](?=\S)|(?<=\S)[*_](?!\w)")
_LINE_MARK = re.compile(r"^\s*(?:[-*+•]\s+|\d{1,3}[.)]\s+|#{1,6}\s+|>\s*)+")
_PREFIX = re.compile(
    r"^.{0,80}?\b(?:result|answer|phrase|translation|word|words|name|entity|output|term|equivalent|text)\b"
    r"[^\n\"“«「『:：]{0,60}?(?:\bis\b|\bare\b|\bwould\s+be\b)\s*[:：]?\s*",
    re.I,
)
_LABEL_COLON = re.compile(r"^[^\n:：\"“«「『]{1,40}[:：]\s*")
_SUFFIX = re.compile(
    r"^(.+?)\s+(?:is|are|was|would\s+be)\s+(?:the|a|an)\s+(?:\w+\s+){0,3}?"
    r"(?:translation|raw|original|corresponding|final|direct|result|phrase|equivalent)\b.*$",
    re.I | re.S,
)
_TRAILING_PAREN = re.compile(r"^(.+?)\s*[(（][^()（）]*[)）]\s*[.。]?$")
# an answer that opens a bracket and never closes it ran on past the entity (`Лянь Чжань (кит.`, a constrained
# answer copied up to where it could stop): the entity is what comes before the bracket
_UNCLOSED_TAIL = re.compile(r"^(.+?)\s*[(（][^()（）]*$")


def _quoted_segments(text: str) -> list[str]:
    """Texts inside quote pairs, outermost first, in order of appearance (an unclosed quote runs to the end)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in _QUOTE_OPEN or (ch == "'" and (i == 0 or not text[i - 1].isalnum())):
            close = _OPEN_CLOSE[ch]
            j = text.find(close, i + 1)
            while ch == "'" and j != -1 and j + 1 < len(text) and text[j + 1].isalnum():
                j = text.find(close, j + 1)  # an apostrophe inside a word does not close the quote
            if j == -1:
                if ch != "'":
                    out.append(text[i + 1 :])
                break
            out.append(text[i + 1 : j])
            i = j + 1
        else:
            i += 1
    return out


def _trim(text: str) -> str:
    """Strip surrounding quotes, brackets enclosing everything, markdown and sentence punctuation."""
    prev = None
    while prev != text:
        prev = text
        text = text.strip(_STRIP_CHARS)
        text = text.rstrip(_TRAIL).lstrip(",，、;；:：").strip()
        if len(text) >= 2 and _OPEN_CLOSE.get(text[0]) == text[-1]:
            inner = text[1:-1]
            if text[0] not in "([{" or (inner.count(text[0]) == inner.count(text[-1])):
                text = inner
        for o, c in (("(", ")"), ("（", "）"), ("[", "]")):
            if text.endswith(c) and text.count(o) < text.count(c):
                text = text[:-1]
            if text.startswith(o) and text.count(o) > text.count(c):
                text = text[1:]
    return text


def _word_len(text: str) -> int:
    return sum(1 for ch in text if unicodedata.category(ch)[0] in "LMN")


def clean_answer(answer: str) -> list[str]:
    """Candidate strings for the entity an answer names, most specific first (deduplicated, non-empty).

    Order: quoted segments (the model's explicit answer), text after an explanatory lead-in (`The final result
    ... is`, `The raw Chinese phrase is`, `Label:`) or before an explanatory tail (`X is the translation
    result...`), each line, then the whole answer; each also without a trailing parenthetical
    (`"玫瑰湖" (Roshu)`), and first without a bracket opened and never closed (`Лянь Чжань (кит.`). All
    NFKC-normalised, without markdown, quotes and final punctuation.
    """
    if not isinstance(answer, str):
        return []
    text = unicodedata.normalize("NFKC", answer)
    text = _CODE_FENCE.sub("\n", text)
    text = _EMPHASIS.sub("", text)
    lines = [_LINE_MARK.sub("", ln).strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    whole = " ".join(lines)
    raw: list[str] = []
    raw.extend(_quoted_segments(whole))
    labelled: list[str] = []
    for ln in [*lines, whole] if len(lines) > 1 else [whole]:
        m = _PREFIX.match(ln)
        rest = ln[m.end() :] if m else ln
        if m:
            raw.append(rest)
        m3 = _SUFFIX.match(rest)
        if m3:
            raw.append(m3.group(1))
        m2 = _LABEL_COLON.match(rest)
        if m2 and m2.end() < len(rest):
            labelled.append(rest[m2.end() :])
    raw.extend(lines)
    raw.append(whole)
    raw.extend(labelled)  # `Label: X` last: the label may be part of the name (`州：トレント`)
    out: list[str] = []
    for cand in raw:
        for variant in _variants(_trim(cand)):
            if variant and _word_len(variant) and variant not in out:
                out.append(variant)
    return out


def _variants(cand: str) -> list[str]:
    m = _UNCLOSED_TAIL.match(cand)
    if m:  # the part before a bracket that is never closed first: no entity ends inside an open bracket
        return [_trim(m.group(1)), cand]
    m = _TRAILING_PAREN.match(cand)
    return [cand, _trim(m.group(1))] if m else [cand]


# ------------------------------------------------------------------------------------------------ folding
_EQUIV = str.maketrans(
    {
        "・": "·",
        "･": "·",
        "‧": "·",
        "•": "·",
        "∙": "·",
        "‐": "-",
        "‑": "-",
        "‒": "-",
        "–": "-",
        "—": "-",
        "―": "-",
        "−": "-",
        "ー": "ー",
        "’": "'",
        "‘": "'",
        "ʼ": "'",
        "`": "'",
        "´": "'",
        "“": '"',
        "”": '"',
        "„": '"',
        "«": '"',
        "»": '"',
        "＝": "=",
    }
)


def _ignorable(ch: str) -> bool:
    o = ord(ch)
    return (
        ch.isspace()
        or 0x064B <= o <= 0x065F  # Arabic harakat
        or o in (0x0670, 0x0640)  # superscript alef, tatweel
        or o in (0x0300, 0x0301)  # combining grave/acute left by NFKC (Russian stress marks)
        or o in (0x00AD, 0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF)  # soft hyphen, zero-width characters
    )


def fold(text: str) -> tuple[str, list[int], list[int]]:
    """Matching form of `text` and, per folded character, the start/end of the original characters it came from.

    Characters are folded in clusters (a base character with its combining marks, or a halfwidth kana with its
    voicing mark) so that NFKC can compose them exactly as it does for a whole string.
    """
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    i, n = 0, len(text)
    while i < n:
        j = i + 1
        while j < n and (unicodedata.combining(text[j]) or text[j] in "\uff9e\uff9f\u3099\u309a"):
            j += 1
        piece = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text[i:j]).casefold())
        for ch in piece.translate(_EQUIV):
            if "\u30a1" <= ch <= "\u30f6":  # katakana -> hiragana: the same reading in either script
                ch = chr(ord(ch) - 0x60)
            if not _ignorable(ch):
                out.append(ch)
                starts.append(i)
                ends.append(j)
        i = j
    return "".join(out), starts, ends


def _is_word_char(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "LMN"


# ------------------------------------------------------------------------------------------------ recovery
@dataclass(frozen=True)
class Recovery:
    """The outcome of recovering one answer: a token span, or None with the reason it was dropped."""

    span: Span | None
    char_span: tuple[int, int] | None = None  # the raw character match in sentence.text, before widening
    matched_text: str | None = None  # sentence.text[char_span]
    reason: str | None = None
    candidate: str | None = None  # the cleaned candidate that produced the match
    exact: bool = False  # the whole candidate was found (else: longest common substring)


@dataclass(frozen=True)
class _LangInfo:
    char_tokenized: bool
    redirect_words: tuple[str, ...]


def _lang_info(sentence: Sentence, language: Language | str | None) -> _LangInfo:
    """The run's language (its composed node) as given; a bare code (tools without a config) is looked up in
    the shipped table, and an unknown one recovers by the sentence alone."""
    if isinstance(language, Language):
        return _LangInfo(sentence.char_tokenized or language.char_tokenized, language.redirect_words)
    try:
        lang = get_language(language or sentence.language)
    except ConfigError:
        return _LangInfo(sentence.char_tokenized, ())
    return _LangInfo(sentence.char_tokenized or lang.char_tokenized, lang.redirect_words)


def _taken_tokens(taken: Iterable[int] | Iterable[Span] | None) -> set[int]:
    out: set[int] = set()
    for t in taken or ():
        if isinstance(t, Span):
            out.update(range(t.start, t.end))
        else:
            out.add(int(t))
    return out


@dataclass
class _Occurrence:
    fstart: int  # folded-text match [fstart, fend)
    fend: int
    cand_index: int
    exact: bool
    tokens: tuple[int, int] | None = None  # the token span [start, end) when valid
    char_span: tuple[int, int] | None = None
    reason: str | None = None
    aligned: int = 0


class _Matcher:
    """Everything about one sentence that does not depend on the answer."""

    def __init__(self, sentence: Sentence, info: _LangInfo, n_entities: int | None):
        self.s = sentence
        self.info = info
        self.n_entities = n_entities
        self.text = sentence.text
        self.folded, self.fstarts, self.fends = fold(self.text)
        self.offsets = list(sentence.offsets)
        n_tok = len(self.offsets)
        self.tok_word = [_word_len(self.text[s:e]) for s, e in self.offsets]
        self.content = [i for i in range(n_tok) if self.tok_word[i] > 0]
        # per folded char: its token (None for separators)
        self.char_token: list[int | None] = []
        tok_of_char = [None] * (len(self.text) + 1)
        for t, (s, e) in enumerate(self.offsets):
            for c in range(s, min(e, len(self.text))):
                tok_of_char[c] = t
        for fs in self.fstarts:
            self.char_token.append(tok_of_char[fs])
        self.redirect = [f for f in (fold(w)[0] for w in info.redirect_words) if f]
        self.content_total = self._content_size()

    # -- occurrence evaluation --------------------------------------------------------------------
    def evaluate(self, occ: _Occurrence, cand_word: int, taken: set[int]) -> _Occurrence:
        matched = self.folded[occ.fstart : occ.fend]
        m_word = sum(1 for ch in matched if _is_word_char(ch))
        covered: dict[int, int] = {}  # token -> word characters of it inside the match
        for k in range(occ.fstart, occ.fend):
            t = self.char_token[k]
            if t is not None:
                covered[t] = covered.get(t, 0) + int(_is_word_char(self.folded[k]))
        cs, ce = self.fstarts[occ.fstart], self.fends[occ.fend - 1]
        occ.char_span = (cs, ce)
        toks = sorted(covered)
        # a match needs a letter or digit: combining marks alone (a lone nukta) name nothing
        if not toks or m_word == 0 or not any(unicodedata.category(ch)[0] in "LN" for ch in matched):
            occ.reason = "below_min_match"
            return occ
        if not self.info.char_tokenized:
            # drop edge tokens that the match only grazes
            def grazed(t: int) -> bool:
                return covered[t] < self.tok_word[t] and covered[t] < max(2, -(-self.tok_word[t] // 3))

            while toks and grazed(toks[0]):
                m_word -= covered[toks.pop(0)]
            while toks and grazed(toks[-1]):
                m_word -= covered[toks.pop()]
            if not toks:
                occ.reason = "below_min_match"
                return occ
        # alignment quality is measured before edge trimming (a matched redirect word still counts as
        # matched); the span must keep at least MIN_MATCH_CHARS matched characters after it
        m_align = sum(covered[t] for t in toks)
        start, end = self._trim_edges(toks[0], toks[-1] + 1)
        m_word = sum(covered.get(t, 0) for t in range(start, end))
        if start >= end or m_word == 0:
            occ.reason = "below_min_match"
            return occ
        # minimum match
        if cand_word <= 1:
            ok = occ.exact and m_word >= 1
            if ok and not self.info.char_tokenized:
                ok = end - start == 1 and covered.get(start, 0) == self.tok_word[start]
        else:
            ok = m_word >= MIN_MATCH_CHARS and m_align >= MIN_MATCH_RATIO * cand_word
        if not ok:
            occ.reason = "below_min_match"
            return occ
        # size: whole sentence / too long
        content_in = [t for t in self.content if start <= t < end]
        size = sum(self.tok_word[t] for t in content_in) if self.info.char_tokenized else len(content_in)
        limit = MAX_SPAN_CHARS if self.info.char_tokenized else MAX_SPAN_TOKENS
        whole_limit = MAX_WHOLE_CHARS if self.info.char_tokenized else MAX_WHOLE_TOKENS
        content_total = self.content_total
        covers_all = content_total and size >= WHOLE_SENTENCE_COVER * content_total
        if covers_all and (content_total > whole_limit or (self.n_entities or 1) > 1):
            occ.reason = "whole_sentence"
            return occ
        if size > limit:
            occ.reason = "too_long"
            return occ
        occ.tokens = (start, end)
        s_off, e_off = self.offsets[start][0], self.offsets[end - 1][1]
        occ.aligned = int(cs <= s_off) + int(ce >= e_off)
        if any(t in taken for t in range(start, end)):
            occ.reason = "overlap"
        return occ

    def _content_size(self) -> int:
        """Content of the sentence without a leading redirect word, in the unit used for span sizes."""
        s, e = self._trim_edges(0, len(self.offsets)) if self.offsets else (0, 0)
        content = [t for t in self.content if s <= t < e]
        return sum(self.tok_word[t] for t in content) if self.info.char_tokenized else len(content)

    def _trim_edges(self, start: int, end: int) -> tuple[int, int]:
        toks = self.s.tokens
        changed = True
        while changed and start < end:
            changed = False
            # a leading redirect word
            for w in self.redirect:
                fs = self._fold_index(self.offsets[start][0])
                if fs is not None and self.folded.startswith(w, fs):
                    last = fs + len(w) - 1
                    t_last = self.char_token[last] if last < len(self.char_token) else None
                    if (
                        t_last is not None
                        and t_last < end - 1
                        and self.offsets[t_last][1] == self.fends[last]
                    ):
                        nxt = self.offsets[t_last + 1][0]
                        if nxt > self.offsets[t_last][1] or toks[t_last + 1] == "#":  # followed by a space
                            start = t_last + 1
                            changed = True
                            break
            while start < end and self.tok_word[start] == 0:
                start += 1
                changed = True
            while start < end and self.tok_word[end - 1] == 0 and not self._closing_kept(start, end):
                end -= 1
                changed = True
        return start, end

    def _closing_kept(self, start: int, end: int) -> bool:
        """A closing bracket at the end stays when its opening bracket is inside the span."""
        tok = self.text[self.offsets[end - 1][0] : self.offsets[end - 1][1]].strip()
        pairs = {")": "(", "）": "（", "]": "[", "」": "「", "』": "『", "》": "《"}
        if tok not in pairs:
            return False
        inner = self.text[self.offsets[start][0] : self.offsets[end - 1][0]]
        return inner.count(pairs[tok]) > inner.count(tok)

    def _fold_index(self, char_pos: int) -> int | None:
        k = bisect_left(self.fstarts, char_pos)
        return k if k < len(self.fstarts) else None


def _find_all(hay: str, needle: str) -> list[int]:
    out, i = [], hay.find(needle)
    while i != -1:
        out.append(i)
        i = hay.find(needle, i + 1)
    return out


def _longest_common(a: str, b: str) -> tuple[int, list[int]]:
    """Length of the longest common substring of a (candidate) and b (text), and every end position in b.

    Binary search on the length with sets of substrings: O((|a| + |b|) log min(|a|, |b|)) slices instead of the
    O(|a| |b|) dynamic programme, which matters for long chatty answers against long sentences.
    """

    def shared(length: int) -> set[str]:
        if length == 0:
            return {""}
        in_b = {b[i : i + length] for i in range(len(b) - length + 1)}
        return {a[i : i + length] for i in range(len(a) - length + 1)} & in_b

    lo, hi = 0, min(len(a), len(b))
    while lo < hi:  # invariant: a common substring of length lo exists
        mid = (lo + hi + 1) // 2
        if shared(mid):
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        return 0, []
    best = shared(lo)
    return lo, [i + lo for i in range(len(b) - lo + 1) if b[i : i + lo] in best]


def _rank(occ: _Occurrence) -> tuple:
    return (occ.reason is None, occ.aligned, -occ.fstart)


def recover_span(
    answer: str,
    sentence: Sentence,
    entity_type: str,
    taken: Iterable[int] | Sequence[Span] | None = None,
    language: Language | str | None = None,
    *,
    n_entities: int | None = None,
) -> Recovery:
    """Recover the token span that `answer` names in `sentence`, typed `entity_type` (see the module doc).

    `taken`: token indices or spans already recovered for this sentence; `language`: the run's `Language` (a
    bare code is looked up in the shipped table; default: the sentence's code);
    `n_entities`: how many English entities were asked for this sentence (for the whole-sentence rule).
    """
    if entity_type not in ENTITY_TYPES:
        return Recovery(None, reason="unknown_type")
    candidates = clean_answer(answer)
    if not candidates:
        return Recovery(None, reason="empty_answer")
    if not sentence.tokens:
        return Recovery(None, reason="no_match", candidate=candidates[0])
    info = _lang_info(sentence, language)
    matcher = _Matcher(sentence, info, n_entities)
    taken_set = _taken_tokens(taken)
    folded_cands = [fold(c)[0] for c in candidates]
    failures: list[_Occurrence] = []

    def best_of(occs: list[_Occurrence]) -> _Occurrence | None:
        free = [o for o in occs if o.reason is None]
        return max(free, key=_rank) if free else None

    # 1. exact occurrences of a whole candidate, most specific candidate first
    for ci, fc in enumerate(folded_cands):
        if not fc:
            continue
        cw = sum(1 for ch in fc if _is_word_char(ch))
        occs = [
            matcher.evaluate(_Occurrence(p, p + len(fc), ci, True), cw, taken_set)
            for p in _find_all(matcher.folded, fc)
        ]
        failures.extend(occs)
        hit = best_of(occs)
        if hit is not None:
            return _result(hit, sentence, candidates, entity_type)
    # 2. longest common substring, most specific candidate first
    best_len = 0
    for ci, fc in enumerate(folded_cands):
        cw = sum(1 for ch in fc if _is_word_char(ch))
        length, ends = _longest_common(fc, matcher.folded)
        best_len = max(best_len, length)
        if length == 0:
            continue
        occs = [matcher.evaluate(_Occurrence(e - length, e, ci, False), cw, taken_set) for e in ends]
        failures.extend(occs)
        hit = best_of(occs)
        if hit is not None:
            return _result(hit, sentence, candidates, entity_type)
    if best_len == 0:
        return Recovery(None, reason="no_match", candidate=candidates[0])
    for reason in ("overlap", "whole_sentence", "too_long", "below_min_match"):
        for occ in failures:
            if occ.reason == reason:
                cs = occ.char_span
                return Recovery(
                    None,
                    char_span=cs,
                    matched_text=sentence.text[cs[0] : cs[1]] if cs else None,
                    reason=reason,
                    candidate=candidates[occ.cand_index],
                    exact=occ.exact,
                )
    return Recovery(None, reason="no_match", candidate=candidates[0])


def _result(occ: _Occurrence, sentence: Sentence, candidates: list[str], entity_type: str) -> Recovery:
    assert occ.tokens is not None and occ.char_span is not None
    cs, ce = occ.char_span
    return Recovery(
        Span(occ.tokens[0], occ.tokens[1], entity_type),
        char_span=(cs, ce),
        matched_text=sentence.text[cs:ce],
        reason=None,
        candidate=candidates[occ.cand_index],
        exact=occ.exact,
    )


def spans_from_recoveries(recoveries: Iterable[Recovery]) -> list[Span]:
    """The recovered spans, sorted (recoveries never overlap when made with `taken`; later overlaps dropped)."""
    spans: list[Span] = []
    used: set[int] = set()
    for rec in recoveries:
        sp = rec.span
        if sp is None or any(i in used for i in range(sp.start, sp.end)):
            continue
        used.update(range(sp.start, sp.end))
        spans.append(sp)
    return sorted(spans)
