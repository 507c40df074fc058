"""The CPU a run ran on is in its provenance, and a bf16 model on a CPU without bf16 matrix units (no AVX512-BF16,
no AMX: its matmuls take a slow path, 6-7x / 100-200x slower forward / backward on an AVX2 EPYC) says so in
the log when it loads. Both read the real machine: the assertions hold on either kind of CPU."""

from __future__ import annotations

import logging

import torch

from eatlab.llm.identity import warn_if_slow_bf16
from eatlab.provenance import cpu_info, write_provenance


def _has_units() -> bool:
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def test_cpu_info_names_the_cpu_its_capability_and_bf16_units(compose, tmp_path):
    info = cpu_info()
    assert set(info) == {"model", "capability", "bf16_units"}
    assert info["capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["bf16_units"] is _has_units()
    prov = write_provenance(tmp_path, compose([]))
    assert prov["cpu"] == info


def test_only_bf16_on_a_cpu_without_units_warns(caplog):
    assert warn_if_slow_bf16("torch.float32", "cpu") is None
    assert warn_if_slow_bf16("torch.bfloat16", "cuda") is None
    with caplog.at_level(logging.WARNING, logger="eatlab"):
        line = warn_if_slow_bf16("torch.bfloat16", "cpu")
    assert (line is None) is _has_units()
    if line is not None:
        assert line.startswith("bfloat16 on a CPU without bf16 matrix units (")
        assert [r.getMessage() for r in caplog.records] == [line]


def test_the_hf_load_of_a_bf16_model_on_this_cpu_warns_exactly_when_it_has_no_units(caplog, tmp_path):
    from eatlab.llm.hf_load import load_model
    from eatlab.llm.tiny import ensure_tiny_model

    tiny = ensure_tiny_model(tmp_path / "tiny")
    with caplog.at_level(logging.WARNING, logger="eatlab"):
        load_model(str(tiny), device="cpu", dtype=torch.bfloat16)
        load_model(str(tiny), device="cpu", dtype=torch.float32)
    warned = [r for r in caplog.records if "without bf16 matrix units" in r.getMessage()]
    assert len(warned) == (0 if _has_units() else 1)
