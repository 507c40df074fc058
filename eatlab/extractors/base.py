"""The English NER interface: English sentences in, `(TYPE, entity text)` lists out (TYPE in PER/ORG/LOC)."""

from __future__ import annotations

import abc
import logging
from pathlib import Path

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

    def identity(self) -> dict:
        """What ran, without loading anything: the name, and the configured extractor it stood in for, if any."""
        return {"name": self.name, **({"fallback_from": self.fallback_from} if self.fallback_from else {})}


def build_extractor(cfg, client=None, allow_fallback: bool = True) -> Extractor:
    """The extractor named by `extractor.name` (llm needs the run's LLM client).

    `allow_fallback=False` (scoring a named extractor) makes a missing trained spaCy pipeline an error.
    """
    from eatlab.errors import ConfigError

    name = cfg.extractor.name
    if name == "llm":
        from eatlab.extractors.llm import LLMExtractor

        return LLMExtractor(client, cfg)
    if name in ("spacy", "spacy_wikiann"):
        from eatlab.extractors.spacy_ner import SpacyExtractor

        model = str(cfg.extractor.model)
        batch_size = cfg.extractor.get("batch_size", 64)
        fallback = cfg.extractor.get("fallback") if allow_fallback else None
        if name == "spacy_wikiann" and fallback and not Path(model).is_dir():
            # a fresh clone has no trained pipeline yet: run with the fallback, loudly, and say so in provenance
            log.warning(
                "extractor=spacy_wikiann: no trained pipeline at %s (train it: make train-spacy); "
                "using extractor.fallback=%s (en_core_web_sm, OntoNotes conventions, lower F1)",
                model,
                fallback,
            )
            ext = SpacyExtractor(fallback, name="spacy", batch_size=batch_size)
            ext.fallback_from = {"name": name, "model": model, "reason": "model not trained"}
            return ext
        return SpacyExtractor(model, name=name, batch_size=batch_size)
    if name == "flan_t5":
        from eatlab.extractors.flan_t5 import FlanT5Extractor

        return FlanT5Extractor.from_config(cfg.extractor)
    raise ConfigError(f"extractor.name={name}: unknown extractor (llm, spacy, spacy_wikiann, flan_t5)")
