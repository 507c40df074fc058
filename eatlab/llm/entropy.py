"""Entropy (nats) of a next-token distribution: exact from full logits, approximate from top-k log-probabilities.

The analysis correlates translation quality with the model's uncertainty while it generates, so every backend
reports one entropy per generated step. Where a backend only exposes the top-k log-probabilities (OpenAI-style
servers, vLLM), the entropy is a lower bound and the reply says so (`Reply.entropy_approx=True`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def entropy_from_logits(logits):
    """Exact entropy of softmax(logits) along the last axis, computed in fp32: torch tensor in, tensor out."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    ent = -(logp.exp() * logp).sum(dim=-1)
    return ent.clamp_min(0.0)


def entropy_from_top_logprobs(logprobs: Iterable[float]) -> float:
    """Lower bound of the entropy from the top-k log-probabilities of one step.

    The k listed tokens contribute -p log p each; the probability mass left over (1 - sum p) is counted as one
    outcome, which under-counts it (spreading that mass over many tokens can only raise the entropy). With k=20
    on a peaked distribution the bound is tight; on a flat one it is not, hence `entropy_approx=True`.
    """
    probs = [math.exp(lp) for lp in logprobs if lp is not None and lp > -math.inf]
    h = -sum(p * math.log(p) for p in probs if p > 0.0)
    rest = 1.0 - sum(probs)
    if rest > 1e-9:
        h -= rest * math.log(rest)
    return max(h, 0.0)
