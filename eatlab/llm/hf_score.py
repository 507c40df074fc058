"""`alignment.select=rank` for the hf backend: no decoding; every candidate span of the sentence
(`eatlab.llm.constraint.span_candidates`) plus the chat template's end-of-turn tokens is scored as a continuation
of the prompt, and the best mean log-probability wins.

The prompt's key/values are computed once (from the prefix store where it has them, `hf_decode.prefill`), then
the candidates go in right-padded batches over copies of those key/values (`score_continuations`, tested equal
to a plain full forward).
"""

from __future__ import annotations

import time

from eatlab.llm.base import GenerationSettings, Reply
from eatlab.llm.hf_decode import DecodeStats, forward, prefill
from eatlab.llm.hf_load import LoadedModel
from eatlab.llm.prefix_cache import PrefixKVStore, kv_cache, kv_layers

# the logits of one batch of candidates (rows x tokens x vocabulary) stay within this
RANK_LOGITS_MB = 256


def end_of_turn(lm: LoadedModel) -> list[int]:
    """The tokens the chat template writes after an assistant answer, up to its first end-of-sequence token
    (Qwen: `<|im_end|>`): what a generated answer ends with, so a ranked one is scored with it."""
    tok = lm.tokenizer
    mark = "EATLAB-ANSWER-MARK"
    conv = [{"role": "user", "content": "x"}, {"role": "assistant", "content": mark}]
    text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=False)
    tail = text[text.rindex(mark) + len(mark) :] if mark in text else ""
    ids = list(tok(tail, add_special_tokens=False)["input_ids"])
    stop = next((k for k, t in enumerate(ids) if t in lm.eos), None)
    # a template that writes no end-of-sequence token after an answer: the one generation stops at
    first = tok.eos_token_id if tok.eos_token_id in lm.eos else min(lm.eos)
    return ids[: stop + 1] if stop is not None else [first]


def shared_rows(continuations: list[list[int]]) -> tuple[list[list[int]], list[int | None]]:
    """The token rows to feed so that every continuation is scored: each continuation's tokens but its last are
    a prefix of one row (`row_of[i]`; None: a one-token continuation, nothing to feed). Rows are the fed token
    lists that are not a prefix of another: in lexicographic order, a list that is a prefix of others is followed
    by one of them, which serves it."""
    fed = sorted({tuple(c[:-1]) for c in continuations if len(c) > 1})
    row_index: dict[tuple, int] = {}
    rows: list[list[int]] = []
    for t in range(len(fed) - 1, -1, -1):  # the longer extension first
        seq = fed[t]
        after = fed[t + 1] if t + 1 < len(fed) else None
        if after is not None and after[: len(seq)] == seq:
            row_index[seq] = row_index[after]
        else:
            row_index[seq] = len(rows)
            rows.append(list(seq))
    return rows, [row_index[tuple(c[:-1])] if len(c) > 1 else None for c in continuations]


