"""The stages every method is composed of: translate forward, extract, align backward, recover spans.

Each stage is a function of a `StageContext` (the run's client, prompts, language, generation settings, counters
and artifacts) and a batch of `SentenceResult`s, which it fills in. Every stage is batched over the whole batch
(round k of every conversation in one LLM-layer call) and writes a per-sample JSONL artifact to the run dir.
Scoring happens once over all batches (eatlab.eat.evaluate).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from eatlab.data.bio import Span, spans_to_tags
from eatlab.data.languages import Language
from eatlab.data.record import Sentence
from eatlab.eat.artifacts import JsonlArtifact, messages_hash
from eatlab.eat.recovery import recover_span
from eatlab.extractors.base import Extractor
from eatlab.llm.answers import scripts, wrong_script
from eatlab.llm.base import settings_for_round
from eatlab.llm.conversation import ConversationResult, run_conversations, sanitize_reply
from eatlab.llm.parse import parse_entity_list
from eatlab.llm.prompts import PromptSet
from eatlab.rundir import BACKWARD, FORWARD, NER, artifact_name
from eatlab.utils.io import sha256_text

log = logging.getLogger(__name__)
MIN_FORWARD_CHARS = 2  # shorter sentences skip the LLM: their "translation" is the text itself
ENGLISH_SCRIPTS = frozenset({"LATIN"})
# counts that metrics.json always carries (0 when nothing happened), so that a sweep table has every column
COUNT_KEYS = (
    "failed_forward", "failed_ner", "failed_backward", "truncated_sentences", "skipped_short",
    "empty_answers", "truncated_answers", "control_chars_stripped", "wrong_script_answers",
    "unconstrained_answers",
)  # fmt: skip


@dataclass
class SentenceResult:
    """Everything the stages produced for one sentence."""

    sentence: Sentence
    source: str  # the text sent to the LLM (truncated if too long)
    english: str = ""
    forward_error: str | None = None
    entities: list[tuple[str, str]] = field(default_factory=list)
    alignments: list[dict] = field(default_factory=list)  # one per English entity: answer, span, reason
    pred_spans: list[Span] = field(default_factory=list)
    truncated: bool = False

    @property
    def pred_tags(self) -> list[str]:
        return spans_to_tags(self.pred_spans, len(self.sentence.tokens))

    @property
    def n_unrecovered(self) -> int:
        return sum(1 for a in self.alignments if a["span"] is None)


@dataclass
class StageTimer:
    seconds: Counter = field(default_factory=Counter)

    def add(self, stage: str, t0: float) -> None:
        self.seconds[stage] += time.perf_counter() - t0


class StageContext:
    """What the stages of one run share: the LLM client, prompt set, language, generation settings, the
    per-stage JSONL artifacts of the run dir, stage timings, counts and model-answer faults."""

    def __init__(
        self,
        client,
        prompts: PromptSet,
        language: Language,
        generation: dict,
        run_dir: Path,
        max_sentence_chars: int = 1000,
        constrained_alignment: bool = False,
        alignment_select: dict | None = None,
    ):
        self.client = client
        # the final backward round may only copy text of the source sentence (eatlab.llm.constraint), chosen
        # as `alignment_select` says (GenerationSettings fields: substring_select, max_span_words/chars)
        self.constrained_alignment = bool(constrained_alignment)
        self.alignment_select = dict(alignment_select or {})
        self.prompts = prompts
        self.language = language
        self.generation = dict(generation)
        self.max_sentence_chars = int(max_sentence_chars)
        run_dir = Path(run_dir)
        self.art_forward = JsonlArtifact(run_dir / artifact_name(FORWARD))
        self.art_ner = JsonlArtifact(run_dir / artifact_name(NER))
        self.art_backward = JsonlArtifact(run_dir / artifact_name(BACKWARD))
        self.timer = StageTimer()
        self.counts: Counter = Counter({k: 0 for k in COUNT_KEYS})
        # model faults per stage: {stage: {empty_answers|truncated_answers|control_chars_stripped|
        # wrong_script_answers: n}}; their totals are in `counts`
        self.answer_faults: dict[str, Counter] = {}
        self.last_error: str | None = None  # of a request that failed after its retries (error.json names it)

    def count_faults(self, stage: str, faults: Counter) -> None:
        faults = +faults  # drop zeros
        if faults:
            self.answer_faults.setdefault(stage, Counter()).update(faults)
            self.counts.update(faults)

    def stage_errors(self, stage: str) -> int:
        counters = getattr(self.client, "counters", None)
        c = counters.get(stage) if isinstance(counters, dict) else None
        return int(getattr(c, "llm_errors", 0) or 0)


def prepare(ctx: StageContext, sentences: list[Sentence]) -> list[SentenceResult]:
    """One result per sentence; a source longer than `max_sentence_chars` is truncated, counted and logged."""
    results = []
    for s in sentences:
        src = s.text
        truncated = len(src) > ctx.max_sentence_chars
        if truncated:
            src = src[: ctx.max_sentence_chars]
            ctx.counts["truncated_sentences"] += 1
            log.warning("%s: sentence longer than %d characters, truncated", s.id, ctx.max_sentence_chars)
        results.append(SentenceResult(s, src, truncated=truncated))
    return results


def translate_forward(ctx: StageContext, results: list[SentenceResult]) -> None:
    """The forward MrCoT conversations: `english` of every result (very short sources skip the LLM)."""
    t0 = time.perf_counter()
    todo = [r for r in results if len(r.source.strip()) >= MIN_FORWARD_CHARS]
    for r in results:
        if len(r.source.strip()) < MIN_FORWARD_CHARS:
            r.english = r.source.strip()
            ctx.counts["skipped_short"] += 1
    prompts = ctx.prompts
    values = [prompts.values(ctx.language.name, sentence=r.source) for r in todo]
    starts = [prompts.start(prompts.forward, v) for v in values]
    convs = run_conversations(ctx.client, starts, prompts.forward, values, ctx.generation, "forward")
    for r, c in zip(todo, convs):
        r.english = c.answer
        r.forward_error = c.failed
        if c.failed:
            ctx.counts["failed_forward"] += 1
            ctx.last_error = c.failed
        ctx.count_faults("forward", c.faults)
        if not c.failed and wrong_script(c.answer, ENGLISH_SCRIPTS):
            ctx.count_faults("forward", Counter(wrong_script_answers=1))
            log.warning(
                "%s: the English translation is not in Latin script: %r", r.sentence.id, c.answer[:80]
            )
    conv_of = {r.sentence.id: c for r, c in zip(todo, convs)}
    ctx.art_forward.write([_forward_record(r, conv_of.get(r.sentence.id)) for r in results])
    ctx.timer.add("forward", t0)


def _forward_record(r: SentenceResult, conv: ConversationResult | None) -> dict:
    rec = {
        "sentence_id": r.sentence.id,
        "text": r.source,
        "text_sha256": sha256_text(r.source),
        "truncated": r.truncated,
        "english": r.english,
        "skipped_llm": conv is None,
        "error": r.forward_error,
    }
    if conv is not None:
        rec["messages"] = conv.messages
        rec["messages_sha256"] = messages_hash(conv.messages)
        rec["entropy_mean"] = conv.replies[-1].mean_entropy if conv.replies else None
        rec["entropies"] = conv.replies[-1].entropies if conv.replies else None
        rec["entropy_approx"] = conv.replies[-1].entropy_approx if conv.replies else None
        rec["finish_reasons"] = [rep.finish_reason for rep in conv.replies]
    return rec


def extract(ctx: StageContext, extractor: Extractor, results: list[SentenceResult]) -> None:
    """English NER of the translations; a failed or empty translation has no entities and costs no call."""
    t0 = time.perf_counter()
    todo = [r for r in results if r.english.strip() and not r.forward_error]
    errors_before = ctx.stage_errors("ner")
    lists = extractor.extract([r.english for r in todo]) if todo else []
    ctx.counts["failed_ner"] += ctx.stage_errors("ner") - errors_before
    convs = (getattr(extractor, "last_conversations", None) if todo else None) or [None] * len(todo)
    messages = {}
    for r, ents, c in zip(todo, lists, convs):
        r.entities = [(t, p) for t, p in ents if p and p.strip()]
        messages[r.sentence.id] = c
    ctx.art_ner.write(
        [
            {
                "sentence_id": r.sentence.id,
                "english": r.english,
                "english_sha256": sha256_text(r.english),
                "extractor": extractor.name,
                "entities": [list(e) for e in r.entities],
                **({"messages": messages[r.sentence.id]} if messages.get(r.sentence.id) else {}),
                **(
                    {}
                    if r.sentence.id in messages
                    else {"skipped": "forward failed" if r.forward_error else "empty translation"}
                ),
            }
            for r in results
        ]
    )
    ctx.timer.add("ner", t0)


def align_backward(ctx: StageContext, results: list[SentenceResult]) -> list[tuple]:
    """The backward MrCoT conversations, one per English entity: `[(result, type, phrase, conversation)]`."""
    t0 = time.perf_counter()
    jobs = [(r, typ, phrase) for r in results for typ, phrase in r.entities]
    prompts = ctx.prompts
    values = [prompts.values(ctx.language.name, sentence=r.source, phrase=p) for r, _, p in jobs]
    starts = [prompts.start(prompts.backward, v) for v in values]
    sources = [r.source for r, _, _ in jobs] if ctx.constrained_alignment else None
    convs = run_conversations(
        ctx.client,
        starts,
        prompts.backward,
        values,
        ctx.generation,
        "backward",
        sources,
        ctx.alignment_select,
    )
    ctx.timer.add("backward", t0)
    return [(r, typ, phrase, conv) for (r, typ, phrase), conv in zip(jobs, convs)]


def recover_spans(ctx: StageContext, aligned: list[tuple], results: list[SentenceResult]) -> None:
    """Snap every backward answer onto its sentence (eatlab.eat.recovery); the recovered span gets the English
    entity's type. Writes the backward artifact."""
    t0 = time.perf_counter()
    records = []
    for r, typ, phrase, conv in aligned:
        answer = conv.answer
        ctx.count_faults("backward", conv.faults)
        if conv.failed:
            ctx.counts["failed_backward"] += 1
            ctx.last_error = conv.failed
            rec_span, reason, matched = None, "request_failed", None
        else:
            if wrong_script(answer, frozenset(scripts(r.source))):
                ctx.count_faults("backward", Counter(wrong_script_answers=1))
            rec = recover_span(
                answer, r.sentence, typ, r.pred_spans, ctx.language.code, n_entities=len(r.entities)
            )
            rec_span, reason, matched = rec.span, rec.reason, rec.matched_text
            if rec_span is not None:
                r.pred_spans.append(rec_span)
        r.alignments.append(
            {"type": typ, "phrase": phrase, "answer": answer, "span": rec_span, "reason": reason}
        )
        records.append(
            {
                "sentence_id": r.sentence.id,
                "type": typ,
                "phrase": phrase,
                "answer": answer,
                "span": [rec_span.start, rec_span.end] if rec_span else None,
                "matched_text": matched,
                "dropped_reason": reason if rec_span is None else None,
                "error": conv.failed,
                "messages": conv.messages,
                "messages_sha256": messages_hash(conv.messages),
            }
        )
    for r in results:
        r.pred_spans.sort()
    ctx.art_backward.write(records)
    ctx.timer.add("recovery", t0)


def list_entities(ctx: StageContext, results: list[SentenceResult], rounds: int, check_round: str) -> list:
    """Direct NER in the source language: the prompt set's `direct` prompt, then `rounds - 1` check rounds.
    Fills `entities` with the parsed `(TYPE, entity)` pairs; returns each result's conversation."""
    t0 = time.perf_counter()
    convs, budget = [], 128
    for r in results:
        conv, budget = ctx.prompts.single_turn(
            "direct", ctx.prompts.values(ctx.language.name, sentence=r.source)
        )
        convs.append(conv)
    settings = settings_for_round(ctx.generation, budget)
    for k in range(rounds):
        if k:
            for c in convs:
                c.append({"role": "user", "content": check_round})
        replies = ctx.client.chat(convs, settings, stage="direct")
        for c, rep in zip(convs, replies):
            ctx.last_error = rep.error or ctx.last_error
            ctx.counts.update(sanitize_reply(rep))
            c.append({"role": "assistant", "content": rep.text})
    for r, conv in zip(results, convs):
        r.entities = parse_entity_list(conv[-1]["content"])
    ctx.timer.add("direct", t0)
    return convs
