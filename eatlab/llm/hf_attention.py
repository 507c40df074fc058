"""Batch-invariant attention for the hf backend (`backend.batch_invariant`): a row's reply must not depend on which
other conversations share its batch, also in bf16 on the CPU, where it otherwise does (the bench measured 41/48
batched and 33/48 batched with prefix reuse identical to one at a time).

What changes a row's bf16 logits, measured on Qwen2.5-Coder-0.5B (torch 2.13 CPU, AMX); docs/llm.md has the probe:
- not the number of rows: a row's logits are bitwise equal in a batch of 2, 3 or 16 copies of it, prefill and
  decode, but a forward of a single row takes another matmul path (its decode logits differ from the second step
  on). So no forward runs one row: a lone row runs beside a copy of itself (`hf_decode`).
- the attention's shape: left padding moves the row's tokens against the kernel's blocks, and the number of key
  columns (masked or not) changes its reduction. So each row's keys are moved to columns 0..n-1 and the key length
  is rounded up to KV_BUCKET (the CPU kernel's 512-column block), queries likewise to Q_BUCKET;
  rows with the same rounded shapes share one `scaled_dot_product_attention` call, always with an explicit mask.
  A row then meets the same shapes alone and in any batch (bench: 48/48 replies identical batched). A prefix
  computed in an earlier call is still not always bitwise the prefix a longer prompt computes in one call
  (46/48 with prefix reuse).

Registered with transformers' `AttentionInterface` (its extension point for attention functions) under NAME, with
the sdpa mask builder; the model is loaded with `attn_implementation=NAME`.
"""

from __future__ import annotations

NAME = "eatlab_batch_invariant"
KV_BUCKET = 512  # the CPU flash-attention kernel's key block: a row's keys always fill whole blocks
Q_BUCKET = 32  # its smallest query block


def _rounded(n, bucket: int):
    return ((n + bucket - 1) // bucket) * bucket


def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention signature: query [B, H, Tq, D], key/value [B, Hkv, Tk, D], the mask [B, 1, Tq, Tk]
    (bool, or additive float) or None (causal, no padding); returns [B, Tq, H, D] and no weights."""
    import torch

    rows, heads, tq, dim = query.shape
    korder, qorder, groups = _plan(attention_mask, rows, key.shape[2], tq, query.device)
    if korder is None:  # no padding: every row's keys already start at column 0
        k, v, q = key, value, query
    else:
        kidx = korder[:, None, :, None].expand(rows, key.shape[1], key.shape[2], dim)
        k, v, q = key.gather(2, kidx), value.gather(2, kidx), query.gather(2, _expand(qorder, heads, dim))
    outs = []
    for sel, qw, kw, mask in groups:
        qs, ks, vs = (q, k, v) if sel is None else (q[sel], k[sel], v[sel])
        res = torch.nn.functional.scaled_dot_product_attention(
            _fit(qs, qw),
            _fit(ks, kw),
            _fit(vs, kw),
            attn_mask=mask,
            scale=scaling,
            enable_gqa=ks.shape[1] != qs.shape[1],
        )
        outs.append((sel, _fit(res, tq)))
    if len(outs) == 1 and outs[0][0] is None:
        out = outs[0][1]
    else:
        out = torch.zeros_like(q)
        for sel, res in outs:
            out[sel] = res
    if qorder is not None:
        out = torch.zeros_like(query).scatter_(2, _expand(qorder, heads, dim), out)
    return out.transpose(1, 2).contiguous(), None


_last_plan: tuple = (None, None, None)  # (the mask it was made for, its shape key, the plan)


def _plan(attention_mask, rows: int, tk: int, tq: int, dev):
    """How one forward's rows are laid out, the same in every layer: so it is made once per forward (for the
    mask object the model passes to all its layers) and kept until the next mask arrives.

    Returns the key and query column orders (None where no row is padded) and the groups of rows that share
    rounded shapes: (rows, or None for all; query width; key width; the explicit boolean mask)."""
    import torch

    global _last_plan
    shape_key = (rows, tk, tq, str(dev))
    cached_mask, cached_key, plan = _last_plan
    if plan is not None and cached_mask is attention_mask and cached_key == shape_key:
        return plan
    if attention_mask is None:
        valid = torch.ones((rows, tk), dtype=torch.bool, device=dev)
    else:
        last = attention_mask[:, 0, -1, :]  # the last query sees every column of its row
        valid = last if last.dtype == torch.bool else last == 0
    n = valid.sum(1)  # the row's keys
    nq = valid[:, tk - tq :].sum(1)  # the row's real queries (the last ones of its keys)
    padded = bool((n < tk).any())
    # each row's valid columns first, in order (a stable sort of the padding flags)
    korder = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices if padded else None
    qorder = torch.sort((~valid[:, tk - tq :]).to(torch.int8), dim=1, stable=True).indices if padded else None
    kb = _rounded(n, KV_BUCKET)
    qb = torch.where(nq > 1, _rounded(nq, Q_BUCKET), nq)  # decoding (one query) stays one query
    shapes = torch.stack([qb, kb], 1)
    groups = []
    for qw, kw in torch.unique(shapes, dim=0).tolist():
        hit = (qb == qw) & (kb == kw)
        sel = None if bool(hit.all()) else hit.nonzero()[:, 0]
        ns, nqs = (n, nq) if sel is None else (n[sel], nq[sel])
        # query i of a row sits at key position n - nq + i; it sees the keys up to it, none of the padding;
        # a padding query sees its row's first key only (its output is dropped)
        i = torch.arange(qw, device=dev)[None, :, None]
        j = torch.arange(kw, device=dev)[None, None, :]
        pos = (ns - nqs)[:, None, None] + i
        mask = torch.where(i < nqs[:, None, None], j <= pos, j == 0)
        groups.append((sel, qw, kw, mask[:, None]))
    plan = (korder, qorder, groups)
    _last_plan = (attention_mask, shape_key, plan)
    return plan


def _expand(order, heads: int, dim: int):
    return order[:, None, :, None].expand(order.shape[0], heads, order.shape[1], dim)


def _fit(x, width: int):
    """`x` [rows, heads, t, dim] cut or zero-padded on the right to `width` columns."""
    import torch

    t = x.shape[2]
    if t >= width:
        return x[:, :, :width].contiguous()
    return torch.nn.functional.pad(x, (0, 0, 0, width - t))


def register() -> str:
    """Register the attention function and its mask builder with transformers (idempotent); returns NAME."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
