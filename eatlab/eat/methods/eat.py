"""EAT: forward MrCoT translation, English NER, backward MrCoT alignment, span recovery."""

from __future__ import annotations

from eatlab.data.record import Sentence
from eatlab.eat import stages
from eatlab.eat.methods.base import Method
from eatlab.eat.stages import SentenceResult, StageContext
from eatlab.extractors.base import Extractor


class EAT(Method):
    def __init__(self, ctx: StageContext, extractor: Extractor, name: str = "eat"):
        super().__init__(ctx, name)
        self.extractor = extractor

    def run(self, sentences: list[Sentence]) -> list[SentenceResult]:
        results = stages.prepare(self.ctx, sentences)
        stages.translate_forward(self.ctx, results)
        stages.extract(self.ctx, self.extractor, results)
        stages.recover_spans(self.ctx, stages.align_backward(self.ctx, results), results)
        return results
