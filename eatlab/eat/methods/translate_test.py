"""Plain translate-test baseline: one-round translation, English NER, alignment without the backward LLM.

Each English entity is snapped onto the source by string matching (the entity itself, e.g. Latin names kept
in the source) and, failing that, by fuzzy matching of its transliteration against the romanised source
tokens (anyascii romanises every script; rapidfuzz scores windows of 1 to 4 tokens, or 1 to 12 characters
for zh/ja). A window scoring below `min_score` is not a span. Composed of the shared stages (`translate_forward`,
`extract`, `place_answers` with the fuzzy match as its fallback), so its records have EAT's layouts.
"""

from __future__ import annotations

from anyascii import anyascii
from rapidfuzz import fuzz

from eatlab.data.bio import Span
from eatlab.data.record import Sentence
from eatlab.eat import stages
from eatlab.eat.methods.base import Method
from eatlab.eat.stages import Answer, Placement, SentenceResult, StageContext
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
        # no backward LLM: each English entity is its own answer, found verbatim (recovery) or by its sound
        answers = [Answer(r, typ, phrase, phrase) for r in results for typ, phrase in r.entities]
        stages.place_answers(self.ctx, answers, results, fallback=self.fuzzy)
        return results

    def fuzzy(self, answer: Answer, dropped: Placement) -> Placement:
        """The best window of romanised source tokens, for an entity that recovery could not find verbatim."""
        span, score = fuzzy_align(answer.phrase, answer.result, self.min_score)
        if span is None:
            return Placement(None, score=round(score, 4), reason="no_fuzzy_match")
        sent = answer.result.sentence
        matched = sent.text[sent.offsets[span.start][0] : sent.offsets[span.end - 1][1]]
        return Placement(Span(span.start, span.end, answer.type), "fuzzy", matched, round(score, 4))
