"""Entity-level precision/recall/F1 equal to seqeval's default mode, from per-sentence counts.

An entity is an exact (start, end, type) span under conlleval chunking (`tags_to_spans(..., "conlleval")`):
an `I-X` after a tag that is not of type X starts a new entity, as in seqeval's default mode. Scores are
micro-averaged over all sentences. The counts are kept per sentence and per type so that the bootstrap can
resample sentences by summing rows instead of re-chunking tags.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from eatlab.data.bio import ENTITY_TYPES, tags_to_spans


@dataclass(frozen=True)
class EntityCounts:
    """Per-sentence entity counts: `tp`, `pred`, `gold` have shape (n_sentences, len(types)), int64."""

    types: tuple[str, ...]
    tp: np.ndarray
    pred: np.ndarray
    gold: np.ndarray

    @property
    def n_sentences(self) -> int:
        return int(self.tp.shape[0])

    def totals(self) -> np.ndarray:
        """Per-sentence totals over types, shape (n_sentences, 3): columns tp, pred, gold."""
        return np.stack([self.tp.sum(axis=1), self.pred.sum(axis=1), self.gold.sum(axis=1)], axis=1)


def entity_counts(gold_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> EntityCounts:
    """Count true positives, predicted and gold entities per sentence and type.

    Types are PER, ORG, LOC followed by any other type seen (sorted). Raises ValueError when the two tag
    sequences differ in sentence count or in a sentence's length.
    """
    if len(gold_tags) != len(pred_tags):
        raise ValueError(f"{len(gold_tags)} gold sentences but {len(pred_tags)} predicted")
    gold_spans, pred_spans = [], []
    seen: set[str] = set()
    for k, (g, p) in enumerate(zip(gold_tags, pred_tags)):
        if len(g) != len(p):
            raise ValueError(f"sentence {k + 1}: {len(g)} gold tags but {len(p)} predicted")
        gs, ps = tags_to_spans(list(g), "conlleval"), tags_to_spans(list(p), "conlleval")
        seen.update(s.type for s in gs)
        seen.update(s.type for s in ps)
        gold_spans.append(gs)
        pred_spans.append(ps)
    types = tuple(ENTITY_TYPES) + tuple(sorted(seen - set(ENTITY_TYPES)))
    index = {t: i for i, t in enumerate(types)}
    shape = (len(gold_spans), len(types))
    tp, pred, gold = (np.zeros(shape, dtype=np.int64) for _ in range(3))
    for k, (gs, ps) in enumerate(zip(gold_spans, pred_spans)):
        for s in gs:
            gold[k, index[s.type]] += 1
        for s in ps:
            pred[k, index[s.type]] += 1
        for s in set(gs) & set(ps):
            tp[k, index[s.type]] += 1
    return EntityCounts(types, tp, pred, gold)


def prf(tp: int, pred: int, gold: int) -> tuple[float, float, float]:
    """Precision, recall and F1 computed as seqeval does (F1 = 2PR/(P+R)); undefined ratios are 0."""
    precision = tp / pred if pred else 0.0
    recall = tp / gold if gold else 0.0
    denom = precision + recall
    f1 = 2 * precision * recall / denom if denom else 0.0
    return precision, recall, f1


def entity_scores(counts: EntityCounts) -> dict:
    """Micro precision/recall/F1 over all sentences and per-type (precision, recall, f1, support)."""
    tp, pred, gold = counts.tp.sum(axis=0), counts.pred.sum(axis=0), counts.gold.sum(axis=0)
    p, r, f = prf(int(tp.sum()), int(pred.sum()), int(gold.sum()))
    per_type = {}
    for i, t in enumerate(counts.types):
        tp_i, pred_i, gold_i = int(tp[i]), int(pred[i]), int(gold[i])
        pi, ri, fi = prf(tp_i, pred_i, gold_i)
        per_type[t] = {"precision": pi, "recall": ri, "f1": fi, "support": gold_i}
    return {
        "entity_precision": p,
        "entity_recall": r,
        "entity_f1": f,
        "per_type": per_type,
        "n_gold_entities": int(gold.sum()),
        "n_pred_entities": int(pred.sum()),
    }
