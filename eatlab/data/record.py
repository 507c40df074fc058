"""The sentence record every stage passes along: tokens, gold tags and the source text with offsets."""

from __future__ import annotations

from dataclasses import dataclass, field

SPACE_TOKEN = "#"  # WikiANN zh/ja: a space of the original text is the token '#' tagged O


@dataclass
class Sentence:
    """One WikiANN sentence.

    `id` is `<lang>-<split>-<index>` (index 0-based in the split file). `text` is the tokens joined as the
    source text (zh/ja: no separator and `#` read as a space; other languages: single spaces) and
    `offsets[i]` = (start, end) character span of token i in `text` (end exclusive).
    """

    id: str
    language: str
    tokens: list[str]
    tags: list[str]
    char_tokenized: bool = False
    text: str = ""
    offsets: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.text and self.tokens:
            self.text, self.offsets = join_tokens(self.tokens, self.char_tokenized)

    def __len__(self) -> int:
        return len(self.tokens)


def join_tokens(tokens: list[str], char_tokenized: bool) -> tuple[str, list[tuple[int, int]]]:
    """Build the source text and the token -> character offsets map."""
    parts: list[str] = []
    offsets: list[tuple[int, int]] = []
    pos = 0
    for i, tok in enumerate(tokens):
        if char_tokenized:
            piece = " " if tok == SPACE_TOKEN else tok
        else:
            if i:
                parts.append(" ")
                pos += 1
            piece = tok
        offsets.append((pos, pos + len(piece)))
        parts.append(piece)
        pos += len(piece)
    return "".join(parts), offsets
