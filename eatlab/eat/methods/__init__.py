"""Methods on the same harness (EAT, direct LLM NER, translate-test), each built from its `method` config node.

`build_method` instantiates `method._target_` with the node's own parameters, the run's `StageContext`, and an
English NER extractor only when the method's constructor asks for one.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from omegaconf import OmegaConf

from eatlab.data.languages import Language
from eatlab.eat.methods.base import Method
from eatlab.eat.stages import StageContext
from eatlab.errors import ConfigError
from eatlab.extractors.base import build_extractor
from eatlab.llm.base import generation_config
from eatlab.llm.prompts import load_prompt_set
from eatlab.utils.components import build, locate, require_subclass
from eatlab.utils.hydra_runtime import task_overrides

__all__ = ["Method", "build_method", "method_class", "method_rounds", "stage_context"]


def method_class(cfg) -> type[Method]:
    cls = locate(cfg, "method._target_", "eatlab.eat.methods.eat.EAT")
    return require_subclass(cls, Method, "method._target_", OmegaConf.select(cfg, "method._target_"))


def method_rounds(cfg) -> dict[str, int]:
    """The prompt rounds the method runs with: `prompt_rounds`, unless the method fixes some of them.

    A method with fixed rounds (translate-test: one forward round) uses them; when the command line asks for
    other rounds explicitly, that is a one-line error, never a silent override.
    """
    rounds = {"forward": int(cfg.prompt_rounds.forward), "backward": int(cfg.prompt_rounds.backward)}
    fixed = method_class(cfg).fixed_rounds
    asked = [o for o in task_overrides() if o.lstrip("+~").startswith("prompt_rounds")]
    for direction, n in fixed.items():
        if asked and rounds[direction] != n:
            raise ConfigError(
                f"prompt_rounds.{direction}={rounds[direction]}: method={cfg.method.name} always runs {n} "
                f"{direction} round(s); drop `{asked[0]}` or choose another method"
            )
        rounds[direction] = n
    return rounds


def stage_context(cfg, client, language: Language, run_dir: Path, rounds: dict[str, int]) -> StageContext:
    """The stages' shared context from the config (prompt set, generation, `alignment.*`): the one builder, used
    by every method and by the alignment benchmark (eatlab.eat.align_eval)."""
    return StageContext(
        client,
        load_prompt_set(cfg, rounds["forward"], rounds["backward"]),
        language,
        generation_config(cfg),
        run_dir,
        max_sentence_chars=cfg.get("max_sentence_chars", 1000),
        constrained_alignment=bool(OmegaConf.select(cfg, "alignment.constrained", default=False)),
        alignment_select=alignment_select(cfg),
        constraint_param=OmegaConf.select(cfg, "backend.constraint_param", default=None),
    )


def alignment_select(cfg) -> dict:
    """How a constrained backward answer is chosen (`alignment.select`, `alignment.max_span_words`,
    `alignment.max_span_chars`), as the final round's GenerationSettings fields."""
    return {
        "substring_select": str(OmegaConf.select(cfg, "alignment.select", default="generate")),
        "max_span_words": int(OmegaConf.select(cfg, "alignment.max_span_words", default=10)),
        "max_span_chars": int(OmegaConf.select(cfg, "alignment.max_span_chars", default=16)),
        "rank_top_first": OmegaConf.select(cfg, "alignment.rank_top_first", default=16),
    }


def build_method(cfg, client, language: Language, run_dir: Path) -> Method:
    """The configured method over a fresh StageContext; the extractor is built only if the method takes one."""
    cls = method_class(cfg)
    ctx = stage_context(cfg, client, language, run_dir, method_rounds(cfg))
    kwargs = {"ctx": ctx}
    if "extractor" in inspect.signature(cls).parameters:
        kwargs["extractor"] = build_extractor(cfg, client)
    return build(cfg.method, "method", **kwargs)
