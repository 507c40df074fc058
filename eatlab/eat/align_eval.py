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

- **controls**: EACL's gold mostly opens its sentence (a lead sentence names its article first), so a rule with
  no model, copy the sentence's head up to its first delimiter (`copy_head`), scores high. Every score is also
  given per gold position (`initial`: nothing but punctuation before the gold; `later`) and on a `shifted`
  variant of each pair (another held-out sentence placed before it, so position gives nothing away), for the
  model and for the control alike.
- **units**: pairs with the same sentence and normalised gold ("Olympic" and "OLYMPIC") are one independent item
  (`unit`); means are bootstrapped over units, exact-match and placed shares get Wilson intervals.

The pairs are a slice of the fine-tuning module's split (`eatlab.finetune.eacl.prepare_language`): dev (rules
and settings are chosen there; eatlab-finetune validates on it) or test (scored once per final setting); titles
and sentences of both are disjoint from training, so an adapter tuned with the same `heldout` settings is
measured on pairs it never saw.
"""

from __future__ import annotations

import dataclasses
import hashlib
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
from eatlab.eval.stats import proportion_ci
from eatlab.finetune.eacl import AlignedPair, normalize
from eatlab.finetune.tasks import Templates, build_examples
from eatlab.llm.base import settings_for_round
from eatlab.llm.conversation import sanitize_reply

log = logging.getLogger(__name__)

# EACL pairs carry no entity type; span recovery only passes the type through to the span it returns
PAIR_TYPE = "LOC"
RECOVERIES = ("eatlab", "reference")
BACKWARD_METRICS = ("exact", "char_f1", "placed")
NAMING_METRICS = ("exact", "chrf")
PROPORTIONS = ("exact", "placed")  # 0/1 per pair: Wilson intervals; the others are means (unit bootstrap)
POSITIONS = ("initial", "later")
SLICES = (*POSITIONS, "shifted")
CONTROL = "copy_head"
SHIFTED_ARTIFACT = "align_backward_shifted"  # artifacts/<this>.jsonl: the shifted variants' per-pair records
_WORD = re.compile(r"\w+|[^\w\s]")

# copy_head: a sentence's head ends at the first bracket, quote, comma, colon, semicolon, dash or full stop (ASCII,
# full-width and CJK forms), or at the language's topic / subject marker or copula
_HEAD_PUNCT = r"[()\[\]{}（）［］｛｝《》〈〉「」『』【】〔〕«»\"“”„‘’,，、،:：;；؛.。!！?？—–―~～]|\s-\s"
_HEAD_WORDS = {
    "zh": r"是",
    "ja": r"[はが]",
    "ko": r"(?<=\w)[은는이가](?=\s|$)",
    "ar": r"\s(?:هو|هي|وهو|وهي)(?=\s|$)",
}


@dataclass
class PairCase:
    """One held-out pair as the benchmark sees it: a tokenised sentence and the gold phrase's token span."""

    id: str  # <lang>-eacl-<index in corpus_<lang>.json>, + "-shifted" for the shifted variant
    pair: AlignedPair
    sentence: Sentence
    gold: Span  # tokens overlapping the phrase's characters
    unit: str  # the independent item: (sentence, normalised gold), shared by a pair and its shifted variant

    @property
    def gold_chars(self) -> tuple[int, int]:
        return self.pair.start, self.pair.end

    @property
    def position(self) -> str:
        """`initial` when nothing but punctuation and space precedes the gold's first token (the sentence's first
        word, or character in zh/ja; Arabic `كأس` in a sentence opening with `الكأس` is initial), else `later`."""
        head = self.sentence.text[: self.sentence.offsets[self.gold.start][0]]
        return "later" if any(ch.isalnum() for ch in head) else "initial"


