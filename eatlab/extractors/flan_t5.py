"""English NER with a text-to-text checkpoint of the Flan-T5 family: instruction + sentence -> `(TYPE, entity)`."""

from __future__ import annotations

from pathlib import Path

from eatlab.errors import ConfigError
from eatlab.extractors.base import EntityList, Extractor
from eatlab.llm.parse import parse_entity_list

# The same instruction at training and inference (the reference release formats them differently).
INSTRUCTION = (
    "The task is to label named entities in the given sentence; each entity is one of [PER, LOC, ORG].\n"
    "Answer in the format (entity type, entity).\nHere is the sentence:\n"
)


class FlanT5Extractor(Extractor):
    name = "flan_t5"

    def __init__(
        self,
        checkpoint: str | None,
        batch_size: int = 32,
        max_new_tokens: int = 128,
        max_source_len: int = 256,
        device: str = "auto",
        name: str = "flan_t5",
    ):
        if not checkpoint:
            raise ConfigError("extractor.checkpoint: set it to a trained Flan-T5 folder or a hub id")
        self.name = name
        self.checkpoint = str(checkpoint)
        self.model_dir = self.checkpoint
        self.device = device  # auto: the first CUDA GPU when there is one, else the CPU
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.max_source_len = int(max_source_len)
        self._model = None
        self._tok = None

    def _load(self):
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        path = Path(self.checkpoint)
        if not path.exists() and (
            path.is_absolute() or self.checkpoint.startswith(".") or len(path.parts) > 2
        ):
            raise ConfigError(
                f"extractor.checkpoint={self.checkpoint}: no such folder (train one with `eatlab-train-extractor`)"
            )
        src = str(path) if path.exists() else self.checkpoint
        try:
            self._tok = AutoTokenizer.from_pretrained(src)
            self._model = AutoModelForSeq2SeqLM.from_pretrained(src).eval()
        except OSError as exc:
            raise ConfigError(f"extractor.checkpoint={self.checkpoint}: cannot load ({exc})") from None
        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._model.to(device)

    def extract(self, sentences: list[str]) -> list[EntityList]:
        from eatlab.utils.generation import greedy_texts

        if self._model is None:
            self._load()
        out: list[EntityList] = []
        for i in range(0, len(sentences), self.batch_size):
            batch = [INSTRUCTION + s for s in sentences[i : i + self.batch_size]]
            enc = self._tok(
                batch, return_tensors="pt", padding=True, truncation=True, max_length=self.max_source_len
            )
            enc = enc.to(self._model.device)
            texts = greedy_texts(
                self._model,
                self._tok,
                enc["input_ids"],
                enc["attention_mask"],
                max_new_tokens=self.max_new_tokens,
            )
            out.extend(parse_entity_list(t) for t in texts)
        return out

    def provenance(self) -> dict:
        return {"name": self.name, "checkpoint": self.checkpoint}
