"""Constrained decoding: the answer must be a verbatim substring of a given text (the backward alignment's
source sentence), then stop.

A logits processor over the tokenizer's byte pieces. Per row it keeps the byte positions of the text where the
answer so far can end; a token is allowed when its bytes continue the answer from one of them, so the answer
is always a substring of the text, including inside multi-byte characters. Where the answer may stop matters
as much as the constraint: it starts only at a letter or digit at a word start (its first token may carry one
leading space, or be that space alone, which is not part of the answer), and the end-of-sequence token is
allowed only once it holds a letter or digit, is whole UTF-8, and ends at a word end (any character boundary
in scripts written without spaces), so answers neither stop after one letter nor run on into punctuation.
The servers get the same language as a GBNF grammar (`eatlab.llm.grammar.substring_gbnf`).

`span_candidates` lists the answers the same rules allow, for `alignment.select=rank` (the hf backend scores each
by the model's log-probability instead of generating): the sentence's word n-grams, punctuation trimmed at their
edges.
"""

from __future__ import annotations

import copy
import time
import unicodedata
from functools import lru_cache

_SPACELESS = ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN")


@lru_cache(maxsize=4096)
def _spaceless(ch: str) -> bool:
    name = unicodedata.name(ch, "")
    return any(name.startswith(s) for s in _SPACELESS)


