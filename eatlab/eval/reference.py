"""The EAT reference release's token-level scorer, reproduced with its quirks (METHOD.md, "Its scorer").

It is kept only so that eatlab's results can be set against the paper; eatlab's primary number is entity F1
(`eatlab.eval.entity`). Per sentence:

1. Units: zh/ja (character-tokenized) use the characters of the text, built as tokens joined, `#` read as a
   space, `'''` replaced by `'`, then every space written back as `#`. Other languages use the space-separated
   tokens.
2. Entities (gold and predicted alike) come from reference chunking: any `B-`/`I-` starts one, following `I-`
   tags of any type continue it, the first tag gives the type. Its string is its tokens joined like the text.
3. Each string is placed at the first occurrence whose first unit is still `O`, and all its units get the type.
   zh/ja: occurrences are the non-overlapping left-to-right matches of the string in the text (so a string with
   a space never matches: the text has `#` there). Others: exact matches of the whole token list after removing
   `( digits )` from the string. Not found: nothing placed.
4. Sentences without gold entities are skipped.
5. Micro/macro/weighted F1 over the unit labels ORG, LOC, PER (O excluded); undefined ratios count as 0.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from eatlab.data.bio import tags_to_spans

REFERENCE_LABELS = ("ORG", "LOC", "PER")
_DIGITS_IN_PARENS = re.compile(r"\( \d+ \)")
_O = "O"


def _char_units_text(tokens: Sequence[str]) -> str:
    text = "".join(tokens).replace("#", " ")
    text = re.sub("'''", "'", text)
    return text.replace(" ", "#")


def _place_in_text(labels: list[str], text: str, word: str, typ: str) -> None:
    """First non-overlapping match (re.finditer order) whose first character is still O."""
    if not word:
        return
    pos = text.find(word)
    while pos != -1:
        if labels[pos] == _O:
            labels[pos : pos + len(word)] = [typ] * len(word)
            return
        pos = text.find(word, pos + len(word))


def _place_in_tokens(labels: list[str], units: list[str], word: str, typ: str) -> None:
    """First exact match of the token list (after removing `( digits )`) whose first token is still O."""
    words = _DIGITS_IN_PARENS.sub("", word).strip().split(" ")
    n = len(words)
    for i in range(len(units) - n + 1):
        if units[i : i + n] == words and labels[i] == _O:
            labels[i : i + n] = [typ] * n
            return


def reference_unit_labels(tokens: Sequence[str], tags: Sequence[str], char_tokenized: bool) -> list[str]:
    """The reference scorer's label per unit (character or token) for one tag sequence over `tokens`."""
    tokens = list(tokens)
    if char_tokenized:
        text = _char_units_text(tokens)
        labels = [_O] * len(text)
        for span in tags_to_spans(list(tags), "reference"):
            word = "".join(tokens[span.start : span.end]).replace("#", " ")
            _place_in_text(labels, text, word, span.type)
    else:
        units = " ".join(tokens).split(" ")
        labels = [_O] * len(units)
        for span in tags_to_spans(list(tags), "reference"):
            _place_in_tokens(labels, units, " ".join(tokens[span.start : span.end]), span.type)
    return labels


def reference_label_counts(
    gold_tags: Sequence[Sequence[str]],
    pred_tags: Sequence[Sequence[str]],
    tokens: Sequence[Sequence[str]],
    char_tokenized: bool,
) -> dict[str, tuple[int, int, int]]:
    """(tp, pred, gold) unit counts per label in REFERENCE_LABELS over sentences that have a gold entity."""
    if not len(gold_tags) == len(pred_tags) == len(tokens):
        raise ValueError(
            f"{len(gold_tags)} gold, {len(pred_tags)} predicted and {len(tokens)} token sentences differ"
        )
    counts = {lab: [0, 0, 0] for lab in REFERENCE_LABELS}
    for k, (g, p, toks) in enumerate(zip(gold_tags, pred_tags, tokens)):
        if not len(g) == len(p) == len(toks):
            raise ValueError(
                f"sentence {k + 1}: {len(toks)} tokens, {len(g)} gold and {len(p)} predicted tags"
            )
        if not tags_to_spans(list(g), "reference"):
            continue  # the reference skips sentences without gold entities
        gold_units = reference_unit_labels(toks, g, char_tokenized)
        pred_units = reference_unit_labels(toks, p, char_tokenized)
        for gu, pu in zip(gold_units, pred_units):
            if gu in counts:
                counts[gu][2] += 1
                if pu == gu:
                    counts[gu][0] += 1
            if pu in counts:
                counts[pu][1] += 1
    return {lab: (c[0], c[1], c[2]) for lab, c in counts.items()}


def _f1(tp: int, pred: int, gold: int) -> float:
    """F1 as the reference's scikit-learn computed it: 2PR/(P+R), undefined ratios 0."""
    precision = tp / pred if pred else 0.0
    recall = tp / gold if gold else 0.0
    denom = precision + recall
    return 2.0 * precision * recall / denom if denom else 0.0


def reference_scores(
    gold_tags: Sequence[Sequence[str]],
    pred_tags: Sequence[Sequence[str]],
    tokens: Sequence[Sequence[str]],
    char_tokenized: bool,
) -> dict[str, float]:
    """`reference_token_micro_f1`, `reference_token_macro_f1`, `reference_token_weighted_f1`."""
    counts = reference_label_counts(gold_tags, pred_tags, tokens, char_tokenized)
    per_label = [(_f1(*counts[lab]), counts[lab][2]) for lab in REFERENCE_LABELS]
    micro = _f1(*(sum(c[i] for c in counts.values()) for i in range(3)))
    macro = sum(f for f, _ in per_label) / len(per_label)
    support = sum(s for _, s in per_label)
    weighted = sum(f * s for f, s in per_label) / support if support else 0.0
    return {
        "reference_token_micro_f1": micro,
        "reference_token_macro_f1": macro,
        "reference_token_weighted_f1": weighted,
    }
