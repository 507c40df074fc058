"""The hf backend's one decode path, with and without prefix reuse: a batched prefill, then a step loop of
transformers' logits processors in which finished rows leave the batch.

Why it is built this way:
- Prefill: each prompt starts from the key/value states of its longest stored prefix (`PrefixKVStore`; no store:
  from nothing, which is plain left-padded batching). Prefixes several prompts share beyond what is stored (every
  conversation's system turn and preamble in round 1) are computed first, once, as a batch of their own; then all
  rows run together over their remaining tokens. A row's states are [its stored prefix, left-padded to the
  longest] [its new tokens, left-padded to the longest]: the attention mask hides both paddings and the position
  ids are the row's own, so a padded row sees what it sees alone (fp32 tiny model: replies identical, tested).
- Decoding knobs are transformers' logits processors (repetition penalty, temperature, top-k, top-p) plus the
  substring constraint (`eatlab.llm.constraint.SubstringProcessor`), built from GenerationSettings alone: nothing
  is taken from the model's `generation_config.json` (Qwen2.5 ships sampling defaults there), so a greedy
  setting is greedy.
- Sampling with a seed draws each row from its own torch.Generator seeded from (seed, conversation), so a sampled
  reply depends on its conversation and seed only, not on which other conversations share its batch: that is
  what makes seeded sampled answers cacheable. The processors see each row's tokens left-padded with the row's own
  first token, so the repetition penalty also sees only the row's tokens.
- Entropy: at every generated step the exact entropy (nats) of the model's raw next-token distribution (softmax
  of the logits, before repetition penalty, constraint, temperature, top-k or top-p).
- A row that ends (an end-of-sequence token) leaves the batch at once: its key/values go to the prefix store
  and the next step runs the rows still decoding, instead of carrying finished rows to the longest answer's end.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from eatlab.errors import ConfigError
from eatlab.llm.base import Conversation, GenerationSettings, Reply
from eatlab.llm.hf_load import LoadedModel
from eatlab.llm.prefix_cache import PrefixKVStore, common_prefix, kv_cache, kv_layers
from eatlab.utils.io import canonical_json


def row_seed(seed: int, conversation: Conversation) -> int:
    """A row's sampling seed: from the call's seed and the conversation as the cache key sees it."""
    msgs = [{"role": m["role"], "content": m["content"]} for m in conversation]
    digest = hashlib.sha256(canonical_json([seed, msgs]).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def logits_processors(
    settings: GenerationSettings, lm: LoadedModel, texts: list[str | None], prompt_width: int
):
    """transformers' processors for `settings`, the constraint (rows with a text) before any sampling warper, so
    that the warpers see only allowed tokens."""
    from transformers import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    procs = LogitsProcessorList()
    if settings.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(settings.repetition_penalty))
    if any(t is not None for t in texts):
        from eatlab.llm.constraint import SubstringProcessor

        procs.append(SubstringProcessor(lm.tokenizer, texts, lm.eos, prompt_width))
    if settings.do_sample:
        if settings.temperature <= 0:
            raise ConfigError("generation.temperature: must be > 0 when sampling")
        if settings.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_k and settings.top_k > 0:
            procs.append(TopKLogitsWarper(settings.top_k))
        if settings.top_p < 1.0:
            procs.append(TopPLogitsWarper(settings.top_p))
    return procs


def row_generators(settings: GenerationSettings, conversations: list[Conversation], device) -> list | None:
    """One torch.Generator per row when sampling (seeded from the row's conversation), else None (greedy)."""
    if not settings.do_sample:
        return None
    import torch

    gens = []
    for conv in conversations:
        g = torch.Generator(device=device)
        if settings.seed is None:
            g.seed()
        else:
            g.manual_seed(row_seed(settings.seed, conv))
        gens.append(g)
    return gens


@dataclass
class Prefilled:
    """A batch after its prompts: the cache and its attention mask ([rows, columns]), the next-token logits
    (float), and the prompt tokens run through the model: the prompts' own and the padding."""

    cache: object
    mask: object
    logits: object
    computed: int
    padding: int


def shared_prefixes(prompts: list[list[int]], store: PrefixKVStore) -> list[list[int]]:
    """The prefixes that two or more prompts share beyond what the store already holds of them (each prompt's
    longest one; it is shared with a neighbour in lexicographic order), at most each prompt but its last token."""
    order = sorted(range(len(prompts)), key=lambda i: prompts[i])
    longest = [0] * len(prompts)
    for a, b in zip(order, order[1:]):
        n = common_prefix(prompts[a], prompts[b])
        longest[a], longest[b] = max(longest[a], n), max(longest[b], n)
    out = set()
    for p, n in zip(prompts, longest, strict=True):
        n = min(n, len(p) - 1)
        if n > store.match_length(p):
            out.add(tuple(p[:n]))
    return [list(s) for s in sorted(out)]


def row_states(cache, mask, row: int) -> list[tuple]:
    """One row's per-layer key/values without its padding ([1, heads, its tokens, dim])."""
    cols = mask[row].nonzero()[:, 0].to(kv_layers(cache)[0][0].device)
    return [
        (k[row : row + 1].index_select(2, cols), v[row : row + 1].index_select(2, cols))
        for k, v in kv_layers(cache)
    ]


def prefill(
    lm: LoadedModel, prompts: list[list[int]], store: PrefixKVStore | None, keep: bool = True
) -> Prefilled:
    """Run `prompts` (from their stored prefixes, with a store) in one batch; `keep`: store each prompt's states.
    Call in inference mode."""
    import torch

    computed = padding = 0
    if store is not None and len(prompts) > 1:
        shared = shared_prefixes(prompts, store)
        if shared:  # computed once, kept: the rows below start from them
            first = prefill(lm, shared, store)
            computed, padding = first.computed, first.padding
    found = [store.lookup(p) if store is not None else (0, None) for p in prompts]
    rows = len(prompts)
    past_w = max(n for n, _ in found)
    new_w = max(len(p) - n for p, (n, _) in zip(prompts, found, strict=True))
    ids = torch.full((rows, new_w), lm.pad, dtype=torch.long)
    mask = torch.zeros((rows, past_w + new_w), dtype=torch.long)
    pos = torch.ones((rows, new_w), dtype=torch.long)  # padding: 1, as transformers' generate sets it
    for r, (p, (n, _)) in enumerate(zip(prompts, found, strict=True)):
        m = len(p) - n
        ids[r, new_w - m :] = torch.tensor(p[n:], dtype=torch.long)
        pos[r, new_w - m :] = torch.arange(n, len(p))
        mask[r, past_w - n : past_w] = 1
        mask[r, past_w + new_w - m :] = 1
        if store is not None:
            store.hits_tokens += n
    device = lm.device
    cache = kv_cache(_left_padded([kv for _, kv in found], past_w) if past_w else None)
    mask = mask.to(device)
    logits = forward(
        lm, cache, ids.to(device), mask, pos.to(device), **({lm.keep_kw: 1} if lm.keep_kw else {})
    )
    if store is not None and keep:
        for r, p in enumerate(prompts):
            store.store(p, row_states(cache, mask, r))
    own = sum(len(p) - n for p, (n, _) in zip(prompts, found, strict=True))
    return Prefilled(cache, mask, logits[:, -1].float(), computed + own, padding + rows * new_w - own)


def forward(lm: LoadedModel, cache, ids, mask, pos, **kwargs):
    """The logits of one forward over `ids` [rows, new] from `cache`. With `lm.min_rows` 2 (batch-invariant
    decoding, eatlab.llm.hf_attention) a lone row runs beside a copy of itself, in the cache too, since a
    forward of one row takes another matmul path than a forward of several."""
    rows = ids.shape[0]
    if rows >= lm.min_rows:
        out = lm.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            use_cache=True,
            **{lm.cache_kw: cache},
            **kwargs,
        )
        return out.logits
    layers = kv_layers(cache)
    if layers and layers[0][0] is not None and layers[0][0].shape[0] == rows:
        cache.batch_repeat_interleave(lm.min_rows)
    n = lm.min_rows
    out = lm.model(
        input_ids=ids.repeat(n, 1),
        attention_mask=mask.repeat(n, 1),
        position_ids=pos.repeat(n, 1),
        use_cache=True,
        **{lm.cache_kw: cache},
        **kwargs,
    )
    return out.logits[:rows]