def _wordish(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "LMN"


def _units(text: str) -> list[tuple[int, int, bool]]:
    """The sentence's "words" as (start, end, spaceless) character ranges: runs of characters between white
    space, except that each character of a script written without spaces is a unit of its own; a combining mark
    stays with the character before it (a Thai vowel sign, an accent)."""
    units: list[tuple[int, int, bool]] = []
    run = None  # start of the open run of spaced-script characters
    for k, ch in enumerate(text):
        if ch.isspace():
            if run is not None:
                units.append((run, k, False))
                run = None
            continue
        if run is None and unicodedata.category(ch)[0] == "M" and units and units[-1][1] == k:
            units[-1] = (units[-1][0], k + 1, units[-1][2])
            continue
        if _spaceless(ch):
            if run is not None:
                units.append((run, k, False))
                run = None
            units.append((k, k + 1, True))
        elif run is None:
            run = k
    if run is not None:
        units.append((run, len(text), False))
    return units


def span_candidates(text: str, max_words: int = 10, max_chars: int = 16) -> list[str]:
    """Every answer `alignment.select=rank` chooses from: the spans of at most `max_words` consecutive words of
    `text` (a character of a script written without spaces counts as a word, up to `max_chars` of them per span;
    a piece without letters or digits, such as a lone comma, counts as neither),
    cut to start at a letter or digit and to end at a letter, mark or digit (so punctuation and quotes around a
    word are never part of it), deduplicated. Each is a verbatim substring of `text`. In order of (start, end)
    of its first occurrence: earliest, then shortest, first."""
    units = _units(text)
    first: dict[str, tuple[int, int]] = {}
    counts = [any(unicodedata.category(ch)[0] in "LN" for ch in text[s:e]) for s, e, _ in units]
    for i, (start, _, _) in enumerate(units):
        words = chars = 0
        for (_, end, spaceless), counted in zip(units[i:], counts[i:], strict=True):
            if not counted:  # punctuation between words: part of a span, never counted as a word
                pass
            elif spaceless:
                chars += 1
            else:
                words += 1
            if words > max_words or chars > max_chars:
                break
            a, b = start, end
            while a < b and unicodedata.category(text[a])[0] not in "LN":
                a += 1
            while b > a and unicodedata.category(text[b - 1])[0] not in "LMN":
                b -= 1
            if a < b:
                span = text[a:b]
                if span not in first or (a, b) < first[span]:
                    first[span] = (a, b)
    return sorted(first, key=first.__getitem__)


def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte <-> printable character table, reversed (byte-level BPE tokenizers: Qwen, Llama 3)."""
    bs = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


_TABLES: dict[int, dict[bytes, list[int]]] = {}


def token_bytes_table(tokenizer) -> dict[bytes, list[int]]:
    """bytes -> token ids with exactly those bytes (special tokens left out), built once per tokenizer."""
    key = id(tokenizer)
    if key in _TABLES:
        return _TABLES[key]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special |= {i for i in getattr(tokenizer, "added_tokens_decoder", {}) or {}}
    dec = _byte_level_decoder()
    table: dict[bytes, list[int]] = {}
    vocab = tokenizer.get_vocab()
    byte_level = all(ch in dec for piece in list(vocab)[:2000] for ch in piece)
    for piece, i in vocab.items():
        if i in special:
            continue
        if byte_level:
            if not all(ch in dec for ch in piece):
                continue
            raw = bytes(dec[ch] for ch in piece)
        else:  # sentencepiece-style: '▁' is a space
            raw = piece.replace("\u2581", " ").encode("utf-8")
        if raw:
            table.setdefault(raw, []).append(i)
    _TABLES[key] = table
    return table


_INDEXES: dict[int, tuple[dict[int, bytes], int]] = {}


def _token_index(tokenizer, table: dict[bytes, list[int]]) -> tuple[dict[int, bytes], int]:
    """token id -> its bytes, and the longest piece worth trying (at most 48 bytes), built once per tokenizer."""
    key = id(tokenizer)
    if key not in _INDEXES:
        inverse = {i: b for b, ids in table.items() for i in ids}
        _INDEXES[key] = (inverse, min(48, max((len(b) for b in table), default=1)))  # longer: never needed
    return _INDEXES[key]


class SubstringState:
    """One row: the text's bytes, where the answer so far may end, and what the answer holds."""

    def __init__(self, text: str):
        self.text = text
        self.data = text.encode("utf-8")
        # character boundaries in bytes, and which of them start / end a word
        self.char_start: dict[int, int] = {}
        pos = 0
        for k, ch in enumerate(text):
            self.char_start[pos] = k
            pos += len(ch.encode("utf-8"))
        self.char_start[pos] = len(text)
        self.starts = {p for p, k in self.char_start.items() if k < len(text) and self._may_start(k)}
        # the last place an answer may end: no piece goes past it (beyond it lies no end, only a dead end)
        self.last_end = max((p for p in self.char_start if self._may_end(p)), default=0)
        self.ends: set[int] | None = None  # None: nothing generated yet
        self.spaced = False  # the one leading space (rule 3) was taken as a token of its own
        self.generated = b""

    def _may_start(self, k: int) -> bool:
        t = self.text
        if unicodedata.category(t[k])[0] not in "LN":
            return False
        return k == 0 or not _wordish(t[k - 1]) or _spaceless(t[k]) or _spaceless(t[k - 1])

    def _may_end(self, p: int) -> bool:
        k = self.char_start.get(p)
        if k is None or k == 0:
            return False
        t = self.text
        if unicodedata.category(t[k - 1])[0] not in "LMN":
            return False
        return k == len(t) or not _wordish(t[k]) or _spaceless(t[k]) or _spaceless(t[k - 1])

    def allowed(self, table: dict[bytes, list[int]], max_len: int) -> list[int]:
        """Token ids that keep the answer a substring of the text and able to end (no piece runs past the last
        word end into trailing punctuation). The first token may also carry one leading space (" أد"), or be
        that space alone: byte-level BPE merges a space into word-initial pieces, and a model that prefers the
        spaced piece would otherwise be pushed to a worse start (rule 3; the space is not part of the answer).
        `eatlab.llm.grammar.substring_gbnf` is the same language for servers (tested equal)."""
        out: list[int] = []
        data = self.data
        first = self.ends is None
        spaced = first and not self.spaced
        for e in sorted(self.starts if first else self.ends):
            for n in range(1, min(max_len, self.last_end - e) + 1):
                ids = table.get(data[e : e + n])
                if ids:
                    out.extend(ids)
                if spaced and n < max_len:
                    ids = table.get(b" " + data[e : e + n])
                    if ids:
                        out.extend(ids)
        if spaced and out:  # or the space alone, as tokenizers that split it off write it (" " "ბ...")
            out.extend(table.get(b" ", []))
        return out

    def may_stop(self) -> bool:
        if self.ends is None:
            return False
        try:
            answer = self.generated.decode("utf-8")
        except UnicodeDecodeError:
            return False
        if not any(unicodedata.category(c)[0] in "LN" for c in answer):
            return False
        return any(self._may_end(e) for e in self.ends)

    def advance(self, piece: bytes) -> None:
        # a first piece may carry a leading space (no start is a space, so it cannot be the text's own)
        if self.ends is None and piece[:1] == b" " and not self.spaced:
            piece = piece[1:]
            self.spaced = True
            if not piece:  # the space alone: the answer starts with the next piece
                return
        src = self.starts if self.ends is None else self.ends
        self.ends = {e + len(piece) for e in src if self.data[e : e + len(piece)] == piece}
        self.generated += piece


class SubstringProcessor:
    """transformers logits processor: row r may only continue `texts[r]` (None: free) and stop as above.

    `select_rows` follows a batch whose finished rows left it; `seconds` is the time spent masking (what the
    constraint costs per decoding step, reported by eatlab-bench)."""

    def __init__(self, tokenizer, texts: list[str | None], eos_ids: list[int], prompt_width: int):
        self.table = token_bytes_table(tokenizer)
        self.inverse, self.max_len = _token_index(tokenizer, self.table)
        self.states = [SubstringState(t) if t else None for t in texts]
        self.eos = list(eos_ids)
        self.width = prompt_width
        self.seen = 0
        self.seconds = 0.0

    def select_rows(self, rows: list[int]) -> None:
        """Keep only these rows (in this order): the others left the batch."""
        self.states = [self.states[r] for r in rows]

    def __call__(self, input_ids, scores):
        t0 = time.perf_counter()
        scores = self._mask(input_ids, scores)
        self.seconds += time.perf_counter() - t0
        return scores

    def _mask(self, input_ids, scores):
        import torch

        gen = input_ids.shape[1] - self.width
        if gen > self.seen:  # the token chosen at the previous step
            last = input_ids[:, -1].tolist()
            for st, tok in zip(self.states, last, strict=True):
                if st is not None:
                    st.advance(self.inverse.get(tok, b""))
            self.seen = gen
        rows: list[int] = []
        cols: list[int] = []
        for r, st in enumerate(self.states):
            if st is None:
                continue
            ids = st.allowed(self.table, self.max_len)
            if st.may_stop() or not ids:
                ids = ids + self.eos  # a dead end stops too (the answer so far is a substring)
            rows += [r] * len(ids)
            cols += ids
        if not rows:
            return scores
        # the batch at once: keep the allowed scores, fill the constrained rows with -inf, put them back
        dev = scores.device
        at = (torch.tensor(rows, device=dev), torch.tensor(cols, device=dev))
        keep = scores[at]
        constrained = [r for r, st in enumerate(self.states) if st is not None]
        if len(constrained) == len(self.states):
            scores.fill_(float("-inf"))
        else:
            scores.index_fill_(0, torch.tensor(constrained, device=dev), float("-inf"))
        scores[at] = keep
        return scores


def accepted_answers(text: str) -> set[str]:
    """Every reply the processor lets stop for `text` (the leading space of rule 4 kept), walked one byte-token
    at a time (any answer its pieces spell, bytes spell too); like its `_mask`, a row with nothing allowed may stop.
    The reference language the server grammar and other engines are compared with (tests, experiments)."""
    byte_table = {bytes([b]): [b] for b in range(256)}
    out: set[str] = set()

    def walk(state: SubstringState, raw: bytes) -> None:
        allowed = sorted(set(state.allowed(byte_table, 1)))
        if state.may_stop() or not allowed:
            out.add(raw.decode("utf-8"))
        for b in allowed:
            nxt = copy.copy(state)  # advance rebinds, never mutates, what it changes
            nxt.advance(bytes([b]))
            walk(nxt, raw + bytes([b]))

    walk(SubstringState(text), b"")
    return out
