# ruff: noqa: E402
"""Which shape change makes bf16 logits of one row differ? real 0.5B model."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads(2)
d = __import__("os").environ.get("MODEL", "/work/realmodel/0.5b/hf")
tok = AutoTokenizer.from_pretrained(d)
m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16).eval()
texts = [
    "Translate to English: 北京是中华人民共和国的首都，也是全国的政治中心。",
    "Translate: Москва — столица России.",
    "Translate: 東京は日本の首都です。",
    "hello there how are you doing today my friend",
]
ids = [tok(t).input_ids for t in texts]


def run(batch, width=None, M=None):
    w = width or max(len(x) for x in batch)
    inp = torch.full((len(batch), w), tok.pad_token_id or 0)
    mask = torch.zeros((len(batch), w), dtype=torch.long)
    pos = torch.ones((len(batch), w), dtype=torch.long)
    for r, x in enumerate(batch):
        inp[r, w - len(x) :] = torch.tensor(x)
        mask[r, w - len(x) :] = 1
        pos[r, w - len(x) :] = torch.arange(len(x))
    with torch.inference_mode():
        return m(input_ids=inp, attention_mask=mask, position_ids=pos).logits[:, -1].float()


a = run([ids[0]])[0]


def cmp(name, b):
    print(
        f"{name:50s} maxdiff={(a - b).abs().max().item():.4g} argmax_same={a.argmax().item() == b.argmax().item()} bitwise={torch.equal(a, b)}"
    )


cmp("same row alone again", run([ids[0]])[0])
for B in (2, 4, 8, 16):
    cmp(f"replicated x{B} (same width)", run([ids[0]] * B)[0])
cmp("left pad +5 alone", run([ids[0]], width=len(ids[0]) + 5)[0])
cmp("left pad +37 alone", run([ids[0]], width=len(ids[0]) + 37)[0])
cmp("with 3 shorter companions", run([ids[0], ids[1], ids[2], ids[3]])[0])
cmp("with companions, padded to +20", run([ids[0], ids[1], ids[2], ids[3]], width=len(ids[0]) + 20)[0])
# decode-shape: M = rows, one token each, via full recompute is prefill; emulate decode by 1-token inputs with cache
from transformers import DynamicCache


def dec(B):
    with torch.inference_mode():
        x = torch.tensor([ids[0]] * B)
        c = DynamicCache()
        o = m(input_ids=x, use_cache=True, past_key_values=c)
        nxt = o.logits[:, -1].argmax(-1)
        o2 = m(input_ids=nxt[:, None], use_cache=True, past_key_values=c)
        return o2.logits[:, -1].float()


d1 = dec(1)[0]
for B in (2, 4, 8, 16):
    b = dec(B)[0]
    print(
        f"decode step replicated x{B:2d}: maxdiff={(d1 - b).abs().max().item():.4g} bitwise={torch.equal(d1, b)}"
    )
print("--- padded variants against each other")
p5 = run([ids[0]], width=len(ids[0]) + 5)[0]
for name, b in [
    ("pad+1", run([ids[0]], width=len(ids[0]) + 1)[0]),
    ("pad+37", run([ids[0]], width=len(ids[0]) + 37)[0]),
    ("companions pad+20", run([ids[0], ids[1], ids[2], ids[3]], width=len(ids[0]) + 20)[0]),
    ("companions longer", run([ids[3] + ids[1] + ids[2], ids[0]])[1]),
]:
    print(f"{name:30s} vs pad+5 maxdiff={(p5 - b).abs().max().item():.4g} bitwise={torch.equal(p5, b)}")
print(m.config._attn_implementation)