@dataclass
class DecodeStats:
    """Where one batch's time and tokens went (the backend adds them up for eatlab-bench)."""

    prefill_s: float = 0.0
    decode_s: float = 0.0
    constrain_s: float = 0.0  # of decode_s: the substring constraint's masks
    steps: int = 0  # decode steps (one forward each, after the prefill)
    row_steps: int = 0  # rows run by those forwards: finished rows leave, so at most rows x steps
    computed: int = 0  # prompt tokens run through the model (the rest came from the prefix store)
    padding: int = 0  # padding run through the model with them


def decode(
    lm: LoadedModel,
    prompts: list[list[int]],
    conversations: list[Conversation],
    settings: GenerationSettings,
    texts: list[str | None],
    store: PrefixKVStore | None,
    compute_entropy: bool = True,
) -> tuple[list[Reply], DecodeStats]:
    """Replies to one batch of prompts (token ids of `conversations`); with a store, each prompt starts from its
    stored prefix and prompt + answer are stored for the next round."""
    import torch

    from eatlab.llm.entropy import entropy_from_logits

    stats = DecodeStats()
    t0 = time.perf_counter()
    with torch.inference_mode():
        pre = prefill(lm, prompts, store, keep=False)
        t1 = time.perf_counter()
        stats.prefill_s, stats.computed, stats.padding = t1 - t0, pre.computed, pre.padding
        cache, mask, scores = pre.cache, pre.mask, pre.logits
        device = scores.device
        width = max(len(p) for p in prompts)
        ids = torch.stack(
            [torch.tensor([p[0]] * (width - len(p)) + p, dtype=torch.long) for p in prompts]
        ).to(device)
        positions = torch.tensor([len(p) for p in prompts], device=device)
        procs = logits_processors(settings, lm, texts, width)
        gens = row_generators(settings, conversations, device)
        eos = set(lm.eos)
        rows = list(range(len(prompts)))  # the original index of each row still decoding
        gen: list[list[int]] = [[] for _ in prompts]
        ent: list[list[float]] = [[] for _ in prompts]
        work: list = []  # entropy scratch buffers
        for step in range(settings.max_new_tokens):
            if compute_entropy:
                for r, h in zip(rows, entropy_from_logits(scores, work).tolist(), strict=True):
                    ent[r].append(h)
            scores = procs(ids, scores)
            if gens is None:
                tok = scores.argmax(-1)
            else:
                probs = torch.softmax(scores.float(), dim=-1)
                tok = torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(gens)])
            going = []
            for i, (r, t) in enumerate(zip(rows, tok.tolist(), strict=True)):
                gen[r].append(t)
                if t not in eos:
                    going.append(i)
            if not going or step == settings.max_new_tokens - 1:
                break
            ids = torch.cat([ids, tok[:, None]], dim=1)
            if len(going) < len(rows):  # finished rows leave the batch
                if store is not None:
                    for i in sorted(set(range(len(rows))) - set(going)):
                        _keep(store, prompts[rows[i]], gen[rows[i]], cache, mask, i)
                sel = torch.tensor(going, device=device)
                cache.batch_select_indices(sel)
                ids, mask, positions, tok = ids[sel], mask[sel], positions[sel], tok[sel]
                for p in procs:
                    if hasattr(p, "select_rows"):
                        p.select_rows(going)
                gens = [gens[i] for i in going] if gens is not None else None
                rows = [rows[i] for i in going]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            logits = forward(lm, cache, tok[:, None], mask, positions[:, None])
            stats.steps += 1
            stats.row_steps += len(rows)
            positions = positions + 1
            scores = logits[:, -1].float()
        if store is not None:
            for i, r in enumerate(rows):
                _keep(store, prompts[r], gen[r], cache, mask, i)
        stats.decode_s = time.perf_counter() - t1
        stats.constrain_s = sum(getattr(p, "seconds", 0.0) for p in procs)
    return [
        _reply(lm, p, toks, e if compute_entropy else None) for p, toks, e in zip(prompts, gen, ent)
    ], stats


