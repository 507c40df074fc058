"""BIO tags <-> entity spans, on tokens and on characters, with both chunking rules.

`conlleval` chunking is seqeval's default mode: an entity starts at `B-X`, or at `I-X` whose previous tag is
not of type X, and continues over `I-X`. `reference` chunking is the EAT reference release's (METHOD.md,
step 2 of its scorer): an entity starts at any `B-` or `I-` tag and runs over the following `I-` tags whatever
their type, taking the type of its first tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ENTITY_TYPES = ("PER", "ORG", "LOC")
VALID_TAGS = frozenset({"O"} | {f"{p}-{t}" for p in "BI" for t in ENTITY_TYPES})
Chunking = Literal["conlleval", "reference"]


@dataclass(frozen=True, order=True)
class Span:
    """An entity over tokens [start, end) (or characters, for char spans) with its type."""

    start: int
    end: int
    type: str

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ValueError(f"empty or negative span {self.start}..{self.end}")


def _split(tag: str) -> tuple[str, str]:
    if tag == "O" or "-" not in tag:
        return "O", ""
    prefix, typ = tag.split("-", 1)
    return prefix, typ


def tags_to_spans(tags: list[str], chunking: Chunking = "conlleval") -> list[Span]:
    """Token spans of the entities in `tags`, in sentence order."""
    spans: list[Span] = []
    start: int | None = None
    typ = ""
    for i, tag in enumerate(tags):
        prefix, t = _split(tag)
        if chunking == "conlleval":
            continues = prefix == "I" and start is not None and t == typ
        else:
            continues = prefix == "I" and start is not None
        if continues:
            continue
        if start is not None:
            spans.append(Span(start, i, typ))
            start = None
        if prefix in ("B", "I"):
            start, typ = i, t
    if start is not None:
        spans.append(Span(start, len(tags), typ))
    return spans


def spans_to_tags(spans: list[Span], n_tokens: int) -> list[str]:
    """BIO tags for non-overlapping token spans; raises ValueError on overlap or out-of-range spans."""
    tags = ["O"] * n_tokens
    for sp in sorted(spans):
        if sp.end > n_tokens:
            raise ValueError(f"span {sp} outside a sentence of {n_tokens} tokens")
        if any(tags[i] != "O" for i in range(sp.start, sp.end)):
            raise ValueError(f"span {sp} overlaps another span")
        tags[sp.start] = f"B-{sp.type}"
        for i in range(sp.start + 1, sp.end):
            tags[i] = f"I-{sp.type}"
    return tags
