"""Entropy (nats) of a next-token distribution: exact from full logits, approximate from top-k log-probabilities.

The analysis correlates translation quality with the model's uncertainty while it generates, so every backend
reports one entropy per generated step. Where a backend only exposes the top-k log-probabilities (OpenAI-style
servers, vLLM), the entropy is a lower bound and the reply says so (`Reply.entropy_approx=True`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def entropy_from_logits(logits, work: list | None = None):
    """Exact entropy of softmax(logits) along the last axis, in fp32: torch tensor in, tensor out.

    H = log(sum e^z) - sum(e^z * z) / sum(e^z) with z = logits - max. `work` is a list kept by the caller across
    the steps of one generation: it holds the two scratch tensors, so a step allocates no batch x vocabulary
    buffers (on CPU, fresh 150k-wide buffers cost more than the arithmetic).
    """
    import torch

    x = logits if logits.dtype == torch.float32 else logits.float()
    if work is not None:
        if len(work) != 2 or work[0].shape != x.shape or work[0].device != x.device:
            work[:] = [torch.empty_like(x), torch.empty_like(x)]
        z, e = work
    else:
        z, e = torch.empty_like(x), torch.empty_like(x)
    torch.sub(x, x.amax(dim=-1, keepdim=True), out=z)
    torch.exp(z, out=e)
    total = e.sum(dim=-1)
    e.mul_(z).nan_to_num_(nan=0.0)  # tokens at -inf contribute 0 (0 * -inf is nan)
    return (total.log() - e.sum(dim=-1) / total).clamp_min(0.0)


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
