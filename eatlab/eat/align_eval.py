"""The entity-alignment benchmark (`eatlab-align-eval`): EAT's backward step measured alone, on held-out EACL pairs.

Why: end-to-end F1 mixes translation, English NER and alignment, and failure attribution puts most lost entities at
the backward step. An EACL pair (an English mention, a target-language sentence, and the linked article's title
found in that sentence) is a gold backward alignment: given the English entity and the sentence, which span is it?

- **backward**: the model gets exactly what the pipeline asks (`stages.align_backward`: the prompt set's backward
  rounds, `alignment.*` as configured); the answer is placed on the sentence by eatlab's recovery and by the
  reference release's, and each placement is scored against the title's occurrence: exact match of the token
  span, character F1, and whether it could be placed at all.
- **naming**: the forward half: given the sentence and the phrase, the English name (the fine-tuning module's
  forward prompt, `heldout.templates.forward`), scored by normalised exact match and chrF against the mention.

The pairs are the fine-tuning module's held-out slice (`eatlab.finetune.eacl.prepare_language`, drawn by title
and never trained on), so an adapter tuned with the same `heldout` settings is measured on pairs it never saw.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from eatlab.data.bio import Span, spans_to_tags
from eatlab.data.languages import Language
from eatlab.data.record import SPACE_TOKEN, Sentence
from eatlab.eat.recovery import recover_span
from eatlab.eat.reference_recovery import reference_recover_sentence
from eatlab.eat.stages import SentenceResult, StageContext, align_backward
from eatlab.eval.bootstrap import bootstrap_mean_ci
from eatlab.finetune.eacl import AlignedPair
from eatlab.finetune.tasks import Templates, build_examples
from eatlab.llm.base import settings_for_round
from eatlab.llm.conversation import sanitize_reply

log = logging.getLogger(__name__)

# EACL pairs carry no entity type; span recovery only passes the type through to the span it returns
PAIR_TYPE = "LOC"
RECOVERIES = ("eatlab", "reference")
BACKWARD_METRICS = ("exact", "char_f1", "placed")
NAMING_METRICS = ("exact", "chrf")
_WORD = re.compile(r"\w+|[^\w\s]")


@dataclass
class PairCase:
    """One held-out pair as the benchmark sees it: a tokenised sentence and the gold phrase's token span."""

    id: str  # <lang>-eacl-<index in corpus_<lang>.json>
    pair: AlignedPair
    sentence: Sentence
    gold: Span  # tokens overlapping the phrase's characters

    @property
    def gold_chars(self) -> tuple[int, int]:
        return self.pair.start, self.pair.end


def tokenize(text: str, char_tokenized: bool) -> tuple[list[str], list[tuple[int, int]]]:
    """Tokens and their character offsets in `text`, the way WikiANN tokenises: zh/ja one token per character
    (a space is the token `#`), other languages words and single punctuation marks."""
    if char_tokenized:
        pos = [(i, ch) for i, ch in enumerate(text) if not ch.isspace() or ch == " "]
        return [SPACE_TOKEN if ch == " " else ch for _, ch in pos], [(i, i + 1) for i, _ in pos]
    found = list(_WORD.finditer(text))
    return [m.group() for m in found], [m.span() for m in found]


def make_case(pair: AlignedPair, language: Language) -> PairCase:
    """The pair's sentence (raw EACL text, tokenised with offsets into it) and its gold token span."""
    tokens, offsets = tokenize(pair.text, language.char_tokenized)
    inside = [i for i, (s, e) in enumerate(offsets) if s < pair.end and e > pair.start]
    if pair.start < 0 or not inside:
        raise ValueError(
            f"EACL {pair.language} pair {pair.index}: its phrase was not located in its sentence"
        )
    gold = Span(inside[0], inside[-1] + 1, PAIR_TYPE)
    sid = f"{language.code}-eacl-{pair.index}"
    tags = spans_to_tags([gold], len(tokens))
    sentence = Sentence(sid, language.code, tokens, tags, language.char_tokenized, pair.text, offsets)
    return PairCase(sid, pair, sentence, gold)


def char_f1(pred: tuple[int, int] | None, gold: tuple[int, int], text: str) -> float:
    """F1 of the non-space characters two character ranges of `text` share."""
    if pred is None:
        return 0.0
    g = {i for i in range(*gold) if not text[i].isspace()}
    p = {i for i in range(*pred) if not text[i].isspace()}
    tp = len(g & p)
    return 2 * tp / (len(g) + len(p)) if tp else 0.0


def span_chars(sentence: Sentence, span: Span | None) -> tuple[int, int] | None:
    return None if span is None else (sentence.offsets[span.start][0], sentence.offsets[span.end - 1][1])


