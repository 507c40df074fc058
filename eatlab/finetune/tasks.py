"""EACL pairs -> chat examples in the model's template, with the loss on the answer tokens only.

Two task directions (our reconstruction; the paper's format is not public):
- backward: English mention + target sentence -> the target phrase, copied from the sentence. Same wording as
  the pipeline's one-round backward prompt (eatlab_v1 `locate_only`), so tuning teaches exactly the step
  that span recovery depends on.
- forward: target phrase in its sentence -> the English name (the entity knowledge the forward translation needs).

An example is tokenised as the prompt rendered by the chat template with the generation prompt (exactly what the
model sees at inference) followed by the answer and the template's end-of-turn token. Labels are -100 on the
prompt, so only the answer and the end-of-turn token are learned.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from eatlab.data.languages import Language, get_language
from eatlab.errors import ConfigError
from eatlab.finetune.eacl import AlignedPair
from eatlab.llm.base import Message
from eatlab.utils.io import canonical_json, sha256_text

DIRECTIONS = ("backward", "forward")
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Templates:
    """Prompt templates; placeholders {language}, {sentence}, {phrase} are filled literally. `{language}` is the
    run's language name (its composed node: `language.name=...` or a language of one's own) for pairs in that
    language, the shipped table's name for the other codes of `finetune.languages`."""

    system: str | None
    backward: str
    forward: str
    language_names: tuple[tuple[str, str], ...] = ()  # (code, name) of the run's language(s)

    @classmethod
    def from_config(cls, cfg, languages: tuple[Language, ...] = ()) -> Templates:
        names = tuple((lang.code, lang.name) for lang in languages)
        try:
            return cls(cfg.get("system"), str(cfg["backward"]), str(cfg["forward"]), names)
        except KeyError as exc:
            raise ConfigError(f"finetune.templates.{exc.args[0]}: missing") from None


@dataclass(frozen=True)
class Example:
    """One supervised chat example: the messages up to the user turn and the expected assistant answer."""

    direction: str
    language: str
    index: int  # the pair's position in its EACL file
    messages: tuple[Message, ...]
    answer: str

    def as_dict(self) -> dict:
        d = asdict(self)
        d["messages"] = list(self.messages)
        return d


def _fill(template: str, values: dict[str, str]) -> str:
    out = template
    for key, val in values.items():
        out = out.replace("{" + key + "}", val)
    return out


def language_name(code: str) -> str:
    """English name for prompts of a code that is not the run's language: the shipped conf/language/<code>.yaml."""
    return get_language(code).name


def build_examples(pairs: list[AlignedPair], directions: list[str], templates: Templates) -> list[Example]:
    """One example per pair and direction, in pair order (directions interleaved)."""
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad or not directions:
        raise ConfigError(f"finetune.directions={list(directions)}: choose from {list(DIRECTIONS)}")
    names: dict[str, str] = {}
    own = dict(templates.language_names)
    out = []
    for p in pairs:
        name = names.setdefault(p.language, own.get(p.language) or language_name(p.language))
        for d in directions:
            if d == "backward":
                user = _fill(
                    templates.backward, {"language": name, "sentence": p.text, "phrase": p.eng_entity}
                )
                answer = p.phrase
            else:
                user = _fill(templates.forward, {"language": name, "sentence": p.text, "phrase": p.phrase})
                answer = p.eng_entity
            msgs: list[Message] = []
            if templates.system:
                msgs.append({"role": "system", "content": _fill(templates.system, {"language": name})})
            msgs.append({"role": "user", "content": user})
            out.append(Example(d, p.language, p.index, tuple(msgs), answer))
    return out


def examples_sha256(train: list[Example], val: list[Example]) -> str:
    """The data hash saved with the adapter: sha256 of the canonical JSON of every example, both splits."""
    return sha256_text(
        canonical_json({"train": [e.as_dict() for e in train], "val": [e.as_dict() for e in val]})
    )


# --- tokenisation ------------------------------------------------------------------------------------------------
def prompt_ids(tokenizer, messages) -> list[int]:
    """The conversation as the model sees it at inference: chat template with the generation prompt."""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def end_of_turn_ids(tokenizer) -> list[int]:
    """The tokens the template puts after an assistant answer, up to its end-of-turn token (Qwen: <|im_end|>)."""
    probe = [{"role": "user", "content": "x"}]
    head = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(probe + [{"role": "assistant", "content": "ANSWER"}], tokenize=False)
    if full.startswith(head + "ANSWER"):
        tail = full[len(head) + len("ANSWER") :].rstrip()
        if tail:
            ids = list(tokenizer(tail, add_special_tokens=False)["input_ids"])
            if ids:
                return ids
    if tokenizer.eos_token_id is None:
        raise ConfigError("model: the tokenizer has neither a chat template end-of-turn nor an eos token")
    return [tokenizer.eos_token_id]


@dataclass
class Encoded:
    """Token ids of one example: `input_ids` = prompt + answer + end-of-turn; labels -100 on the prompt."""

    example: Example
    prompt: list[int]
    input_ids: list[int]
    labels: list[int]


def encode_examples(tokenizer, examples: list[Example], max_length: int) -> tuple[list[Encoded], int]:
    """Encode every example; those longer than `max_length` tokens are dropped (returned count)."""
    eot = end_of_turn_ids(tokenizer)
    out: list[Encoded] = []
    too_long = 0
    for ex in examples:
        p = prompt_ids(tokenizer, ex.messages)
        a = list(tokenizer(ex.answer, add_special_tokens=False)["input_ids"]) + eot
        if len(p) + len(a) > max_length:
            too_long += 1
            continue
        out.append(Encoded(ex, p, p + a, [IGNORE_INDEX] * len(p) + a))
    return out, too_long


class Collator:
    """Left-pads a batch, so that every row's answer sits in the last `keep` positions.

    The model then computes logits for those positions only (`logits_to_keep`): with Qwen's 152k-token vocabulary
    the output layer over whole prompts would dominate time and memory, while the loss needs the answers alone.
    Position ids count real tokens only, so a padded row is computed exactly as it would be alone (and as at
    inference, where generation derives positions from the mask). For validation the prompts alone are added
    (left-padded, for greedy generation) with the gold answers.
    """

    def __init__(self, pad_id: int, with_prompts: bool = False):
        self.pad_id = int(pad_id)
        self.with_prompts = with_prompts

    @staticmethod
    def _left_pad(rows: list[list[int]], fill: int):
        import torch

        width = max(len(r) for r in rows)
        out = torch.full((len(rows), width), fill, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
        return out, mask

    def __call__(self, batch: list[Encoded]) -> dict:
        ids, mask = self._left_pad([e.input_ids for e in batch], self.pad_id)
        labels, _ = self._left_pad([e.labels for e in batch], IGNORE_INDEX)
        out = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
            "labels": labels,
            # positions whose logits are needed: every answer token plus the position that predicts the first
            "keep": max(len(e.input_ids) - len(e.prompt) for e in batch) + 1,
        }
        if self.with_prompts:
            out["prompt_ids"], out["prompt_mask"] = self._left_pad([e.prompt for e in batch], self.pad_id)
            out["answers"] = [e.example.answer for e in batch]
            out["directions"] = [e.example.direction for e in batch]
        return out