def _keep(store: PrefixKVStore, prompt: list[int], gen: list[int], cache, mask, row: int) -> None:
    """Store a row's prompt and the answer tokens already fed back (all but the last chosen one)."""
    kv = row_states(cache, mask, row)
    store.store(prompt + gen[: kv[0][0].shape[2] - len(prompt)], kv)


def _reply(lm: LoadedModel, prompt: list[int], toks: list[int], entropies: list[float] | None) -> Reply:
    """A reply from generated token ids: cut after the first end-of-sequence token."""
    stop = next((k for k, t in enumerate(toks) if t in lm.eos), None)
    n = stop + 1 if stop is not None else len(toks)
    return Reply(
        text=lm.tokenizer.decode(toks[: stop if stop is not None else n], skip_special_tokens=True),
        prompt_tokens=len(prompt),
        completion_tokens=n,
        entropies=[float(x) for x in entropies[:n]] if entropies is not None else None,
        entropy_approx=False,
        finish_reason="stop" if stop is not None else "length",
    )


def _left_padded(rows: list[list[tuple] | None], width: int) -> list[tuple]:
    """Stack rows of per-layer tensors [1, heads, n, dim] (None: no tokens) into [rows, heads, width, dim],
    left-padded with zeros (the attention mask hides the padding)."""
    import torch

    like = next(kv for kv in rows if kv is not None)
    out = []
    for layer, (k0, v0) in enumerate(like):
        ks, vs = [], []
        for kv in rows:
            k, v = kv[layer] if kv is not None else (k0[:, :, :0], v0[:, :, :0])
            pad = width - k.shape[2]
            ks.append(torch.nn.functional.pad(k, (0, 0, pad, 0)))
            vs.append(torch.nn.functional.pad(v, (0, 0, pad, 0)))
        out.append((torch.cat(ks), torch.cat(vs)))
    return out
