"""The stages every method is composed of: translate forward, extract, align backward, recover spans.

Each stage is a function of a `StageContext` (the run's client, prompts, language, generation settings, counters
and artifacts) and a batch of `SentenceResult`s, which it fills in. Every stage is batched over the whole batch
(round k of every conversation in one LLM-layer call) and writes a per-sample JSONL artifact to the run dir.
The stages own their records: each artifact has one layout (`forward.jsonl`: FORWARD_KEYS; `ner.jsonl`:
NER_KEYS; `backward.jsonl`: BACKWARD_KEYS, one record per entity placed or dropped), written here whatever the
method, so that every reader reads one layout. Scoring happens once over all batches (eatlab.eat.evaluate).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
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
    "unconstrained_answers", "constraint_violations",
)  # fmt: skip
FORWARD_KEYS = (
    "sentence_id", "text", "text_sha256", "truncated", "english", "skipped_llm", "error", "messages",
    "messages_sha256", "entropy_mean", "entropies", "entropy_approx", "finish_reasons",
)  # fmt: skip
# the one layout of a `ner.jsonl` record (`text`: what the entities were found in: the English translation, or the
# source sentence for direct LLM NER) and of a `backward.jsonl` record (one per entity: placed or dropped)
NER_KEYS = ("sentence_id", "text", "text_sha256", "extractor", "entities", "error", "skipped", "messages")
BACKWARD_KEYS = (
    "sentence_id", "type", "phrase", "answer", "span", "matched_text", "placed_by", "score", "dropped_reason",
    "error", "constraint_violated", "messages", "messages_sha256",
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
        constraint_param: str | None = None,
    ):
        self.client = client
        # the backend node's grammar parameter (`backend.constraint_param`), named when a constraint did not fire
        # and the backend was never built (every answer came from the cache)
        self.constraint_param = constraint_param
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
    """The one `forward.jsonl` layout (FORWARD_KEYS); a sentence too short for the LLM has no conversation."""
    last = conv.replies[-1] if conv is not None and conv.replies else None
    return {
        "sentence_id": r.sentence.id,
        "text": r.source,
        "text_sha256": sha256_text(r.source),
        "truncated": r.truncated,
        "english": r.english,
        "skipped_llm": conv is None,
        "error": r.forward_error,
        "messages": conv.messages if conv is not None else None,
        "messages_sha256": messages_hash(conv.messages) if conv is not None else None,
        "entropy_mean": last.mean_entropy if last else None,
        "entropies": last.entropies if last else None,
        "entropy_approx": last.entropy_approx if last else None,
        "finish_reasons": [rep.finish_reason for rep in conv.replies] if conv is not None else None,
    }


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
            _ner_record(r, r.english, extractor.name, messages.get(r.sentence.id))
            if r.sentence.id in messages
            else _ner_record(
                r,
                r.english,
                extractor.name,
                skipped="forward failed" if r.forward_error else "empty translation",
            )
            for r in results
        ]
    )
    ctx.timer.add("ner", t0)


def _ner_record(
    r: SentenceResult,
    text: str,
    extractor: str,
    messages: list | None = None,
    error: str | None = None,
    skipped: str | None = None,
) -> dict:
    """The one `ner.jsonl` layout (NER_KEYS): the entities found in `text`, and the conversation if an LLM
    found them."""
    return {
        "sentence_id": r.sentence.id,
        "text": text,
        "text_sha256": sha256_text(text),
        "extractor": extractor,
        "entities": [list(e) for e in r.entities],
        "error": error,
        "skipped": skipped,
        "messages": messages or None,
    }


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
    if sources is not None:
        check_constraint(ctx, convs, sources)
    ctx.timer.add("backward", t0)
    return [(r, typ, phrase, conv) for (r, typ, phrase), conv in zip(jobs, convs)]


def within_constraint(answer: str, text: str, truncated: bool = False) -> bool:
    """Whether a constrained answer is what the constraint allows: a verbatim, non-empty substring of `text`.

    Rule 3 (GenerationSettings.SUBSTRING_RULE) lets the first token carry one leading space that is not part of
    the answer: a reply is stripped before it is checked. An answer cut at its token budget may end inside a
    character (decoded as U+FFFD); the whole characters before it are checked."""
    answer = answer.strip()
    if truncated:
        answer = answer.rstrip("\ufffd")
    return bool(answer) and answer in text


def constraint_violated(conv: ConversationResult, text: str | None) -> bool | None:
    """Whether a constrained final answer came back outside its sentence; None when there is nothing to check
    (not constrained, failed, or decoded freely by the backend's own account: `unconstrained_answers`)."""
    if text is None or conv.failed or not conv.replies or conv.faults.get("unconstrained_answers"):
        return None
    return not within_constraint(conv.answer, text, conv.replies[-1].finish_reason == "length")


def check_constraint(ctx: StageContext, convs: list[ConversationResult], sources: list[str | None]) -> None:
    """Check that the constraint fired: every constrained final answer that came back (from the backend or the
    cache) must be a substring of its sentence. A backend that does not know its grammar parameter ignores it and
    answers freely with a 200 (vLLM >= 0.12 dropped `guided_*`); those answers are counted as
    `constraint_violations`, flagged in their backward records, and named in one warning."""
    flags = [constraint_violated(c, t) for c, t in zip(convs, sources)]
    bad = sum(f is True for f in flags)
    if not bad:
        return
    ctx.counts["constraint_violations"] += bad
    client = ctx.client
    kind = getattr(client, "kind", type(client).__name__)
    backend = client.backend if getattr(client, "backend_created", True) else None
    param = getattr(backend, "constraint_param", None) or ctx.constraint_param
    how = f"its grammar parameter `{param}` (backend.constraint_param={param})" if param else "the constraint"
    log.warning(
        "backend=%s: %d of %d constrained backward answers are not substrings of their sentence: the backend "
        "ignored %s (a server that does not know the parameter answers freely); counted as "
        "constraint_violations, flagged in artifacts/backward.jsonl",
        kind,
        bad,
        sum(f is not None for f in flags),
        how,
    )


def recover_spans(ctx: StageContext, aligned: list[tuple], results: list[SentenceResult]) -> None:
    """Snap every backward answer onto its sentence (`place_answers`); the recovered span gets the English
    entity's type. Counts the backward conversations' faults and failures; writes the backward artifact."""
    answers = []
    for r, typ, phrase, conv in aligned:
        ctx.count_faults("backward", conv.faults)
        if conv.failed:
            ctx.counts["failed_backward"] += 1
            ctx.last_error = conv.failed
        elif wrong_script(conv.answer, frozenset(scripts(r.source))):
            ctx.count_faults("backward", Counter(wrong_script_answers=1))
        violated = constraint_violated(conv, r.source) if ctx.constrained_alignment else None
        answers.append(Answer(r, typ, phrase, conv.answer, conv.messages, conv.failed, violated))
    place_answers(ctx, answers, results)


@dataclass
class Answer:
    """One entity's answer, to be placed on its sentence by `place_answers` (one backward record each)."""

    result: SentenceResult
    type: str
    phrase: str  # what was asked for: the English entity (EAT, translate-test) or the listed entity (direct)
    answer: str  # the text to place: the backward LLM's answer, or the phrase itself
    messages: list | None = None  # the conversation that produced the answer (None: it had no LLM call)
    error: str | None = None  # the request failed after its retries
    constraint_violated: bool | None = (
        None  # constrained answers: outside the sentence (None: not constrained)
    )


@dataclass
class Placement:
    """Where an answer landed: a span (typed) placed by `how`, or None with the reason it was dropped."""

    span: Span | None
    how: str | None = None  # "recovery" (eatlab.eat.recovery) or a fallback's name (translate-test: "fuzzy")
    matched_text: str | None = None
    score: float | None = None  # a fallback's match score
    reason: str | None = None


# a method's second chance for an answer that recovery dropped: (answer, recovery's placement) -> placement
Fallback = Callable[[Answer, Placement], Placement]


def place_answers(
    ctx: StageContext, answers: list[Answer], results: list[SentenceResult], fallback: Fallback | None = None
) -> None:
    """Place every answer on its sentence with span recovery (then `fallback`, if given, for those it drops),
    typed by the entity; fills `pred_spans` and `alignments` and writes `backward.jsonl` in its one layout."""
    t0 = time.perf_counter()
    records = []
    for a in answers:
        r = a.result
        if a.error:
            p = Placement(None, reason="request_failed")
        else:
            rec = recover_span(
                a.answer, r.sentence, a.type, r.pred_spans, ctx.language, n_entities=len(r.entities)
            )
            p = Placement(rec.span, "recovery" if rec.span else None, rec.matched_text, reason=rec.reason)
            if rec.span is None and fallback is not None:
                p = fallback(a, p)
        if p.span is not None:
            r.pred_spans.append(p.span)
        r.alignments.append(
            {"type": a.type, "phrase": a.phrase, "answer": a.answer, "span": p.span, "reason": p.reason}
        )
        records.append(_backward_record(a, p))
    for r in results:
        r.pred_spans.sort()
    ctx.art_backward.write(records)
    ctx.timer.add("recovery", t0)


def _backward_record(a: Answer, p: Placement) -> dict:
    """The one `backward.jsonl` layout (BACKWARD_KEYS)."""
    return {
        "sentence_id": a.result.sentence.id,
        "type": a.type,
        "phrase": a.phrase,
        "answer": a.answer,
        "span": [p.span.start, p.span.end] if p.span else None,
        "matched_text": p.matched_text if p.span else None,
        "placed_by": p.how if p.span else None,
        "score": p.score,
        "dropped_reason": p.reason if p.span is None else None,
        "error": a.error,
        "constraint_violated": a.constraint_violated,
        "messages": a.messages,
        "messages_sha256": messages_hash(a.messages) if a.messages is not None else None,
    }


def list_entities(
    ctx: StageContext, results: list[SentenceResult], rounds: int, check_round: str, name: str = "direct_llm"
) -> list:
    """Direct NER in the source language: the prompt set's `direct` prompt, then `rounds - 1` check rounds.
    Fills `entities` with the parsed `(TYPE, entity)` pairs and writes them with the conversation to `ner.jsonl`
    (its one layout; `text` is the source sentence, `extractor` the method's name); returns the conversations."""
    t0 = time.perf_counter()
    convs, budget = [], 128
    for r in results:
        conv, budget = ctx.prompts.single_turn(
            "direct", ctx.prompts.values(ctx.language.name, sentence=r.source)
        )
        convs.append(conv)
    settings = settings_for_round(ctx.generation, budget)
    errors: list[str | None] = [None] * len(results)
    for k in range(rounds):
        if k:
            for c in convs:
                c.append({"role": "user", "content": check_round})
        replies = ctx.client.chat(convs, settings, stage="direct")
        for i, (c, rep) in enumerate(zip(convs, replies)):
            ctx.last_error = rep.error or ctx.last_error
            errors[i] = errors[i] or rep.error
            ctx.counts.update(sanitize_reply(rep))
            c.append({"role": "assistant", "content": rep.text})
    for r, conv in zip(results, convs):
        r.entities = parse_entity_list(conv[-1]["content"])
    ctx.art_ner.write(
        [_ner_record(r, r.source, name, conv, error) for r, conv, error in zip(results, convs, errors)]
    )
    ctx.timer.add("direct", t0)
    return convs
