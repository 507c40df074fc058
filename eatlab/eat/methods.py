"""Build the pipeline of the configured `method`: EAT or a baseline on the same harness."""

from __future__ import annotations

from pathlib import Path

from eatlab.data.languages import Language
from eatlab.eat.pipeline import EATPipeline
from eatlab.llm.prompts import load_prompt_set
from eatlab.errors import ConfigError
from eatlab.extractors.base import build_extractor


def generation_config(cfg) -> dict:
    """The `generation` group plus the model's token cap (smoke models have one)."""
    gen = dict(cfg.generation)
    gen["max_new_tokens_cap"] = cfg.model.get("max_new_tokens_cap")
    return gen


def build_pipeline(cfg, client, language: Language, run_dir: Path):
    name = cfg.method.name
    if name == "eat":
        cls = EATPipeline
    elif name == "translate_test":
        from eatlab.eat.translate_test import TranslateTestPipeline as cls
    elif name == "direct_llm":
        from eatlab.eat.direct_llm import DirectLLMPipeline as cls
    else:
        raise ConfigError(f"method.name={name}: unknown method (eat, direct_llm, translate_test)")
    pipe = cls(
        client,
        load_prompt_set(cfg),
        build_extractor(cfg, client),
        language,
        generation_config(cfg),
        run_dir,
        max_sentence_chars=cfg.get("max_sentence_chars", 1000),
    )
    if name == "direct_llm":
        pipe.rounds = int(cfg.method.get("rounds", 1))
    if name == "translate_test":
        pipe.min_score = float(cfg.method.get("min_score", 0.6))
    return pipe
