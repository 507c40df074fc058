"""Direct LLM NER baseline: the LLM lists the entities of the source sentence in the source language.

Round 1 asks for `(TYPE, entity)` pairs copied from the sentence (the prompt set's `direct` prompt); with
`method.rounds=2` a second round asks the model to check that every entity is copied exactly. The pairs are
snapped onto the sentence with the pipeline's span recovery, so EAT and this baseline differ only in how the
entities are found. Composed of the shared stages: `list_entities` (records the conversation in `ner.jsonl`),
then `place_answers` (records each entity in `backward.jsonl`, in the layout EAT's records have).
"""

from __future__ import annotations

from eatlab.data.record import Sentence
from eatlab.eat import stages
from eatlab.eat.methods.base import Method
from eatlab.eat.stages import Answer, SentenceResult, StageContext

CHECK_ROUND = (
    "Check your list: every entity must be copied exactly, character for character, from the sentence. "
    "Answer again with the corrected list only, in the form (TYPE, entity)."
)


class DirectLLM(Method):
    """No translation and no English NER: the LLM lists the entities; spans are recovered as in EAT."""

    def __init__(self, ctx: StageContext, rounds: int = 1, name: str = "direct_llm"):
        super().__init__(ctx, name)
        self.rounds = int(rounds)

    def run(self, sentences: list[Sentence]) -> list[SentenceResult]:
        ctx = self.ctx
        results = stages.prepare(ctx, sentences)
        stages.list_entities(ctx, results, self.rounds, CHECK_ROUND, self.name)
        # each listed entity is its own answer: placed as it was copied, with no conversation of its own
        answers = [Answer(r, typ, ent, ent) for r in results for typ, ent in r.entities]
        stages.place_answers(ctx, answers, results)
        return results
