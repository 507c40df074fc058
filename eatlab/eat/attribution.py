"""Failure attribution against gold: where each gold entity was lost, and what each predicted entity is.

Per gold entity (exact span and type, conlleval chunking), the first that applies:
- `found`: predicted exactly;
- `ner_wrong_type`: predicted on exactly its span with another type. The span was translated, extracted and
  aligned back right; the type is the English NER's, so this is an English NER error, not an alignment one;
- `misaligned_backward`: the backward answer was placed elsewhere (a predicted span overlaps it with the
  wrong boundary), or an English entity of the sentence could not be mapped back (its backward answer was
  dropped) and is charged to it;
- `missed_by_ner`: the English translation still has a name candidate (a run of capitalised words or digits
  not covered by any extracted entity) that could stand for it;
- `lost_in_translation`: none of the above: no trace of the entity survived in the English sentence
  (including failed or empty translations).
The last two are a heuristic (WikiANN has no gold English translations); the rule is applied the same way
to every run, so attribution counts are comparable across settings.

Per predicted entity: `correct`, `wrong_type` (same span as a gold entity), `wrong_boundary` (overlaps a gold
entity), `hallucinated` (overlaps none).
"""

from __future__ import annotations

import re
from collections import Counter

from eatlab.data.bio import Span

GOLD_CLASSES = ("found", "lost_in_translation", "missed_by_ner", "ner_wrong_type", "misaligned_backward")
PRED_CLASSES = ("correct", "wrong_type", "wrong_boundary", "hallucinated")
_NAME_RUN = re.compile(
    r"(?:\b[A-Z][\w'’.-]*|\b\d[\w.-]*)(?:\s+(?:of|the|de|von|van|al|el|[A-Z][\w'’.-]*|\d[\w.-]*))*"
)
_SKIP_FIRST = {"The", "A", "An", "In", "It", "This", "He", "She", "They", "On", "At", "I"}


def _overlaps(a: Span, b: Span) -> bool:
    return a.start < b.end and b.start < a.end


def name_candidates(english: str, extracted: list[tuple[str, str]]) -> int:
    """How many capitalised runs of the English sentence no extracted entity covers."""
    covered = [t for _, t in extracted]
    count = 0
    for m in _NAME_RUN.finditer(english or ""):
        text = m.group(0).strip()
        if not text or text in _SKIP_FIRST:
            continue
        if any(text in c or c in text for c in covered if c):
            continue
        count += 1
    return count


def attribute_sentence(
    gold: list[Span], pred: list[Span], english: str, extracted: list[tuple[str, str]], n_unrecovered: int
) -> tuple[list[str], list[str]]:
    """Classes for every gold and every predicted span of one sentence (in the given orders)."""
    gold_set = set(gold)
    pred_cls = []
    for p in pred:
        if p in gold_set:
            pred_cls.append("correct")
        elif any(g.start == p.start and g.end == p.end for g in gold):
            pred_cls.append("wrong_type")
        elif any(_overlaps(g, p) for g in gold):
            pred_cls.append("wrong_boundary")
        else:
            pred_cls.append("hallucinated")
    pred_set = set(pred)
    unrecovered = n_unrecovered
    candidates = name_candidates(english, extracted)
    gold_cls = []
    for g in gold:
        if g in pred_set:
            gold_cls.append("found")
        elif any(p.start == g.start and p.end == g.end for p in pred):
            gold_cls.append("ner_wrong_type")
        elif any(_overlaps(g, p) for p in pred):
            gold_cls.append("misaligned_backward")
        elif unrecovered > 0:
            unrecovered -= 1
            gold_cls.append("misaligned_backward")
        elif candidates > 0:
            candidates -= 1
            gold_cls.append("missed_by_ner")
        else:
            gold_cls.append("lost_in_translation")
    return gold_cls, pred_cls


def summarize(gold_classes: list[str], pred_classes: list[str]) -> dict:
    g, p = Counter(gold_classes), Counter(pred_classes)
    return {
        "gold": {k: g.get(k, 0) for k in GOLD_CLASSES},
        "predicted": {k: p.get(k, 0) for k in PRED_CLASSES},
    }
