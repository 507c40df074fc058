"""The study presets run what their comments say (issue 22 item 4): the paper's studies answer freely
(`alignment=free`); main_table also uses the reference prompt script and the reference release's sampled decoding."""

from __future__ import annotations

import pytest

from eatlab.llm.base import generation_config, settings_for_round
from eatlab.paths import CONF_DIR

PAPER_STUDIES = ("main_table", "rounds_ablation", "ft_ablation", "model_size", "lsl_vs_nsl", "baselines")


def _header(study: str) -> str:
    lines = (CONF_DIR / "experiment" / f"{study}.yaml").read_text(encoding="utf-8").splitlines()
    return " ".join(line.lstrip("# ") for line in lines if line.startswith("#"))


@pytest.mark.parametrize("study", PAPER_STUDIES)
def test_paper_studies_answer_freely(compose, study):
    cfg = compose([f"experiment={study}"])
    assert cfg.alignment.constrained is False
    assert cfg.alignment.select == "generate"
    assert "alignment=free" in _header(study)


@pytest.mark.parametrize("study", ["rounds_ablation", "ft_ablation", "model_size", "lsl_vs_nsl", "baselines"])
def test_ablations_use_eatlab_prompts_and_greedy_decoding(compose, study):
    cfg = compose([f"experiment={study}"])
    assert cfg.prompts.name == "eatlab"
    assert cfg.generation.do_sample is False
    assert cfg.generation.max_new_tokens is None  # each round's budget is the prompt set's
    assert "greedy" in _header(study)


def test_main_table_is_the_reference_release(compose):
    cfg = compose(["experiment=main_table"])
    assert cfg.prompts.name == "reference"
    assert (cfg.prompt_rounds.forward, cfg.prompt_rounds.backward) == (3, 3)
    for budget in (200, 80):  # the release decodes every round with 512 new tokens, whatever the round
        s = settings_for_round(generation_config(cfg), budget)
        assert (s.do_sample, s.temperature, s.top_p, s.top_k, s.max_new_tokens) == (True, 0.7, 0.8, 20, 512)
    assert s.repetition_penalty == pytest.approx(1.05)
    header = _header("main_table")
    for said in ("prompts=reference", "generation=reference", "T=0.7", "top_p 0.8", "512", "alignment=free"):
        assert said in header


@pytest.mark.parametrize("study", ["main_table", "rounds_ablation"])
def test_the_command_line_still_wins(compose, study):
    """`alignment=constrained` on the command line runs eatlab's constrained variant of a study."""
    assert compose([f"experiment={study}", "alignment=constrained"]).alignment.constrained is True


def test_the_rounds_sweep_stays_free(compose):
    for rounds in ("r1", "r3", "r5"):
        cfg = compose(["experiment=rounds_ablation", f"prompt_rounds={rounds}"])
        assert cfg.alignment.constrained is False
