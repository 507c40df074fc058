"""Key/value states of token sequences already computed, so that a prompt's known prefix is never recomputed.

EAT sends many short multi-round conversations: every conversation of a language shares its system turn and
scripted preamble, and round k+1 repeats round k's prompt and answer. The hf backend stores, per sequence of
token ids, each layer's key/value tensors ([1, heads, tokens, dim]); a new prompt starts from the stored
sequence sharing its longest prefix and computes only the rest. Memory stays bounded: an entry is dropped when a
longer sequence that starts with it is stored (the conversation moved on a round), and the least recently used
entries go when the store exceeds `max_bytes`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixKVStore:
    """token ids -> per-layer (key, value) tensors of exactly those tokens (batch dimension 1)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[tuple[int, ...], list[tuple]] = OrderedDict()
        self._bytes: dict[tuple[int, ...], int] = {}
        self.hits_tokens = 0  # prompt tokens served from the store
        self.computed_tokens = 0  # prompt tokens computed

    @property
    def nbytes(self) -> int:
        return sum(self._bytes.values())

    def __len__(self) -> int:
        return len(self._entries)

    def sequences(self) -> list[tuple[int, ...]]:
        """The stored token sequences, least recently used first."""
        return list(self._entries)

    def match_length(self, ids: Sequence[int]) -> int:
        """How many tokens of `ids` `lookup` would serve (at most len(ids) - 1), touching nothing."""
        best = max((common_prefix(key, ids) for key in self._entries), default=0)
        return max(0, min(best, len(ids) - 1))

    def lookup(self, ids: Sequence[int]) -> tuple[int, list[tuple] | None]:
        """(n, kv): the longest stored prefix of `ids` (n tokens, at most len(ids) - 1 so that the last token is
        computed and gives the next-token logits) and its per-layer tensors cut to n tokens."""
        best, best_key = 0, None
        for key in self._entries:
            n = common_prefix(key, ids)
            if n > best:
                best, best_key = n, key
        best = min(best, len(ids) - 1)
        if best_key is None or best <= 0:
            return 0, None
        self._entries.move_to_end(best_key)
        kv = [(k[:, :, :best], v[:, :, :best]) for k, v in self._entries[best_key]]
        return best, kv

    def store(self, ids: Sequence[int], kv: list[tuple]) -> None:
        """Keep `kv` for `ids`, dropping entries it supersedes (its prefixes) and the oldest beyond max_bytes."""
        key = tuple(ids)
        if self.max_bytes <= 0 or not key:
            return
        for old in [k for k in self._entries if len(k) <= len(key) and key[: len(k)] == k]:
            self._drop(old)
        size = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
        if size > self.max_bytes:
            return
        self._entries[key] = kv
        self._bytes[key] = size
        while self.nbytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key) -> None:
        self._entries.pop(key, None)
        self._bytes.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes.clear()


def kv_layers(cache) -> list[tuple]:
    """Per-layer (key, value) tensors of a transformers cache object (4.x and 5.x layouts)."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))


def kv_cache(layers: list[tuple] | None):
    """A DynamicCache holding the given per-layer tensors (empty for None)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for i, (k, v) in enumerate(layers or []):
        cache.update(k, v, i)
    return cache
