"""Per-step entropy: exact from logits, a lower bound from top-k log-probabilities."""

from __future__ import annotations

import math

import pytest
import torch

from eatlab.llm.entropy import entropy_from_logits, entropy_from_top_logprobs


def test_exact_entropy_matches_the_definition():
    torch.manual_seed(0)
    logits = torch.randn(5, 1000) * 4
    logp = torch.log_softmax(logits, -1)
    want = -(logp.exp() * logp).sum(-1)
    work: list = []
    assert entropy_from_logits(logits, work) == pytest.approx(want, abs=1e-4)
    assert entropy_from_logits(logits * 2, work) == pytest.approx(
        -(torch.log_softmax(logits * 2, -1).exp() * torch.log_softmax(logits * 2, -1)).sum(-1), abs=1e-4
    )  # scratch buffers reused
    assert entropy_from_logits(torch.zeros(2, 151936)) == pytest.approx([math.log(151936)] * 2, abs=1e-4)
    peaked = torch.full((1, 10), -float("inf"))
    peaked[0, 3] = 1.0
    assert entropy_from_logits(peaked).item() == 0.0
    assert entropy_from_logits(torch.zeros(1, 4, dtype=torch.bfloat16)).item() == pytest.approx(math.log(4))


def test_top_k_entropy_is_a_lower_bound():
    probs = [0.4, 0.3, 0.2, 0.1]
    exact = -sum(p * math.log(p) for p in probs)
    assert entropy_from_top_logprobs([math.log(p) for p in probs]) == pytest.approx(exact)
    bound = entropy_from_top_logprobs([math.log(p) for p in probs[:2]])
    assert bound < exact
    assert bound == pytest.approx(-(0.4 * math.log(0.4) + 0.3 * math.log(0.3) + 0.3 * math.log(0.3)))
    assert entropy_from_top_logprobs([0.0]) == 0.0
    assert entropy_from_top_logprobs([]) == 0.0
