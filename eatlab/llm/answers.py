"""Model answers as they come back: control characters removed, and the script of an answer judged.

Why: a model (or a server) can return terminal escapes, NULs and other control characters that would corrupt the
next round's prompt, the JSONL artifacts or a terminal; and an answer in the wrong script can never be a span of
the sentence. Both are counted (metrics.json `counts`), never fatal.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")
_KEEP = {"\n", "\t"}


def strip_control(text: str) -> tuple[str, int]:
    """The text without ANSI escape sequences and control characters (newline and tab kept, CRLF -> LF).

    Returns the clean text and how many characters were removed (a plain CRLF does not count). Format characters
    (zero-width joiners and the like, category Cf) are kept: they are part of Devanagari, Arabic and emoji text.
    """
    if not text:
        return "", 0
    text = text.replace("\r\n", "\n")
    out = _ANSI.sub("", text)
    removed = len(text) - len(out)
    kept = [c for c in out if c in _KEEP or unicodedata.category(c) != "Cc"]
    removed += len(out) - len(kept)
    return "".join(kept), removed


_SCRIPT_ALIASES = {"FULLWIDTH": "LATIN", "HALFWIDTH": "KATAKANA", "CJK": "HAN", "KANGXI": "HAN"}


def char_script(ch: str) -> str | None:
    """The script of a letter as the first word of its Unicode name (LATIN, CYRILLIC, HAN, HANGUL, ...)."""
    if not ch.isalpha():
        return None
    try:
        head = unicodedata.name(ch).split(" ", 1)[0]
    except ValueError:
        return None
    return _SCRIPT_ALIASES.get(head, head)


def scripts(text: str) -> Counter:
    """How many letters of each script the text has."""
    return Counter(s for s in map(char_script, text) if s is not None)


def wrong_script(answer: str, expected: set[str] | frozenset[str]) -> bool:
    """True when the answer has letters and fewer than half of them are in one of the expected scripts."""
    counts = scripts(answer)
    total = sum(counts.values())
    if not total or not expected:
        return False
    return sum(n for s, n in counts.items() if s in expected) * 2 < total
