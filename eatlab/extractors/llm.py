"""English NER by the run's own LLM: it lists `(TYPE, entity)` pairs, parsed robustly."""

from __future__ import annotations

from eatlab.llm.conversation import round_settings, sanitize_reply
from eatlab.llm.parse import parse_entity_list
from eatlab.extractors.base import EntityList, Extractor


class LLMExtractor(Extractor):
    name = "llm"

    def __init__(self, client, cfg):
        from eatlab.llm.prompts import load_prompt_set

        self.client = client
        from eatlab.eat.methods import generation_config

        self.generation = generation_config(cfg)
        self.prompts = load_prompt_set(cfg)
        self.last_conversations: list[list[dict]] = []

    def extract(self, sentences: list[str]) -> list[EntityList]:
        convs, budget = [], 128
        for s in sentences:
            conv, budget = self.prompts.single_turn("extractor", self.prompts.values("English", sentence=s))
            convs.append(conv)
        replies = (
            self.client.chat(convs, round_settings(self.generation, budget), stage="ner") if convs else []
        )
        for rep in replies:
            sanitize_reply(rep)  # control characters out, white space trimmed
        self.last_conversations = [
            c + [{"role": "assistant", "content": r.text}] for c, r in zip(convs, replies)
        ]
        return [parse_entity_list(r.text) if not r.error else [] for r in replies]