def tokenize(text: str, char_tokenized: bool) -> tuple[list[str], list[tuple[int, int]]]:
    """Tokens and their character offsets in `text`, the way WikiANN tokenises: zh/ja one token per character
    (a space is the token `#`), other languages words and single punctuation marks."""
    if char_tokenized:
        pos = [(i, ch) for i, ch in enumerate(text) if not ch.isspace() or ch == " "]
        return [SPACE_TOKEN if ch == " " else ch for _, ch in pos], [(i, i + 1) for i, _ in pos]
    found = list(_WORD.finditer(text))
    return [m.group() for m in found], [m.span() for m in found]


def unit_of(pair: AlignedPair) -> str:
    """A short stable id of (sentence, gold), both normalised (NFKC, case-folded): pairs that differ only in
    the English mention or the gold's case are one item."""
    key = f"{normalize(pair.text)}\x00{normalize(pair.phrase)}"
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]


def make_case(pair: AlignedPair, language: Language, suffix: str = "", unit: str | None = None) -> PairCase:
    """The pair's sentence (raw EACL text, tokenised with offsets into it) and its gold token span."""
    tokens, offsets = tokenize(pair.text, language.char_tokenized)
    inside = [i for i, (s, e) in enumerate(offsets) if s < pair.end and e > pair.start]
    if pair.start < 0 or not inside:
        raise ValueError(
            f"EACL {pair.language} pair {pair.index}: its phrase was not located in its sentence"
        )
    gold = Span(inside[0], inside[-1] + 1, PAIR_TYPE)
    sid = f"{language.code}-eacl-{pair.index}{suffix}"
    tags = spans_to_tags([gold], len(tokens))
    sentence = Sentence(sid, language.code, tokens, tags, language.char_tokenized, pair.text, offsets)
    return PairCase(sid, pair, sentence, gold, unit or unit_of(pair))


def shifted_cases(
    cases: Sequence[PairCase], pool: Sequence[AlignedPair], language: Language
) -> list[PairCase]:
    """Each case with another held-out sentence placed before it (the language's separator between them), so its
    gold no longer opens the text; the gold offsets move with it.

    The prefix is the next sentence of `pool` (the slice, in order, wrapping around) after the case's own that is
    another sentence and does not contain the case's gold (which recovery would place there first). A case with
    no such sentence gets no variant.
    """
    sep = "" if language.spaceless else " "
    keys = [normalize(p.text) for p in pool]
    where = {(p.index, p.start): i for i, p in enumerate(pool)}
    out = []
    for case in cases:
        pair = case.pair
        i = where.get((pair.index, pair.start), -1)
        gold = normalize(pair.phrase)
        for step in range(1, len(pool)):
            j = (i + step) % len(pool)
            if keys[j] != normalize(pair.text) and gold not in keys[j]:
                shift = len(pool[j].text) + len(sep)
                moved = dataclasses.replace(
                    pair, text=pool[j].text + sep + pair.text, start=pair.start + shift, end=pair.end + shift
                )
                out.append(make_case(moved, language, "-shifted", case.unit))
                break
    return out


def copy_head(text: str, language: str) -> str:
    """The no-model control's answer: the sentence from its first letter up to the first delimiter (punctuation,
    a spaced hyphen, or the language's topic / subject marker or copula), stripped."""
    start = next((i for i, ch in enumerate(text) if ch.isalnum()), len(text))
    words = _HEAD_WORDS.get(language)
    pattern = _HEAD_PUNCT + (f"|{words}" if words else "")
    m = re.compile(pattern).search(text, start)
    return text[start : m.start() if m else len(text)].strip()


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


def place(case: PairCase, answer: str, language: str) -> dict:
    """An answer placed on the case's sentence by both recoveries, each placement scored against the gold."""
    ours = recover_span(answer, case.sentence, PAIR_TYPE, [], language, n_entities=1)
    ref = reference_recover_sentence([(answer, PAIR_TYPE)], case.sentence)
    theirs = ref.spans[0] if ref.spans else None
    return {
        "eatlab": {**_placement(case, ours.span), "reason": ours.reason},
        "reference": {**_placement(case, theirs), "reason": None if theirs else "not_placed"},
    }


def control_record(case: PairCase, language: str) -> dict:
    """The copy-the-head control on one case: its answer and both placements, scored like a model answer."""
    answer = copy_head(case.sentence.text, language)
    return {"name": CONTROL, "answer": answer, **place(case, answer, language)}


