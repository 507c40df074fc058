"""Plain translate-test baseline: one-round translation, English NER, alignment without the backward LLM.

Each English entity is snapped onto the source by string matching (the entity itself, e.g. Latin names kept
in the source) and, failing that, by fuzzy matching of its transliteration against the romanised source
tokens (anyascii romanises every script; rapidfuzz scores windows of 1 to 4 tokens, or 1 to 12 characters
for zh/ja). A window scoring below `min_score` is not a span.
"""

from __future__ import annotations

import time

from anyascii import anyascii
from rapidfuzz import fuzz

from eatlab.data.bio import Span
from eatlab.data.record import Sentence
from eatlab.eat import stages
from eatlab.eat.methods.base import Method
from eatlab.eat.recovery import recover_span
from eatlab.eat.stages import SentenceResult, StageContext
from eatlab.extractors.base import Extractor


def _romanise(text: str) -> str:
    return "".join(ch for ch in anyascii(text).casefold() if ch.isalnum())


def fuzzy_align(phrase: str, result: SentenceResult, min_score: float) -> tuple[Span | None, float]:
    """Best window of source tokens whose romanisation matches the English phrase's; None below min_score."""
    sent = result.sentence
    target = _romanise(phrase)
    if not target:
        return None, 0.0
    taken = {i for sp in result.pred_spans for i in range(sp.start, sp.end)}
    max_len = 12 if sent.char_tokenized else 4
    best: tuple[float, int, int] | None = None
    for i in range(len(sent.tokens)):
        for j in range(i + 1, min(len(sent.tokens), i + max_len) + 1):
            if any(k in taken for k in range(i, j)):
                break
            cand = _romanise("".join(sent.tokens[i:j]))
            if not cand:
                continue
            score = fuzz.ratio(cand, target) / 100.0
            if best is None or score > best[0]:
                best = (score, i, j)
    if best is None or best[0] < min_score:
        return None, best[0] if best else 0.0
    return Span(best[1], best[2], "X"), best[0]


class TranslateTest(Method):
    """One-round forward translation + English NER + string/fuzzy alignment (no backward LLM)."""

    fixed_rounds = {"forward": 1}  # plain translate-test is one-round translation by definition

    def __init__(
        self, ctx: StageContext, extractor: Extractor, min_score: float = 0.6, name: str = "translate_test"
    ):
        super().__init__(ctx, name)
        self.extractor = extractor
        self.min_score = float(min_score)

    def run(self, sentences: list[Sentence]) -> list[SentenceResult]:
        results = stages.prepare(self.ctx, sentences)
        stages.translate_forward(self.ctx, results)
        stages.extract(self.ctx, self.extractor, results)
        self.align_by_string(results)
        return results

    def align_by_string(self, results: list[SentenceResult]) -> None:
        ctx = self.ctx
        t0 = time.perf_counter()
        records = []
        for r in results:
            for typ, phrase in r.entities:
                rec = recover_span(
                    phrase, r.sentence, typ, r.pred_spans, ctx.language.code, n_entities=len(r.entities)
                )
                span, how, score = rec.span, "exact", 1.0
                if span is None:
                    fz, score = fuzzy_align(phrase, r, self.min_score)
                    span, how = (Span(fz.start, fz.end, typ), "fuzzy") if fz else (None, None)
                if span is not None:
                    r.pred_spans.append(span)
                reason = None if span else "no_fuzzy_match"
                r.alignments.append(
                    {"type": typ, "phrase": phrase, "answer": phrase, "span": span, "reason": reason}
                )
                records.append(
                    {
                        "sentence_id": r.sentence.id,
                        "type": typ,
                        "phrase": phrase,
                        "span": [span.start, span.end] if span else None,
                        "method": how,
                        "score": round(score, 4),
                        "dropped_reason": reason,
                    }
                )
            r.pred_spans.sort()
        ctx.art_backward.write(records)
        ctx.timer.add("recovery", t0)
