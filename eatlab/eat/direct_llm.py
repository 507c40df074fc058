"""Direct LLM NER baseline: the LLM lists the entities of the source sentence in the source language.

Round 1 asks for `(TYPE, entity)` pairs copied from the sentence (the prompt set's `direct` prompt); with
`method.rounds=2` a second round asks the model to check that every entity is copied exactly. The pairs are
snapped onto the sentence with the pipeline's span recovery, so EAT and this baseline differ only in how the
entities are found.
"""

from __future__ import annotations

import time

from eatlab.eat.artifacts import messages_hash
from eatlab.llm.conversation import round_settings, sanitize_reply
from eatlab.llm.parse import parse_entity_list
from eatlab.eat.pipeline import EATPipeline, SentenceResult
from eatlab.eat.recovery import recover_span

CHECK_ROUND = (
    "Check your list: every entity must be copied exactly, character for character, from the sentence. "
    "Answer again with the corrected list only, in the form (TYPE, entity)."
)


class DirectLLMPipeline(EATPipeline):
    rounds = 1

    def run(self, sentences) -> list[SentenceResult]:
        results = [SentenceResult(s, s.text[: self.max_sentence_chars]) for s in sentences]
        t0 = time.perf_counter()
        convs, budget = [], 128
        for r in results:
            conv, budget = self.prompts.single_turn(
                "direct", self.prompts.values(self.language.name, sentence=r.source)
            )
            convs.append(conv)
        settings = round_settings(self.generation, budget)
        for k in range(self.rounds):
            if k:
                for c in convs:
                    c.append({"role": "user", "content": CHECK_ROUND})
            replies = self.client.chat(convs, settings, stage="direct")
            for c, rep in zip(convs, replies):
                self.counts.update(sanitize_reply(rep))
                c.append({"role": "assistant", "content": rep.text})
        self.timer.add("direct", t0)
        t0 = time.perf_counter()
        records = []
        for r, conv in zip(results, convs):
            answer = conv[-1]["content"]
            r.entities = parse_entity_list(answer)
            for typ, ent in r.entities:
                rec = recover_span(
                    ent, r.sentence, typ, r.pred_spans, self.language.code, n_entities=len(r.entities)
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
                    "answer": answer,
                    "entities": [list(e) for e in r.entities],
                    "spans": [[a["span"].start, a["span"].end] if a["span"] else None for a in r.alignments],
                    "dropped": [[a["phrase"], a["reason"]] for a in r.alignments if a["span"] is None],
                    "messages": conv,
                    "messages_sha256": messages_hash(conv),
                }
            )
        self.art_backward.write(records)
        self.timer.add("recovery", t0)
        return results
