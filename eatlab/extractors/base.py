"""The English NER interface: English sentences in, `(TYPE, entity text)` lists out (TYPE in PER/ORG/LOC)."""

from __future__ import annotations

import abc

EntityList = list[tuple[str, str]]


class Extractor(abc.ABC):
    name: str = "abstract"

    @abc.abstractmethod
    def extract(self, sentences: list[str]) -> list[EntityList]:
        """One entity list per sentence, in sentence order; entity text as it stands in the sentence."""

    def provenance(self) -> dict:
        return {"name": self.name}


def build_extractor(cfg, client=None) -> Extractor:
    """The extractor named by `extractor.name` (llm needs the run's LLM client)."""
    from eatlab.errors import ConfigError

    name = cfg.extractor.name
    if name == "llm":
        from eatlab.extractors.llm import LLMExtractor

        return LLMExtractor(client, cfg)
    if name in ("spacy", "spacy_wikiann"):
        from eatlab.extractors.spacy_ner import SpacyExtractor

        return SpacyExtractor(cfg.extractor.model, name=name, batch_size=cfg.extractor.get("batch_size", 64))
    if name == "flan_t5":
        from eatlab.extractors.flan_t5 import FlanT5Extractor

        return FlanT5Extractor.from_config(cfg.extractor)
    raise ConfigError(f"extractor.name={name}: unknown extractor (llm, spacy, spacy_wikiann, flan_t5)")
