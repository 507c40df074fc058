"""Scoring: entity-level F1 (seqeval default mode), the reference release's token-level scorer, bootstrap."""

from eatlab.eval.scores import score

__all__ = ["score"]
