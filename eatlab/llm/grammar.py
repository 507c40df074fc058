"""The constrained answer's grammar for servers: one GBNF text per sentence, accepting exactly the answers the hf
backend's processor (`eatlab.llm.constraint.SubstringProcessor`) lets stop.

The answer is a verbatim substring of the sentence that starts at a letter or digit at a word start and ends
after a letter, mark or digit at a word end (any character boundary in scripts written without spaces), with
one optional leading space that is not part of the answer (rule 3: byte-level BPE merges a space into
word-initial pieces). `substring_gbnf` writes that language as a chain of rules over the sentence's word edges,
so every prefix a decoder may take can still end as an answer (it never runs on into trailing punctuation it
cannot stop in). The text goes to the llama.cpp server (`grammar`) and to vLLM's structured outputs (xgrammar
and llguidance both read GBNF). llguidance was measured as the hf engine too and lost on cost
(experiments/grammar_engine/, docs/llm.md).
"""

from __future__ import annotations

import unicodedata

from eatlab.llm.constraint import _spaceless, _wordish


def word_edges(text: str) -> tuple[list[int], list[int]]:
    """Character offsets where an answer may start and where it may end, both ascending."""
    n = len(text)

    def boundary(k: int) -> bool:  # between two characters that are not both of one spaced-script word
        if k in (0, n):
            return True
        a, b = text[k - 1], text[k]
        return not (_wordish(a) and _wordish(b)) or _spaceless(a) or _spaceless(b)

    edges = [k for k in range(n + 1) if boundary(k)]
    starts = [k for k in edges if k < n and unicodedata.category(text[k])[0] in "LN"]
    ends = [k for k in edges if k > 0 and unicodedata.category(text[k - 1])[0] in "LMN"]
    return starts, ends


def _lit(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _rules(text: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """The grammar's rules as (name, alternatives), an alternative being (literal, next rule or None).

    `answer` enters at every start that can still reach an end, spelling at least the text up to the next word
    edge (so the answer is never empty); `pK` continues from word edge K to the next one, or stops there when K
    is an end. Only edges at or before the last end get a rule, so no prefix leads where no end is left."""
    starts, ends = word_edges(text)
    last = ends[-1] if ends else -1
    end_set = set(ends)
    points = sorted({k for k in (*starts, *ends) if k <= last})
    after = dict(zip(points, points[1:]))
    live = [k for k in starts if k < last]
    if not live:
        return []
    rules = [("answer", [(text[k : after[k]], f"p{after[k]}") for k in live])]
    for k in points:
        alts: list[tuple[str, str | None]] = [("", None)] if k in end_set else []
        if k < last:
            alts.append((text[k : after[k]], f"p{after[k]}"))
        if k in after.values():  # reached from an earlier edge
            rules.append((f"p{k}", alts))
    return rules


def _render(text: str, define: str, root: str) -> str:
    rules = _rules(text)
    if not rules:  # no letter or digit: nothing can be answered (the model stops at once)
        return f'{root}{define}""\n'
    lines = [f'{root}{define}" "? answer']
    for name, alts in rules:
        body = " | ".join(f"{_lit(lit)} {nxt}" if nxt else _lit(lit) for lit, nxt in alts)
        lines.append(f"{name}{define}{body}")
    return "\n".join(lines) + "\n"


def substring_gbnf(text: str) -> str:
    """The GBNF grammar (llama.cpp server, vLLM structured outputs) accepting exactly `" "? a` for every answer
    a in `substring_answers(text)`. One rule per word edge: linear in the text."""
    return _render(text, " ::= ", "root")


def substring_answers(text: str) -> set[str]:
    """The language of `substring_gbnf(text)` without the leading space, listed (for tests and measurement)."""
    starts, ends = word_edges(text)
    return {text[a:b] for a in starts for b in ends if a < b}
