"""`make gpu-check`: without CUDA one `skipped` line per check and exit status 0; with `--device cpu` the same
checks' configs compose and validate, and the cheapest check runs end to end on the CPU (the code up to the
CUDA boundary; the real checks ran on a lent H200, docs/development.md)."""

from __future__ import annotations

import pytest
import torch

from eatlab.cli.gpu_check import CHECKS, check_overrides, check_t5_bf16, compose_check, main


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device runs the real checks (make gpu-check)")
def test_gpu_check_skips_every_check_without_cuda(capsys):
    assert main([]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("gpu-check: torch ") and lines[0].endswith("no CUDA device, device cuda")
    assert lines[1:] == [f"{label}: skipped (no CUDA device)" for label, _ in CHECKS]


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_every_check_config_composes_and_validates_before_a_model_is_built(tmp_path, device):
    accel = {"cuda": "gpu", "cpu": "cpu"}[device]
    for key in check_overrides(tmp_path, device):
        cfg = compose_check(key, tmp_path, device)
        assert cfg.paths.run_dir == str(tmp_path / key)
        assert (cfg.eval.accelerator if key == "eval" else cfg.trainer.accelerator) == accel
    assert compose_check("t5", tmp_path, device).trainer.max_epochs == 1
    assert compose_check("eval", tmp_path, device).extractor.name == "llm"  # no spaCy on a lent machine


@pytest.mark.slow
def test_the_t5_check_trains_on_the_cpu(tmp_path):
    line = check_t5_bf16(tmp_path, "cpu")
    assert line.startswith("8 steps in bf16-mixed, best dev F1 ")  # 64 sentences, batches of 8, one epoch