def run_backward(ctx: StageContext, cases: Sequence[PairCase]) -> list[dict]:
    """The pipeline's backward stage on every pair, then both recoveries, and the control: one record per pair."""
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
            "unit": case.unit,
            "position": "shifted" if case.id.endswith("-shifted") else case.position,
            "sentence": case.sentence.text,
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
            rec |= place(case, answer, ctx.language.code)
        rec["control"] = control_record(case, ctx.language.code)
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
                "unit": case.unit,
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


def summarize(values: dict[str, list[float]], units: list[str], n_boot: int, seed: int) -> dict:
    """Mean and 95% interval of each list of per-pair scores, with the number of pairs and of units: 0/1 scores
    (`PROPORTIONS`) get Wilson intervals, the others a percentile bootstrap over the units."""
    n = len(units)
    out: dict = {"n": n, "units": len(set(units))}
    for name, vals in values.items():
        mean = sum(vals) / n if n else 0.0
        if name in PROPORTIONS:
            lo, hi = proportion_ci(round(sum(vals)), n)
        else:
            lo, hi = bootstrap_mean_ci(vals, n_boot=n_boot, seed=seed, units=units)
        out[name] = {"mean": mean, "ci95": [lo, hi]}
    return out


def _recoveries(records: list[dict], key: str | None, n_boot: int, seed: int) -> dict:
    """Per recovery, the summary of the records' placements (`key`: under that sub-record, e.g. the control)."""
    units = [r["unit"] for r in records]
    return {
        rec: summarize(
            {m: [float((r[key] if key else r)[rec][m]) for r in records] for m in BACKWARD_METRICS},
            units,
            n_boot,
            seed,
        )
        for rec in RECOVERIES
    }


def _sliced(records: list[dict], shifted: list[dict] | None, key: str | None, n_boot: int, seed: int) -> dict:
    """Both recoveries on all pairs, and the same per slice (gold position; the shifted variants)."""
    out = _recoveries(records, key, n_boot, seed)
    slices = {pos: [r for r in records if r["position"] == pos] for pos in POSITIONS}
    if shifted is not None:
        slices["shifted"] = shifted
    out["slices"] = {name: _recoveries(recs, key, n_boot, seed) for name, recs in slices.items()}
    return out


def control_scores(
    cases: Sequence[PairCase], shifted: Sequence[PairCase] | None, language: str, n_boot: int, seed: int
) -> dict:
    """The control's block of `scores_of` with no model at all (e.g. to size the positional shortcut of a slice)."""

    def records(cs: Sequence[PairCase], shift: bool) -> list[dict]:
        return [
            {
                "unit": c.unit,
                "position": "shifted" if shift else c.position,
                "control": control_record(c, language),
            }
            for c in cs
        ]

    shifted_records = None if shifted is None else records(shifted, True)
    return {"name": CONTROL, **_sliced(records(cases, False), shifted_records, "control", n_boot, seed)}


def scores_of(
    backward: list[dict] | None,
    naming: list[dict] | None,
    n_boot: int,
    seed: int,
    shifted: list[dict] | None = None,
) -> dict:
    """The `scores` block of metrics.json: the model's backward scores per recovery (all pairs, and per slice),
    the copy-the-head control's (same layout), and naming; each with mean and interval."""
    scores: dict = {}
    if backward is not None:
        scores["backward"] = _sliced(backward, shifted, None, n_boot, seed)
        scores["backward"]["verbatim_share"] = (
            sum(r["verbatim"] for r in backward) / len(backward) if backward else 0.0
        )
        scores["control"] = {"name": CONTROL, **_sliced(backward, shifted, "control", n_boot, seed)}
    if naming is not None:
        units = [r.get("unit", r["pair_id"]) for r in naming]
        scores["naming"] = summarize(
            {m: [float(r[m]) for r in naming] for m in NAMING_METRICS}, units, n_boot, seed
        )
    return scores
