"""The reference release's span recovery, reimplemented to report what it gets from the same answers as ours.

Reimplemented from METHOD.md's description and checked against the behaviour of the reference repository
(ZelateCalcite/EAT_NER: its answer post-processing, its prediction filter and its evaluation's placement step);
no code is copied. What each step does and where it comes from:

1. **Answer -> string** (confirmed from the code). If the answer contains any CJK ideograph U+4E00-U+9FA5, every
   maximal run of such ideographs in the answer is compared character by character with the sentence text and
   the longest contiguous shared run wins (the first one found on ties; kana, Hangul, digits and Latin letters
   never take part). Otherwise the answer (newlines and `**` read as spaces) and the sentence are split on
   single spaces and the longest contiguous run of equal tokens wins (the first in answer order on ties),
   joined with spaces. This applies to every language, so a kana-only or Hangul answer is only recovered when
   it reproduces whole space-separated tokens of the sentence, punctuation included. An empty run, or a
   string that is not a substring of the sentence, drops the entity. The sentence is the text the reference
   sends to the LLM: zh/ja characters joined with `#` read as a space and `'''` replaced by `'`; other
   languages tokens joined by single spaces.
2. **Prediction filter** (confirmed from the code; not in METHOD.md). Before scoring, each string is split on
   spaces and the tokens `REDIRECCIÓN`, `WEITERLEITUNG`, `'`, `''`, `` ` ``, ``` `` ```, `"`, `""` (compared in
   upper case) are removed.
3. **Placement** (METHOD.md, step 3 of the reference scorer; confirmed from the code). Strings are placed in
   order at their first occurrence whose first unit is still unlabelled; all its units get the type, even
   units an earlier string already labelled. zh/ja units are the characters of the text with spaces written as
   `#` (non-overlapping matches, left to right), so a string with a space is never placed; other languages
   match the whole token list after removing `( digits )` patterns.
4. **Spans** (ours, for entity-level scoring). The reference labels units with bare types; here each unit also
   remembers which string labelled it last, and spans are the maximal runs of one string's units, mapped back
   to the sentence's tokens (a `'''` unit covers its three `'` tokens).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from eatlab.data.bio import Span, spans_to_tags
from eatlab.data.record import SPACE_TOKEN, Sentence

_CJK_RUN = re.compile("[\u4e00-\u9fa5]+")
_STOP_TOKENS = {"REDIRECCIÓN", "WEITERLEITUNG", "'", "''", "``", "`", '"', '""'}
_DIGIT_PARENS = re.compile(r"\( \d+ \)")
REFERENCE_CHAR_LANGUAGES = ("zh", "ja")


def _longest_shared_run(a: Sequence, b: Sequence) -> list:
    """The longest contiguous run of `a` that also occurs in `b` (the earliest end in `a` on ties)."""
    best, best_end = 0, -1
    prev = [0] * (len(b) + 1)
    for i, x in enumerate(a):
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            if x == y:
                cur[j] = prev[j - 1] + 1
                if cur[j] > best:
                    best, best_end = cur[j], i
        prev = cur
    return list(a[best_end - best + 1 : best_end + 1]) if best else []


def is_reference_char_language(sentence: Sentence) -> bool:
    """The reference treats exactly zh and ja as character-level ("zh" mode)."""
    return sentence.language in REFERENCE_CHAR_LANGUAGES or sentence.char_tokenized


def reference_text(sentence: Sentence) -> tuple[str, list[tuple[int, int]]]:
    """The sentence as the reference builds it, with each character's (first, last+1) token for zh/ja.

    zh/ja: tokens joined, `#` read as a space, then every `'''` replaced by `'` (left to right, like re.sub).
    Others: tokens joined by single spaces (the token map is then unused and empty).
    """
    if not is_reference_char_language(sentence):
        return " ".join(sentence.tokens), []
    chars: list[str] = []
    owner: list[int] = []
    for t, tok in enumerate(sentence.tokens):
        piece = " " if tok == SPACE_TOKEN else tok
        chars.extend(piece)
        owner.extend([t] * len(piece))
    text: list[str] = []
    units: list[tuple[int, int]] = []
    i = 0
    while i < len(chars):
        if chars[i : i + 3] == ["'", "'", "'"]:
            text.append("'")
            units.append((owner[i], owner[i + 2] + 1))
            i += 3
        else:
            text.append(chars[i])
            units.append((owner[i], owner[i] + 1))
            i += 1
    return "".join(text), units


def reference_answer_string(answer: str, sentence_text: str) -> str:
    """The string the reference keeps from an answer ('' when it drops the entity)."""
    if not isinstance(answer, str):
        return ""
    if _CJK_RUN.search(answer):
        result = ""
        for run in _CJK_RUN.findall(answer):
            shared = "".join(_longest_shared_run(list(run), list(sentence_text)))
            if len(shared) > len(result):
                result = shared
    else:
        flat = answer.replace("\n", " ").replace("**", " ")
        tokens = [t for t in flat.split(" ") if t != ""]
        result = " ".join(_longest_shared_run(tokens, sentence_text.split(" ")))
    return result if result and result in sentence_text else ""


def reference_filter(string: str) -> str:
    """The reference's prediction filter: drop redirect-word and quote tokens (space-split, upper-cased)."""
    return " ".join(t for t in string.split(" ") if t.upper() not in _STOP_TOKENS)


