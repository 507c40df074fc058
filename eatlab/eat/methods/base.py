"""The method interface: sentences in, `SentenceResult`s (predicted spans, per-stage details) out.

A method composes the shared stages of `eatlab.eat.stages` over one `StageContext`. It is built from its
`method` config node by `hydra.utils.instantiate` (see `eatlab.eat.methods.build_method`): the node's keys are
its constructor's keyword parameters; `ctx` is always passed, `extractor` only when the constructor has such a
parameter (so a method that needs no English NER never loads one).
"""

from __future__ import annotations

import abc
from collections import Counter

from eatlab.data.record import Sentence
from eatlab.eat.stages import SentenceResult, StageContext, StageTimer


class Method(abc.ABC):
    """One way of turning source sentences into predicted spans."""

    # fixed prompt rounds, e.g. {"forward": 1}: the method's definition; asking for others is a ConfigError
    fixed_rounds: dict[str, int] = {}

    def __init__(self, ctx: StageContext, name: str):
        self.ctx = ctx
        self.name = name
        self.extractor = None  # the English NER model, for methods that use one

    @abc.abstractmethod
    def run(self, sentences: list[Sentence]) -> list[SentenceResult]:
        """Results in sentence order, one per sentence."""

    # what the run records: read from the shared context
    @property
    def prompts(self):
        return self.ctx.prompts

    @property
    def counts(self) -> Counter:
        return self.ctx.counts

    @property
    def answer_faults(self) -> dict[str, Counter]:
        return self.ctx.answer_faults

    @property
    def timer(self) -> StageTimer:
        return self.ctx.timer