def score_continuations(
    lm: LoadedModel,
    store: PrefixKVStore | None,
    prompt: list[int],
    continuations: list[list[int]],
    token_budget: int,
    top_first: int | None = None,
) -> tuple[list[float], DecodeStats]:
    """Mean log-probability of each continuation's tokens (each non-empty) after `prompt`, in order, and the
    time spent (prefill; `decode_s`: scoring).

    `top_first`: only continuations whose first token is among the `top_first` likeliest of their first tokens
    are scored in full (the others get -inf): the first token's probability is known from the prompt alone, and
    on a real model a span that starts unlikely rarely wins, while scoring every candidate of a long zh/ja
    sentence costs a forward over thousands of tokens.

    A continuation's tokens but its last are fed; one fed row serves every continuation whose fed tokens are a
    prefix of it (`shared_rows`: the candidate spans that start at the same word share their tokens), and its
    last token is read off the row's logits there. The rows, sorted by length, go in right-padded batches as
    continuations of copies of the prompt's key/values, one forward per batch. A batch holds at most
    token_budget tokens of context (rows x (prompt + longest row)) and RANK_LOGITS_MB of logits.
    """
    import torch

    device = lm.device
    n = len(prompt)
    stats = DecodeStats()
    t0 = time.perf_counter()
    with torch.inference_mode():
        pre = prefill(lm, [prompt], store)
        # the prompt's row (a batch-invariant prefill runs a lone prompt beside a copy of itself)
        kv = [(kk[:1], vv[:1]) for kk, vv in kv_layers(pre.cache)]
        t1 = time.perf_counter()
        stats.prefill_s, stats.computed, stats.padding = t1 - t0, pre.computed, pre.padding
        first = torch.log_softmax(pre.logits[0], dim=-1)
        vocab = first.shape[-1]
        heads = torch.tensor([seq[0] for seq in continuations], dtype=torch.long, device=first.device)
        out = first[heads].cpu().tolist()  # the first tokens: from the prompt's last logits
        keep = list(range(len(continuations)))
        if top_first is not None:
            lp = {seq[0]: out[i] for i, seq in enumerate(continuations)}
            chosen = set(sorted(lp, key=lambda t: (-lp[t], t))[: int(top_first)])
            keep = [i for i, seq in enumerate(continuations) if seq[0] in chosen]
            for i, seq in enumerate(continuations):
                if seq[0] not in chosen:
                    out[i] = float("-inf")
        rows, kept_row_of = shared_rows([continuations[i] for i in keep])
        served: dict[int, list[int]] = {}
        for i, r in zip(keep, kept_row_of, strict=True):
            if r is not None:
                served.setdefault(r, []).append(i)
        order = sorted(served, key=lambda r: (len(rows[r]), r))
        k = 0
        while k < len(order):
            size, width = 1, len(rows[order[k]])  # rows of a batch; width grows along `order`
            while k + size < len(order):
                w = len(rows[order[k + size]])
                fits = (size + 1) * (n + w) <= token_budget
                if not fits or (size + 1) * w * vocab * 4 > RANK_LOGITS_MB << 20:
                    break
                size, width = size + 1, w
            chunk = order[k : k + size]
            k += size
            ids = torch.full((size, width), lm.pad, dtype=torch.long)
            fed = torch.zeros((size, width), dtype=torch.long)
            for b, r in enumerate(chunk):
                ids[b, : len(rows[r])] = torch.tensor(rows[r], dtype=torch.long)
                fed[b, : len(rows[r])] = 1
            ids, fed = ids.to(device), fed.to(device)
            cache = kv_cache([(kk.expand(size, -1, -1, -1), vv.expand(size, -1, -1, -1)) for kk, vv in kv])
            mask = torch.cat([torch.ones_like(ids[:, :1]).expand(size, n), fed], 1)
            pos = torch.arange(n, n + width, device=device)[None].expand(size, -1)
            logits = forward(lm, cache, ids, mask, pos)  # never a lone row when batch-invariant
            lse = torch.logsumexp(logits.float(), dim=-1)  # [batch, width]
            # cum[b, j]: log-probability of the row's tokens 1..j, each given those before it
            nxt = logits[:, :-1].gather(-1, ids[:, 1:, None])[..., 0].float() - lse[:, :-1]
            cum = torch.cat([torch.zeros_like(lse[:, :1]), nxt.cumsum(-1)], 1)
            b_idx, pos, last = [], [], []
            for b, r in enumerate(chunk):
                for i in served[r]:
                    b_idx.append(b)
                    pos.append(len(continuations[i]) - 2)  # where the continuation's last token is predicted
                    last.append(continuations[i][-1])
            b_t = torch.tensor(b_idx, device=device)
            p_t = torch.tensor(pos, device=device)
            tail = logits[b_t, p_t, torch.tensor(last, device=device)].float() - lse[b_t, p_t] + cum[b_t, p_t]
            for i, x in zip((i for r in chunk for i in served[r]), tail.cpu().tolist(), strict=True):
                out[i] += x
        stats.decode_s = time.perf_counter() - t1
    return [total / len(seq) for total, seq in zip(out, continuations, strict=True)], stats


def rank(
    lm: LoadedModel,
    store: PrefixKVStore | None,
    prompts: list[list[int]],
    settings: GenerationSettings,
    texts: list[str],
    token_budget: int,
    eot: list[int],
) -> tuple[list[Reply], list[DecodeStats]]:
    """Per prompt, the candidate span of its text (`texts`) whose tokens plus end-of-turn (`eot`) the model finds
    most likely (mean log-probability; ties: the earliest, then shortest)."""
    from eatlab.llm.constraint import span_candidates

    candidates: dict[str, tuple[list[str], list[list[int]]]] = {}
    replies, spent = [], []
    for prompt, text in zip(prompts, texts, strict=True):
        if text not in candidates:  # the sentence's spans and their tokens, once per sentence
            spans = span_candidates(text, settings.max_span_words, settings.max_span_chars)
            seqs = [list(lm.tokenizer(c, add_special_tokens=False)["input_ids"]) + eot for c in spans]
            candidates[text] = (spans, seqs)
        spans, seqs = candidates[text]
        scores: list[float] = []
        if seqs:
            scores, stats = score_continuations(
                lm, store, prompt, seqs, token_budget, settings.rank_top_first
            )
            spent.append(stats)
        best = 0
        for i, sc in enumerate(scores):  # strict: the first of equal scores (span_candidates' order) wins
            if sc > scores[best]:
                best = i
        meta = {"selected_by": "rank", "candidates": len(spans), "scored_tokens": sum(map(len, seqs))}
        if scores:
            meta["logprob"] = scores[best]
        replies.append(
            Reply(
                text=spans[best] if spans else "",  # a sentence without letters or digits: empty (counted)
                prompt_tokens=len(prompt),  # the whole prompt, as generate counts it (computed: prefill)
                # the chosen answer's tokens with its end-of-turn, as if generated (generate counts its stop
                # token too); all candidates' tokens, the actual work, are meta["scored_tokens"]
                completion_tokens=len(seqs[best]) if seqs else 0,
                entropies=None,  # nothing was decoded: no per-step distribution to measure
                finish_reason="stop",
                meta=meta,
            )
        )
    return replies, spent
