"""How fast bf16 is against fp32 on this CPU, for one of the 1.5B's MLP products (600 tokens x 1536 -> 8960, the
weight frozen as under LoRA, torch's default threads): forward, and backward to the input. Prints the CPU
(eatlab.provenance.cpu_info) and the second of two timings per dtype. docs/finetuning.md has its output.

    python experiments/real_model/cpu_bf16_speed.py
"""

import time

import torch

from eatlab.provenance import cpu_info

print(cpu_info(), f"torch {torch.__version__}, {torch.get_num_threads()} threads")
torch.manual_seed(0)
for dtype in (torch.float32, torch.bfloat16):
    lin = torch.nn.Linear(1536, 8960, bias=False).to(dtype).requires_grad_(False)
    x = torch.randn(600, 1536, dtype=dtype, requires_grad=True)
    for _ in range(2):
        t0 = time.perf_counter()
        y = lin(x)
        t1 = time.perf_counter()
        y.sum().backward()
        t2 = time.perf_counter()
    print(f"{str(dtype):15s} forward {t1 - t0:.3f} s  backward {t2 - t1:.3f} s")