def normalize_name(text: str) -> str:
    """For naming's exact match: NFKC, case-folded, punctuation read as space, a leading article and surrounding
    quotes dropped, white space collapsed."""
    t = unicodedata.normalize("NFKC", text).casefold()
    t = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in t)
    t = " ".join(t.split())
    return t[4:] if t.startswith("the ") else t


def _placement(case: PairCase, span: Span | None) -> dict:
    chars = span_chars(case.sentence, span)
    return {
        "span": [span.start, span.end] if span else None,
        "text": case.sentence.text[chars[0] : chars[1]] if chars else None,
        "placed": span is not None,
        "exact": span is not None and (span.start, span.end) == (case.gold.start, case.gold.end),
        "char_f1": round(char_f1(chars, case.gold_chars, case.sentence.text), 6),
    }


def run_backward(ctx: StageContext, cases: Sequence[PairCase]) -> list[dict]:
    """The pipeline's backward stage on every pair, then both recoveries: one record per pair."""
    results = [
        SentenceResult(c.sentence, c.sentence.text, entities=[(PAIR_TYPE, c.pair.eng_entity)]) for c in cases
    ]
    aligned = align_backward(ctx, results)
    records = []
    for case, (_r, _typ, phrase, conv) in zip(cases, aligned):
        ctx.count_faults("backward", conv.faults)
        answer = conv.answer
        rec = {
            "pair_id": case.id,
            "eng_entity": phrase,
            "gold": {
                "span": [case.gold.start, case.gold.end],
                "text": case.pair.phrase,
                "chars": list(case.gold_chars),
            },
            "answer": answer,
            "error": conv.failed,
            "verbatim": bool(answer.strip()) and answer.strip() in case.sentence.text,
            "messages": conv.messages,
        }
        if conv.failed:
            ctx.counts["failed_backward"] += 1
            ctx.last_error = conv.failed
            for rec_name in RECOVERIES:
                rec[rec_name] = {**_placement(case, None), "reason": "request_failed"}
        else:
            ours = recover_span(answer, case.sentence, PAIR_TYPE, [], ctx.language.code, n_entities=1)
            rec["eatlab"] = {**_placement(case, ours.span), "reason": ours.reason}
            ref = reference_recover_sentence([(answer, PAIR_TYPE)], case.sentence)
            theirs = ref.spans[0] if ref.spans else None
            rec["reference"] = {**_placement(case, theirs), "reason": None if theirs else "not_placed"}
        records.append(rec)
    return records


def run_naming(
    client, cases: Sequence[PairCase], templates: Templates, generation: dict, max_new_tokens: int
) -> tuple[list[dict], dict]:
    """Forward naming: one single-turn question per pair (the fine-tuning module's forward prompt)."""
    from sacrebleu.metrics import CHRF

    chrf = CHRF()
    examples = build_examples([c.pair for c in cases], ["forward"], templates)
    convs = [list(e.messages) for e in examples]
    replies = client.chat(convs, settings_for_round(generation, max_new_tokens), stage="naming")
    records, faults = [], {}
    for case, ex, conv, rep in zip(cases, examples, convs, replies):
        for k, v in sanitize_reply(rep).items():
            faults[k] = faults.get(k, 0) + v
        answer = rep.text if rep.error is None else ""
        records.append(
            {
                "pair_id": case.id,
                "phrase": case.pair.phrase,
                "gold": ex.answer,
                "answer": answer,
                "error": rep.error,
                "exact": rep.error is None and normalize_name(answer) == normalize_name(ex.answer),
                "chrf": round(chrf.sentence_score(answer, [ex.answer]).score / 100.0, 6) if answer else 0.0,
                "messages": [*conv, {"role": "assistant", "content": answer}],
            }
        )
    return records, faults


def summarize(values: dict[str, list[float]], n_boot: int, seed: int) -> dict:
    """Mean and bootstrap 95% interval of each list of per-pair scores, plus the number of pairs."""
    out: dict = {"n": len(next(iter(values.values()), []))}
    for name, vals in values.items():
        lo, hi = bootstrap_mean_ci(vals, n_boot=n_boot, seed=seed)
        out[name] = {"mean": sum(vals) / len(vals) if vals else 0.0, "ci95": [lo, hi]}
    return out


def scores_of(backward: list[dict] | None, naming: list[dict] | None, n_boot: int, seed: int) -> dict:
    """The `scores` block of metrics.json: per recovery and per naming metric, mean and interval."""
    scores: dict = {}
    if backward is not None:
        scores["backward"] = {
            rec: summarize({m: [float(r[rec][m]) for r in backward] for m in BACKWARD_METRICS}, n_boot, seed)
            for rec in RECOVERIES
        }
        scores["backward"]["verbatim_share"] = (
            sum(r["verbatim"] for r in backward) / len(backward) if backward else 0.0
        )
    if naming is not None:
        scores["naming"] = summarize({m: [float(r[m]) for r in naming] for m in NAMING_METRICS}, n_boot, seed)
    return scores