@dataclass
class ReferenceResult:
    """What the reference recovery gives for one sentence."""

    strings: list[str]  # per answer: the kept string ('' = dropped), after the prediction filter
    spans: list[Span]  # token spans after placement (sorted, non-overlapping)
    # per answer: whether its string still labels some unit after placement
    placed: list[bool] = field(default_factory=list)

    def tags(self, n_tokens: int) -> list[str]:
        return spans_to_tags(self.spans, n_tokens)


def reference_place(items: Sequence[tuple[str, str]], sentence: Sentence) -> tuple[list[Span], list[bool]]:
    """Place (string, type) pairs like the reference scorer and return token spans and which items survived."""
    text, units = reference_text(sentence)
    char_mode = is_reference_char_language(sentence)
    seq = list(text.replace(" ", "#")) if char_mode else text.split(" ")
    label: list[int | None] = [None] * len(seq)  # index of the item that labelled each unit last
    hay = "".join(seq)
    for k, (string, _typ) in enumerate(items):
        if not string:
            continue  # the reference places nothing for an empty string
        if char_mode:
            for m in re.finditer(re.escape(string), hay):
                if m.start() >= len(label) or label[m.start()] is not None:
                    continue
                for u in range(m.start(), m.end()):
                    label[u] = k
                break
        else:
            words = _DIGIT_PARENS.sub("", string).strip().split(" ")
            n = len(words)
            for i in range(len(seq) - n + 1):
                if seq[i : i + n] == words and label[i] is None:
                    for u in range(i, i + n):
                        label[u] = k
                    break
    # units -> tokens (a token takes the label of its first unit), then runs of one item -> spans
    n_tok = len(sentence.tokens)
    tok_label: list[int | None] = [None] * n_tok
    if char_mode:
        seen: set[int] = set()
        for u, (t0, t1) in enumerate(units):
            for t in range(t0, t1):
                if t not in seen:  # a multi-character token takes its first character's label
                    seen.add(t)
                    tok_label[t] = label[u]
    else:
        tok_label = label[:n_tok]
    spans: list[Span] = []
    t = 0
    while t < n_tok:
        k = tok_label[t]
        if k is None:
            t += 1
            continue
        e = t + 1
        while e < n_tok and tok_label[e] == k:
            e += 1
        spans.append(Span(t, e, items[k][1]))
        t = e
    placed = [any(lab == k for lab in tok_label) for k in range(len(items))]
    return spans, placed


def reference_recover_sentence(answers: Sequence[tuple[str, str]], sentence: Sentence) -> ReferenceResult:
    """Run the reference recovery on (answer, type) pairs of one sentence, in the English NER's order."""
    text, _ = reference_text(sentence)
    strings = [reference_filter(reference_answer_string(a, text)) for a, _ in answers]
    spans, placed = reference_place([(s, t) for s, (_, t) in zip(strings, answers)], sentence)
    return ReferenceResult(strings, spans, placed)
