"""What one layer's decode attention costs in bf16 on the CPU: the flash kernel (`scaled_dot_product_attention`)
with and without a mask and GQA, a plain matmul-softmax-matmul, and the key/value gather that the batch-invariant
attention (eatlab.llm.hf_attention) adds. Shapes of Qwen2.5-Coder-0.5B decoding 16 rows (14 query heads, 2 key/value
heads, head dim 64) over 300 and 512 keys. One thread; run it on an idle machine for absolute numbers (the run
docs/llm.md cites shared the cores with a spaCy training, so only its ratios are used).

    python experiments/bf16_invariance/probe_attention_cost.py
"""

import time

import torch

F = torch.nn.functional
R, H, KV, D, TQ = 16, 14, 2, 64, 1


def timed(name: str, f, n: int = 48) -> None:
    f()
    t0 = time.perf_counter()
    for _ in range(n):
        f()
    print(f"  {name}: {(time.perf_counter() - t0) / n * 1000:.2f} ms")


def probe(dt, tk: int) -> None:
    q = torch.randn(R, H, TQ, D, dtype=dt)
    k, v = torch.randn(R, KV, tk, D, dtype=dt), torch.randn(R, KV, tk, D, dtype=dt)
    kr, vr = k.repeat_interleave(H // KV, 1), v.repeat_interleave(H // KV, 1)
    m = torch.ones(R, 1, TQ, tk, dtype=torch.bool)
    idx = torch.arange(tk)[None, None, :, None].expand(R, KV, tk, D)
    print(f"{dt}, {tk} keys")
    timed(
        "sdpa, GQA, explicit mask",
        lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True),
    )
    timed("sdpa, repeated kv, no mask", lambda: F.scaled_dot_product_attention(q, kr, vr))
    timed("matmul-softmax-matmul", lambda: torch.softmax(q @ kr.transpose(-1, -2) * D**-0.5, -1) @ vr)
    timed("gather of k and v", lambda: (k.gather(2, idx), v.gather(2, idx)))


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    for dt in (torch.float32, torch.bfloat16):
        for tk in (300, 512):
            probe(dt, tk)


if __name__ == "__main__":
    main()
