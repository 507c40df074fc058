"""The one scoring entry point: gold and predicted tags in, the metrics dict (the core of metrics.json) out."""

from __future__ import annotations

from collections.abc import Sequence

from eatlab.data.languages import get_language
from eatlab.eval.bootstrap import bootstrap_f1_ci
from eatlab.eval.entity import entity_counts, entity_scores
from eatlab.eval.reference import reference_scores

# The headline numbers of a run, in the order tables show them.
SCORE_KEYS = (
    "entity_f1",
    "entity_precision",
    "entity_recall",
    "reference_token_micro_f1",
    "reference_token_macro_f1",
    "reference_token_weighted_f1",
)


def score(
    gold_sentences_tags: Sequence[Sequence[str]],
    pred_tags: Sequence[Sequence[str]],
    tokens: Sequence[Sequence[str]],
    language: str,
    *,
    seed: int = 0,
    n_boot: int = 1000,
    char_tokenized: bool | None = None,
    units: Sequence | None = None,
) -> dict:
    """Entity-level scores (seqeval default mode), the reference token-level scores and a bootstrap interval.

    `char_tokenized` defaults to the language table's flag (zh/ja); an unknown language raises ConfigError.
    All scores are fractions in [0, 1]; `entity_f1_ci95` is a seeded percentile bootstrap over sentences, or over
    `units` (one cluster id per sentence, e.g. its document) when the sentences are not independent.
    """
    if char_tokenized is None:
        char_tokenized = get_language(language).char_tokenized
    if not len(gold_sentences_tags) == len(pred_tags) == len(tokens):
        raise ValueError(
            f"{len(gold_sentences_tags)} gold, {len(pred_tags)} predicted and {len(tokens)} token sentences"
        )
    counts = entity_counts(gold_sentences_tags, pred_tags)
    result = entity_scores(counts)
    result.update(reference_scores(gold_sentences_tags, pred_tags, tokens, char_tokenized))
    low, high = bootstrap_f1_ci(counts, n_boot=n_boot, seed=seed, units=units)
    result["n_sentences"] = counts.n_sentences
    result["entity_f1_ci95"] = [low, high]
    result["bootstrap"] = {"n_boot": n_boot, "seed": seed, "unit": "sentence" if units is None else "cluster",
                           "method": "percentile"}  # fmt: skip
    result["language"] = language
    return result
