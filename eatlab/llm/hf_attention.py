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
    tk = key.shape[2]
    dev = query.device
    if attention_mask is None:
        valid = torch.ones((rows, tk), dtype=torch.bool, device=dev)
    else:
        last = attention_mask[:, 0, -1, :]  # the last query sees every column of its row
        valid = last if last.dtype == torch.bool else last == 0
    n = valid.sum(1)  # the row's keys
    nq = valid[:, tk - tq :].sum(1)  # the row's real queries (the last ones of its keys)
    # each row's valid columns first, in order (a stable sort of the padding flags)
    korder = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices
    qorder = torch.sort((~valid[:, tk - tq :]).to(torch.int8), dim=1, stable=True).indices
    kidx = korder[:, None, :, None].expand(rows, key.shape[1], tk, dim)
    qidx = qorder[:, None, :, None].expand(rows, heads, tq, dim)
    k, v, q = key.gather(2, kidx), value.gather(2, kidx), query.gather(2, qidx)
    out = torch.zeros_like(q)
    kb = _rounded(n, KV_BUCKET)
    qb = torch.where(nq > 1, _rounded(nq, Q_BUCKET), nq)  # decoding (one query) stays one query
    shapes = torch.stack([qb, kb], 1)
    for qw, kw in torch.unique(shapes, dim=0).tolist():
        sel = ((qb == qw) & (kb == kw)).nonzero()[:, 0]
        qs = _fit(q[sel], qw)
        ks, vs = _fit(k[sel], kw), _fit(v[sel], kw)
        # query i of a row sits at key position n - nq + i; it sees the keys up to it, none of the padding;
        # a padding query sees its row's first key only (its output is dropped)
        i = torch.arange(qw, device=dev)[None, :, None]
        j = torch.arange(kw, device=dev)[None, None, :]
        pos = (n[sel] - nq[sel])[:, None, None] + i
        mask = torch.where(i < nq[sel][:, None, None], j <= pos, j == 0)
        res = torch.nn.functional.scaled_dot_product_attention(
            qs, ks, vs, attn_mask=mask[:, None], scale=scaling, enable_gqa=ks.shape[1] != qs.shape[1]
        )
        out[sel] = _fit(res, tq)
    back = torch.zeros_like(query)
    back.scatter_(2, qidx, out)
    return back.transpose(1, 2).contiguous(), None


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
