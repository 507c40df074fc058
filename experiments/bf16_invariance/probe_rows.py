# ruff: noqa: E402
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
d = __import__("os").environ.get("MODEL", "/work/realmodel/0.5b/hf")
tok = AutoTokenizer.from_pretrained(d)
m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, attn_implementation=sys.argv[1]).eval()
ids = tok("Translate to English: 北京是中华人民共和国的首都，也是全国的政治中心。").input_ids


def gen(B, steps=8):
    x = torch.tensor([ids] * B)
    c = DynamicCache()
    outs = []
    mask = torch.ones_like(x)
    with torch.inference_mode():
        o = m(input_ids=x, attention_mask=mask, past_key_values=c, use_cache=True)
        for _s in range(steps):
            lg = o.logits[:, -1].float()
            outs.append(lg[0])
            t = lg.argmax(-1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            o = m(input_ids=t[:, None], attention_mask=mask, past_key_values=c, use_cache=True)
    return torch.stack(outs)


a = gen(1)
for B in (2, 3, 16):
    b = gen(B)
    print(B, [round((a[s] - b[s]).abs().max().item(), 3) for s in range(len(a))])
