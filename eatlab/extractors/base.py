"""The English NER interface: English sentences in, `(TYPE, entity text)` lists out (TYPE in PER/ORG/LOC).

Extractors are built from the `extractor` config node by `hydra.utils.instantiate` (`build_extractor`): the
node's keys are the constructor's keyword parameters, except `train` (the recipe `eatlab-train-extractor`
reads). The run injects what only it has, by parameter name:
`client` (the run's LLM client), `prompts` (its prompt set), `generation` (its generation settings).
"""

from __future__ import annotations

import abc
import inspect
import logging
from pathlib import Path

from omegaconf import OmegaConf

from eatlab.errors import ConfigError
from eatlab.llm.base import generation_config
from eatlab.llm.identity import folder_fingerprint
from eatlab.llm.prompts import load_prompt_set
from eatlab.utils.components import build, locate

EntityList = list[tuple[str, str]]
log = logging.getLogger(__name__)


class Extractor(abc.ABC):
    name: str = "abstract"

    @abc.abstractmethod
    def extract(self, sentences: list[str]) -> list[EntityList]:
        """One entity list per sentence, in sentence order; entity text as it stands in the sentence."""

    fallback_from: dict | None = (
        None  # set when a configured extractor was unavailable and this one stands in
    )

    def provenance(self) -> dict:
        return {"name": self.name}

    model_dir: str | None = None  # a local model folder, fingerprinted in provenance

    def identity(self) -> dict:
        """What ran, without loading anything: the name, the fingerprint of a local model folder, and the
        configured extractor it stood in for, if any."""
        out: dict = {"name": self.name}
        if self.model_dir and Path(self.model_dir).is_dir():
            out.update(model=str(self.model_dir), fingerprint=folder_fingerprint(self.model_dir))
        return {**out, **({"fallback_from": self.fallback_from} if self.fallback_from else {})}


def extractor_factory(cfg):
    """The callable named by `extractor._target_` (a class or a classmethod)."""
    return locate(cfg, "extractor._target_", "eatlab.extractors.spacy_ner.SpacyExtractor")


def build_extractor(cfg, client=None, allow_fallback: bool = True) -> Extractor:
    """The configured extractor; `client`, `prompts` and `generation` are passed to constructors that take them.

    `allow_fallback=False` (scoring a named extractor) makes a missing trained spaCy pipeline an error.
    """
    factory = extractor_factory(cfg)
    params = inspect.signature(factory).parameters
    kwargs = {}
    if "client" in params:
        kwargs["client"] = client
    if "prompts" in params:
        kwargs["prompts"] = load_prompt_set(cfg)
    if "generation" in params:
        kwargs["generation"] = generation_config(cfg)
    if not allow_fallback and "fallback" in params:
        kwargs["fallback"] = None
    node = {k: v for k, v in OmegaConf.to_container(cfg.extractor, resolve=True).items() if k != "train"}
    ext = build(node, "extractor", **kwargs)
    if not isinstance(ext, Extractor):
        raise ConfigError(f"extractor._target_={cfg.extractor._target_}: does not build an Extractor")
    return ext
