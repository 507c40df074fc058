"""Versioned prompt sets: build the messages of every EAT conversation from a data file.

A prompt set file (eatlab/resources/prompts/*.yaml) has a system turn and, per direction, a preamble and the
user rounds. `reference.yaml` is the reference release's script verbatim: a fixed list of 3 rounds, so it exists
for R=3 only. `eatlab_v1.yaml` has a library of named rounds and a schedule for each R in 1..5. The set's name,
version and content hash go into provenance; through the messages they also enter the cache key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from eatlab.errors import ConfigError
from eatlab.llm.base import Conversation
from eatlab.paths import PROMPTS_DIR
from eatlab.utils.io import sha256_file

DEFAULT_ENTITY_TYPES = "LOCATION, PERSON, ORGANIZATION"
DEFAULT_ENTITY_TYPES_BRACKETED = "[LOCATION], [PERSON], [ORGANIZATION]"


@dataclass(frozen=True)
class Round:
    name: str
    text: str
    max_new_tokens: int
    purpose: str = ""


@dataclass(frozen=True)
class Direction:
    """The preamble and the user rounds of one direction (forward or backward) for a given R."""

    preamble: tuple[dict, ...]
    rounds: tuple[Round, ...]


def fill(template: str, values: dict[str, str]) -> str:
    """Literal placeholder substitution: `{name}` -> value; other braces are left alone."""
    out = template
    for key, val in values.items():
        out = out.replace("{" + key + "}", val)
    return out


class PromptSet:
    """One prompt set file, resolved for a number of forward and backward rounds."""

    def __init__(self, path: Path, forward_rounds: int, backward_rounds: int, max_new_tokens=None):
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"prompts.file: {self.path} does not exist")
        self.data = yaml.safe_load(self.path.read_text(encoding="utf-8"))
        self.name = str(self.data.get("name") or self.path.stem)
        self.version = str(self.data.get("version", "1"))
        self.sha256 = sha256_file(self.path)
        self.system = self.data.get("system")
        self.forward = self._direction("forward", int(forward_rounds), max_new_tokens)
        self.backward = self._direction("backward", int(backward_rounds), max_new_tokens)

    def _direction(self, key: str, n_rounds: int, budgets) -> Direction:
        spec = self.data.get(key)
        if not spec:
            raise ConfigError(f"prompts: the set {self.name!r} has no {key} direction")
        rounds_spec = spec["rounds"]
        if isinstance(rounds_spec, list):  # a fixed script (the reference set)
            if n_rounds != len(rounds_spec):
                raise ConfigError(
                    f"prompt_rounds.{key}={n_rounds}: the {self.name!r} prompt set exists only for "
                    f"{len(rounds_spec)} rounds (use prompts=eatlab for 1 to 5 rounds)"
                )
            rounds = [Round(f"round{i + 1}", t, 512) for i, t in enumerate(rounds_spec)]
        else:
            schedules = {int(k): v for k, v in spec["schedules"].items()}
            if n_rounds not in schedules:
                raise ConfigError(
                    f"prompt_rounds.{key}={n_rounds}: the {self.name!r} prompt set has schedules for "
                    f"{sorted(schedules)} rounds"
                )
            rounds = [
                Round(
                    name,
                    rounds_spec[name]["text"],
                    int(rounds_spec[name]["max_new_tokens"]),
                    rounds_spec[name].get("purpose", ""),
                )
                for name in schedules[n_rounds]
            ]
        if budgets is not None:
            budgets = list(budgets)
            if len(budgets) != len(rounds):
                raise ConfigError(
                    f"prompts.max_new_tokens: {len(budgets)} budgets given for {len(rounds)} {key} rounds"
                )
            rounds = [Round(r.name, r.text, int(b), r.purpose) for r, b in zip(rounds, budgets)]
        preamble = tuple({"role": m["role"], "content": m["content"]} for m in spec.get("preamble") or [])
        return Direction(preamble, tuple(rounds))

    # --- placeholder values -------------------------------------------------------------------------
    def values(self, language_name: str, **extra: str) -> dict[str, str]:
        vals = {
            "language": language_name,
            "entity_types": self.data.get("entity_types", DEFAULT_ENTITY_TYPES),
            "entity_types_bracketed": self.data.get("entity_types_bracketed", DEFAULT_ENTITY_TYPES_BRACKETED),
        }
        vals.update(extra)
        return vals

    def start(self, direction: Direction, values: dict[str, str]) -> Conversation:
        """System turn and preamble, filled; the user rounds are added by the stage, one per call."""
        conv: Conversation = []
        if self.system:
            conv.append({"role": "system", "content": fill(self.system, values)})
        conv.extend({"role": m["role"], "content": fill(m["content"], values)} for m in direction.preamble)
        return conv

    def single_turn(self, key: str, values: dict[str, str]) -> tuple[Conversation, int]:
        """A one-question conversation (`extractor`, `direct`), falling back to eatlab's set when absent."""
        spec = self.data.get(key)
        system = self.system
        if spec is None:
            fallback = yaml.safe_load((PROMPTS_DIR / "eatlab_v1.yaml").read_text(encoding="utf-8"))
            spec, system = fallback[key], fallback.get("system")
        conv: Conversation = []
        if system:
            conv.append({"role": "system", "content": fill(system, values)})
        conv.append({"role": "user", "content": fill(spec["text"], values)})
        return conv, int(spec.get("max_new_tokens", 128))

    def provenance(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "file": self.path.name,
            "sha256": self.sha256,
            "forward_rounds": [r.name for r in self.forward.rounds],
            "backward_rounds": [r.name for r in self.backward.rounds],
            "max_new_tokens": {
                "forward": [r.max_new_tokens for r in self.forward.rounds],
                "backward": [r.max_new_tokens for r in self.backward.rounds],
            },
        }


def load_prompt_set(cfg, forward: int | None = None, backward: int | None = None) -> PromptSet:
    """The prompt set named by `prompts.file` for `prompt_rounds.forward/backward` (or the rounds given)."""
    path = Path(cfg.prompts.file)
    if not path.is_absolute() and not path.exists():
        path = PROMPTS_DIR / path
    return PromptSet(
        path,
        cfg.prompt_rounds.forward if forward is None else forward,
        cfg.prompt_rounds.backward if backward is None else backward,
        cfg.prompts.get("max_new_tokens"),
    )
