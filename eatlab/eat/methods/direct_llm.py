"""Direct LLM NER baseline: the LLM lists the entities of the source sentence in the source language.

Round 1 asks for `(TYPE, entity)` pairs copied from the sentence (the prompt set's `direct` prompt); with
`method.rounds=2` a second round asks the model to check that every entity is copied exactly. The pairs are
snapped onto the sentence with the pipeline's span recovery, so EAT and this baseline differ only in how the
entities are found.
"""

from __future__ import annotations

import time

from eatlab.data.record import Sentence
from eatlab.eat import stages
from eatlab.eat.artifacts import messages_hash
from eatlab.eat.methods.base import Method
from eatlab.eat.recovery import recover_span
from eatlab.eat.stages import SentenceResult, StageContext

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
        convs = stages.list_entities(ctx, results, self.rounds, CHECK_ROUND)
        t0 = time.perf_counter()
        records = []
        for r, conv in zip(results, convs):
            for typ, ent in r.entities:
                rec = recover_span(
                    ent, r.sentence, typ, r.pred_spans, ctx.language.code, n_entities=len(r.entities)
                )
                if rec.span is not None:
                    r.pred_spans.append(rec.span)
                r.alignments.append(
                    {"type": typ, "phrase": ent, "answer": ent, "span": rec.span, "reason": rec.reason}
                )
            r.pred_spans.sort()
            records.append(
                {
                    "sentence_id": r.sentence.id,
                    "text": r.source,
                    "answer": conv[-1]["content"],
                    "entities": [list(e) for e in r.entities],
                    "spans": [[a["span"].start, a["span"].end] if a["span"] else None for a in r.alignments],
                    "dropped": [[a["phrase"], a["reason"]] for a in r.alignments if a["span"] is None],
                    "messages": conv,
                    "messages_sha256": messages_hash(conv),
                }
            )
        ctx.art_backward.write(records)
        ctx.timer.add("recovery", t0)
        return results
