"""The losing engine, kept to reproduce the measurement: llguidance driving the hf backend's constraint.

`substring_lark` is `eatlab.llm.grammar`'s rules in llguidance's Lark syntax; `GrammarMasks` is a transformers
logits processor over llguidance's token masks, with the interface of `SubstringProcessor`. Needs
`pip install -c constraints.txt llguidance` (not a dependency of eatlab).
"""

from __future__ import annotations

import time

from eatlab.llm.grammar import _render


def substring_lark(text: str) -> str:
    """The same rules in llguidance's Lark syntax (what the hf backend compiles): llguidance reads the GBNF too,
    but its converter is Python and took 230 ms on 300 Han characters; the rules are the same, line for line."""
    # no_forcing: every token that continues the answer, not only the longest one where the text is forced
    # (llguidance's default; it pushed the real tokenizer off its own tokenization, e.g. Hindi "रा|मन्ना")
    return '%llguidance {"no_forcing": true}\n' + _render(text, ": ", "start")


_TOKENIZERS: dict[int, object] = {}


def llg_tokenizer(tokenizer, eos_ids: list[int]):
    """llguidance's view of a fast HF tokenizer (about a second to build), once per tokenizer and stop set."""
    key = (id(tokenizer), tuple(eos_ids))
    if key not in _TOKENIZERS:
        import llguidance.hf

        _TOKENIZERS[key] = llguidance.hf.from_tokenizer(tokenizer, eos_token=list(eos_ids))
    return _TOKENIZERS[key]


_MATCHERS: dict[tuple[int, str], object] = {}


def matcher(ll_tokenizer, text: str):
    """A fresh llguidance matcher for `substring_lark(text)`, compiled once per sentence and copied after (an
    entity's sentence comes back once per entity); a grammar llguidance rejects raises ValueError."""
    key = (id(ll_tokenizer), text)
    if key not in _MATCHERS:
        import llguidance

        m = llguidance.LLMatcher(
            ll_tokenizer, llguidance.LLMatcher.grammar_from_lark(substring_lark(text)), log_level=0
        )
        if m.is_error():
            raise ValueError(f"llguidance rejected the substring grammar: {m.get_error()}")
        if len(_MATCHERS) >= 4096:
            _MATCHERS.pop(next(iter(_MATCHERS)))
        _MATCHERS[key] = m
    return _MATCHERS[key].deep_copy()


class GrammarMasks:
    """transformers logits processor: row r may only continue `substring_gbnf(texts[r])` (None: free).

    One llguidance matcher per row; each step it consumes the row's last token and writes the row's allowed
    tokens as a bitmask, which is unpacked onto the scores. `select_rows` follows a batch whose finished rows
    left it; `seconds` is the time spent masking (eatlab-bench's "constrain")."""

    def __init__(self, tokenizer, texts: list[str | None], eos_ids: list[int], prompt_width: int):
        import numpy as np

        self.tok = llg_tokenizer(tokenizer, eos_ids)
        self.matchers = [matcher(self.tok, t) if t else None for t in texts]
        self.eos = list(eos_ids)
        self.width = prompt_width
        self.seen = 0
        self.seconds = 0.0
        self._words = (self.tok.vocab_size + 31) // 32
        self._bits = np.zeros((len(texts), self._words), dtype=np.int32)

    def select_rows(self, rows: list[int]) -> None:
        """Keep only these rows (in this order): the others left the batch."""
        self.matchers = [self.matchers[r] for r in rows]
        self._bits = self._bits[rows].copy()

    def __call__(self, input_ids, scores):
        t0 = time.perf_counter()
        scores = self._mask(input_ids, scores)
        self.seconds += time.perf_counter() - t0
        return scores

    def _mask(self, input_ids, scores):
        import numpy as np
        import torch

        gen = input_ids.shape[1] - self.width
        if gen > self.seen:  # the token chosen at the previous step
            last = input_ids[:, -1].tolist()
            for r, m in enumerate(self.matchers):
                if m is not None and not m.is_stopped():
                    m.consume_token(last[r])
            self.seen = gen
        rows = [r for r, m in enumerate(self.matchers) if m is not None]
        if not rows:
            return scores
        bits = self._bits
        for r in rows:
            m = self.matchers[r]
            if m.is_stopped() or m.is_error():  # finished (or off the grammar): only a stop token
                bits[r] = 0
                for e in self.eos:
                    bits[r].view(np.uint8)[e // 8] |= 1 << (e % 8)
            else:
                m.unsafe_compute_mask_ptr(bits[r].ctypes.data, self._words * 4)
        # the allowed (row, token) pairs: nonzero bytes of the bitmask first (a few per row), then their bits
        raw = bits[rows].view(np.uint8)
        r, byte = np.nonzero(raw)
        k, bit = np.nonzero(np.unpackbits(raw[r, byte][:, None], axis=1, bitorder="little"))
        tokens = byte[k].astype(np.int64) * 8 + bit
        inside = tokens < scores.shape[1]  # the tokenizer may count more ids than the model has logits
        rr = torch.as_tensor(np.asarray(rows)[r[k][inside]], device=scores.device)
        cc = torch.as_tensor(tokens[inside], device=scores.device)
        vals = scores[rr, cc]
        scores.index_fill_(0, torch.as_tensor(rows, device=scores.device), float("-inf"))
        scores[rr, cc] = vals
        return scores
