# ruff: noqa: E402
"""A row-aligned attention: every row's tokens moved to columns 0..n-1 before SDPA, explicit mask always."""

import time

import torch
from transformers import AttentionInterface, AttentionMaskInterface, AutoModelForCausalLM, AutoTokenizer
from transformers.masking_utils import sdpa_mask

torch.set_num_threads(2)
import sys

BUCKET = int(sys.argv[1])


def row_aligned(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
    B, H, Tq, D = query.shape
    Tk = key.shape[2]
    if attention_mask is None:
        valid = torch.ones((B, Tk), dtype=torch.bool, device=query.device)
    else:
        m = attention_mask[:, 0, -1, :]  # the last query sees every valid column
        valid = m if m.dtype == torch.bool else m == 0
    n = valid.sum(1)  # [B]
    # order: valid columns first, in order (stable sort on ~valid)
    order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices  # [B, Tk]
    gk = order[:, None, :, None].expand(B, key.shape[1], Tk, D)
    k2 = key.gather(2, gk)
    v2 = value.gather(2, gk)
    qvalid = valid[:, Tk - Tq :]
    nq = qvalid.sum(1)
    qorder = torch.sort((~qvalid).to(torch.int8), dim=1, stable=True).indices  # [B, Tq]
    q2 = query.gather(2, qorder[:, None, :, None].expand(B, H, Tq, D))
    # query i (i < nq) sits at kv position n - nq + i; it sees keys j <= that and j < n
    i = torch.arange(Tq, device=query.device)
    j = torch.arange(Tk, device=query.device)
    qpos = (n - nq)[:, None] + i[None, :]  # [B, Tq]
    mask = (j[None, None, :] <= qpos[:, :, None]) & (j[None, None, :] < n[:, None, None])
    mask = mask | (i[None, :, None] >= nq[:, None, None])  # padded queries: see everything (discarded)
    out = torch.zeros_like(q2)
    bucket = ((n + BUCKET - 1) // BUCKET) * BUCKET
    for bk in bucket.unique().tolist():
        rows = (bucket == bk).nonzero()[:, 0]
        Tkb = int(bk)
        kk, vv = k2[rows, :, :Tkb], v2[rows, :, :Tkb]
        if kk.shape[2] < Tkb:
            padn = Tkb - kk.shape[2]
            kk = torch.nn.functional.pad(kk, (0, 0, 0, padn))
            vv = torch.nn.functional.pad(vv, (0, 0, 0, padn))
            mm = torch.nn.functional.pad(mask[rows], (0, padn), value=False)
        else:
            mm = mask[rows, :, :Tkb]
        out[rows] = torch.nn.functional.scaled_dot_product_attention(
            q2[rows], kk, vv, attn_mask=mm[:, None], scale=scaling, enable_gqa=True
        )
    # back to the original query columns
    res = torch.zeros_like(out)
    res.scatter_(2, qorder[:, None, :, None].expand(B, H, Tq, D), out)
    return res.transpose(1, 2).contiguous(), None


AttentionInterface.register("row_aligned", row_aligned)
AttentionMaskInterface.register("row_aligned", sdpa_mask)
d = __import__("os").environ.get("MODEL", "/work/realmodel/0.5b/hf")
tok = AutoTokenizer.from_pretrained(d)
m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, attn_implementation="row_aligned").eval()
texts = [
    "Translate to English: 北京是中华人民共和国的首都，也是全国的政治中心。",
    "Translate: Москва — столица России.",
    "Translate: 東京は日本の首都です。",
    "hello there how are you doing today my friend",
]
ids = [tok(t).input_ids for t in texts]
from transformers import DynamicCache


def gen(batch, steps=12, extra=0):
    if len(batch) == 1:
        batch = batch * 2
    w = max(len(x) for x in batch) + extra
    inp = torch.full((len(batch), w), 0)
    mask = torch.zeros((len(batch), w), dtype=torch.long)
    pos = torch.ones((len(batch), w), dtype=torch.long)
    for r, x in enumerate(batch):
        inp[r, w - len(x) :] = torch.tensor(x)
        mask[r, w - len(x) :] = 1
        pos[r, w - len(x) :] = torch.arange(len(x))
    c = DynamicCache()
    outs = []
    with torch.inference_mode():
        o = m(input_ids=inp, attention_mask=mask, position_ids=pos, past_key_values=c, use_cache=True)
        lg = o.logits[:, -1].float()
        posn = torch.tensor([len(x) for x in batch])
        for _s in range(steps):
            outs.append(lg)
            t = lg.argmax(-1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            o = m(
                input_ids=t[:, None],
                attention_mask=mask,
                position_ids=posn[:, None],
                past_key_values=c,
                use_cache=True,
            )
            posn = posn + 1
            lg = o.logits[:, -1].float()
    return torch.stack(outs, 1)  # [B, steps, V]


t = time.time()
a = gen([ids[0]])[0]
print("alone", time.time() - t)
for name, batch, extra, r in [
    ("pad+1", [ids[0]], 1, 0),
    ("pad+20", [ids[0]], 20, 0),
    ("companions", [ids[3], ids[1], ids[0], ids[2]], 0, 2),
    ("first longest", [ids[0], ids[1], ids[2], ids[3]], 0, 0),
    ("same len companions", [ids[0], ids[0][:3] + ids[1][: len(ids[0]) - 3]], 0, 0),
    ("companions longer", [ids[3] + ids[1] + ids[2], ids[0]], 0, 1),
]:
    b = gen(batch, extra=extra)[r]
    print([round((a[s] - b[s]).abs().max().item(), 3) for s in range(a.shape[0])])
    print(
        f"{name:20s} maxdiff={(a - b).abs().max().item():.4g} bitwise={torch.equal(a, b)} tokens_same={torch.equal(a.argmax(-1), b.argmax(-1))}"
    )
