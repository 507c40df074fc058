"""English NER by the run's own LLM: it lists `(TYPE, entity)` pairs, parsed robustly."""

from __future__ import annotations

from eatlab.extractors.base import EntityList, Extractor
from eatlab.llm.base import settings_for_round
from eatlab.llm.conversation import sanitize_reply
from eatlab.llm.parse import parse_entity_list
from eatlab.llm.prompts import PromptSet


class LLMExtractor(Extractor):
    """Takes the run's `client`, `prompts` and `generation` (injected by `build_extractor`)."""

    def __init__(self, client, prompts: PromptSet, generation: dict, name: str = "llm"):
        self.client = client
        self.prompts = prompts
        self.generation = dict(generation)
        self.name = name
        self.last_conversations: list[list[dict]] = []

    def extract(self, sentences: list[str]) -> list[EntityList]:
        convs, budget = [], 128
        for s in sentences:
            conv, budget = self.prompts.single_turn("extractor", self.prompts.values("English", sentence=s))
            convs.append(conv)
        replies = (
            self.client.chat(convs, settings_for_round(self.generation, budget), stage="ner") if convs else []
        )
        for rep in replies:
            sanitize_reply(rep)  # control characters out, white space trimmed
        self.last_conversations = [
            c + [{"role": "assistant", "content": r.text}] for c, r in zip(convs, replies)
        ]
        return [parse_entity_list(r.text) if not r.error else [] for r in replies]
