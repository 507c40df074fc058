"""Components defined outside eatlab, selected by config only (tests/test_components.py; docs/extending.md).

- `EchoBackend`: an LLM that answers every conversation with the second line of its first user turn (in the
  forward prompts, the source sentence: the "translation" is the source itself);
- `LookupBackend`: answers from a JSON table {substring of the first user turn: answer} (the first key found
  wins, else an empty answer): a scripted model whose right and wrong answers a test chooses;
- `CountingHF`: eatlab's transformers backend subclassed (it counts the rows it answers); it inherits the
  class's capabilities, so `alignment=ranked` accepts it;
- `WrappedHF`: a backend that wraps an `HFBackend` it builds from the `ModelSpec` it receives;
- `CapitalisedWords`: an "English NER" that calls every capitalised word after the first a PER;
- `ExactCopy`: a method composed of eatlab's stages: translate forward, extract, then place each entity where
  it occurs verbatim in the source (no backward LLM).
"""

from __future__ import annotations

from eatlab.eat import stages
from eatlab.eat.methods.base import Method
from eatlab.extractors.base import Extractor
from eatlab.llm.base import LLMBackend, ModelSpec, Reply
from eatlab.llm.hf import HFBackend


class EchoBackend(LLMBackend):
    kind = "echo"
    local_weights = False

    def __init__(self, model, prefix: str = ""):
        self.model = model
        self.prefix = prefix
        self.calls = 0

    @classmethod
    def cache_identity(cls, model, params: dict) -> str:
        return f"echo:{model.id}"

    @property
    def model_key(self) -> str:
        return f"echo:{self.model.id}"

    def generate(self, conversations, settings):
        out = []
        for conv in conversations:
            self.calls += 1
            first = next(m["content"] for m in conv if m["role"] == "user").splitlines()
            text = self.prefix + (first[1] if len(first) > 1 else first[0]).strip()
            out.append(
                Reply(
                    text=text,
                    prompt_tokens=sum(len(m["content"].split()) for m in conv),
                    completion_tokens=len(text.split()),
                    finish_reason="stop",
                )
            )
        return out


class LookupBackend(LLMBackend):
    kind = "lookup"
    local_weights = False

    def __init__(self, model, table: str):
        import json
        from pathlib import Path

        self.model = model
        self.table_path = str(table)
        self.table = json.loads(Path(table).read_text(encoding="utf-8"))

    @classmethod
    def cache_identity(cls, model, params: dict) -> str:
        return f"lookup:{model.id}:{params.get('table')}"

    @property
    def model_key(self) -> str:
        return f"lookup:{self.model.id}:{self.table_path}"

    def generate(self, conversations, settings):
        out = []
        for conv in conversations:
            first = next(m["content"] for m in conv if m["role"] == "user")
            text = next((v for k, v in self.table.items() if k in first), "")
            out.append(
                Reply(text=text, prompt_tokens=len(first), completion_tokens=len(text), finish_reason="stop")
            )
        return out


class CountingHF(HFBackend):
    """The hf backend, subclassed: same weights, same cache identity, same capabilities."""

    def __init__(self, model_path_or_id, **kwargs):
        super().__init__(model_path_or_id, **kwargs)
        self.rows = 0

    def generate(self, conversations, settings):
        self.rows += len(conversations)
        return super().generate(conversations, settings)


class WrappedHF(LLMBackend):
    """A backend of one's own around an HFBackend: it receives the run's `ModelSpec`, as documented."""

    kind = "wrapped_hf"

    def __init__(self, model: ModelSpec, batch_size: int = 4):
        self.model = model
        self.inner = HFBackend(**model.weights_kwargs(), batch_size=batch_size)

    @property
    def model_key(self) -> str:
        return self.inner.model_key

    def generate(self, conversations, settings):
        return self.inner.generate(conversations, settings)


class BrokenBackend(EchoBackend):
    """A backend whose own code fails: the error keeps its traceback (it is not a config error)."""

    kind = "broken"

    def __init__(self, model, prefix: str = ""):
        super().__init__(model, prefix)
        self.revision = model.revsion  # a typo in user code: AttributeError


class CapitalisedWords(Extractor):
    def __init__(self, label: str = "PER", name: str = "capitalised_words"):
        self.label = label
        self.name = name

    def extract(self, sentences):
        return [[(self.label, w) for w in s.split()[1:] if w[:1].isupper()] for s in sentences]


class ExactCopy(Method):
    def __init__(self, ctx, extractor, name: str = "exact_copy"):
        super().__init__(ctx, name)
        self.extractor = extractor

    def run(self, sentences):
        results = stages.prepare(self.ctx, sentences)
        stages.translate_forward(self.ctx, results)
        stages.extract(self.ctx, self.extractor, results)
        # each entity placed as it is (no backward LLM), recorded in backward.jsonl like every method's
        answers = [stages.Answer(r, typ, phrase, phrase) for r in results for typ, phrase in r.entities]
        stages.place_answers(self.ctx, answers, results)
        return results
