"""`make gpu-check` on a machine without CUDA: one `skipped` line per check, exit status 0 (the real checks run
on a lent GPU; docs/results.md has their output where one was available)."""

from __future__ import annotations

import pytest
import torch

from eatlab.cli.gpu_check import CHECKS, main


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device runs the real checks (make gpu-check)")
def test_gpu_check_skips_every_check_without_cuda(capsys):
    assert main([]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("gpu-check: torch ") and lines[0].endswith("no CUDA device")
    assert lines[1:] == [f"{label}: skipped (no CUDA device)" for label, _ in CHECKS]
