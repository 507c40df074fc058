"""Build the pipeline of the configured `method` (EAT; baselines plug in here)."""

from __future__ import annotations

from pathlib import Path

from eatlab.data.languages import Language
from eatlab.eat.pipeline import EATPipeline
from eatlab.eat.prompts import load_prompt_set
from eatlab.errors import ConfigError
from eatlab.extractors.base import build_extractor


def build_pipeline(cfg, client, language: Language, run_dir: Path):
    name = cfg.method.name
    if name == "eat":
        return EATPipeline(
            client,
            load_prompt_set(cfg),
            build_extractor(cfg, client),
            language,
            cfg.generation,
            run_dir,
            max_sentence_chars=cfg.get("max_sentence_chars", 1000),
        )
    raise ConfigError(f"method.name={name}: unknown method")
