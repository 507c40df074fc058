"""`make gpu-check`: the GPU code paths on tiny local models, one line per check (about 3 minutes on an H100).

No weights can reach a lent GPU machine, so every model here is built on the spot (the tiny Qwen2 chat model,
a tiny T5 with the byte tokenizer). Checks:
- hf backend on CUDA, fp32 and bf16: batched vs one at a time vs batched with prefix reuse, replies compared;
- the Lightning evaluation (`eatlab`) on one GPU (English NER by the run's own LLM: spaCy's wheels are too large
  to carry to a lent machine, and the check is about the LLM on the GPU);
- Flan-T5 extractor training in bf16-mixed (a tiny T5 on the in-repo English sample);
- the QLoRA fine-tuning path (4-bit base, paged 8-bit AdamW) when bitsandbytes imports, else skipped.
Without CUDA every check says `skipped`; the command still exits 0, so CI can run it on a CPU. The machine needs
the project importable (`pip install -e .`, or, on a lent machine without the package registries, the wheelhouse
that `experiments/gpu_check/wheelhouse.sh` builds and `experiments/gpu_check/device.sh` installs).

    python -m eatlab.cli.gpu_check [--out DIR] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import traceback
from pathlib import Path

SENTENCES = ["北京是中国的首都。", "Angela Merkel besuchte Paris.", "Путин посетил Берлин.", "서울의 날씨",
             "東京タワーは港区にある。", "نيويورك مدينة كبيرة", "Barack Obama", "नई दिल्ली"]  # fmt: skip


_ACCEL = {"cuda": "gpu", "cpu": "cpu"}  # torch device -> Lightning accelerator


def check_overrides(out: Path, device: str) -> dict[str, tuple[str, list[str]]]:
    """Each Lightning check's entry point (its file under conf/) and overrides: tiny models, a few steps."""
    acc = _ACCEL[device]
    common = [f"paths.output_dir={out}", f"paths.models_dir={out}", "tracking=none"]
    return {
        "eval": ("config", [*common, "extractor=llm", "data.limit=8", f"eval.accelerator={acc}", "eval.devices=1",
                            f"cache.path={out / 'eval-cache.sqlite'}"]),
        "t5": ("train_extractor", [*common, "extractor=flan_t5_small", f"extractor.train.model={out / 'tiny-t5'}",
                                   "trainer.max_epochs=1", "extractor.train.train_limit=64",
                                   "extractor.train.batch_size=8",
                                   "extractor.train.dev_limit=16", "extractor.train.max_new_tokens=16",
                                   "trainer.precision=bf16-mixed", f"trainer.accelerator={acc}"]),
        "qlora": ("finetune", [*common, "language=zh", "model=tiny", "finetune.filters.max_pairs_per_language=40",
                               "finetune.batch_size=4", "trainer.max_steps=6", "trainer.accumulate_grad_batches=1",
                               "trainer.enable_progress_bar=false", f"trainer.accelerator={acc}"]),
    }  # fmt: skip


def compose_check(key: str, out: Path, device: str):
    """A check's real config, composed outside a Hydra app (`paths.run_dir` given: out/<key>), resolved and
    validated the way its entry point validates it, before any model is built."""
    from omegaconf import OmegaConf

    from eatlab.cli.config_check import compose_config, validate_for

    name, overrides = check_overrides(out, device)[key]
    cfg = compose_config(name, [f"paths.run_dir={out / key}", *overrides])
    OmegaConf.resolve(cfg)
    validate_for(name, cfg)
    return cfg


def check_hf_backend(out: Path, device: str) -> str:
    from eatlab.llm.cache import ResponseCache
    from eatlab.llm.client import LLMClient
    from eatlab.llm.conversation import run_conversations
    from eatlab.llm.hf import HFBackend
    from eatlab.llm.prompts import PromptSet
    from eatlab.llm.tiny import ensure_tiny_model
    from eatlab.paths import PROMPTS_DIR

    model = ensure_tiny_model(out / "tiny-qwen2")
    ps = PromptSet(PROMPTS_DIR / "eatlab_v1.yaml", 3, 3)
    values = [ps.values("Chinese", sentence=s) for s in SENTENCES]
    starts = [ps.start(ps.forward, v) for v in values]
    parts = []
    for dtype in ("float32", "bfloat16"):
        texts, secs = {}, {}
        for name, batch, reuse in (("single", 1, False), ("batched", 8, False), ("reuse", 8, True)):
            backend = HFBackend(model, batch_size=batch, prefix_reuse=reuse, dtype=dtype, device=device)
            client = LLMClient(backend, ResponseCache(mode="off"))
            t0 = time.perf_counter()
            res = run_conversations(client, starts, ps.forward, values, {"max_new_tokens_cap": 16}, "forward")
            secs[name] = time.perf_counter() - t0
            texts[name] = [[r.text for r in c.replies] for c in res]
            backend.close()
        same = sum(a == b for a, b in zip(texts["single"], texts["batched"], strict=True))
        same_r = sum(a == b for a, b in zip(texts["single"], texts["reuse"], strict=True))
        parts.append(f"{dtype}: batched {same}/8 and reuse {same_r}/8 identical to one at a time, "
                     f"{secs['single']:.1f}/{secs['batched']:.1f}/{secs['reuse']:.1f} s")  # fmt: skip
    return "; ".join(parts)


def check_lightning_eval(out: Path, device: str) -> str:
    from eatlab.cli.run import run_eat

    m = run_eat(compose_check("eval", out, device), out / "eval")
    return f"{m['n_sentences']} sentences, {m['llm_calls']} LLM calls, {m['seconds']['total']:.1f} s"


def check_t5_bf16(out: Path, device: str) -> str:
    import torch
    from transformers import ByT5Tokenizer, T5Config, T5ForConditionalGeneration

    from eatlab.cli.extractor import train_extractor

    path = out / "tiny-t5"
    tok = ByT5Tokenizer()
    config = T5Config(vocab_size=len(tok), d_model=64, d_ff=128, d_kv=16, num_layers=2, num_decoder_layers=2,
                      num_heads=4, decoder_start_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id)  # fmt: skip
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    s = train_extractor(compose_check("t5", out, device), out / "t5")
    return f"{s['global_step']} steps in bf16-mixed, best dev F1 {s['best_val_f1']}"


def check_qlora(out: Path, device: str) -> str:
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - not installable on every machine
        return f"skipped: bitsandbytes does not import ({type(exc).__name__})"
    from eatlab.cli.finetune import run_finetune

    s = run_finetune(compose_check("qlora", out, device), out / "qlora")
    t = s["training"]
    return (f"{s['metrics']['optimizer_steps']} steps, optimizer {t['optimizer']}, precision {t['precision']}, "
            f"{t['quantized_linear_layers']} 4-bit layers")  # fmt: skip


CHECKS = (("hf backend", check_hf_backend), ("Lightning evaluation on 1 device", check_lightning_eval),
          ("Flan-T5 training bf16-mixed", check_t5_bf16), ("QLoRA", check_qlora))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu: the same checks on the CPU, up to the CUDA boundary (the test suite runs this)")  # fmt: skip
    args = p.parse_args(argv)
    import torch

    run = args.device == "cpu" or torch.cuda.is_available()
    if args.device == "cpu":
        name = "device cpu"  # also where CUDA is present: the checks then run on the CPU
    else:
        name = torch.cuda.get_device_name(0) if run else "no CUDA device, device cuda"
    print(f"gpu-check: torch {torch.__version__}, {name}")
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        for label, fn in CHECKS:
            if not run:
                print(f"{label}: skipped (no CUDA device)")
                continue
            t0 = time.perf_counter()
            try:
                print(f"{label}: ok, {fn(out, args.device)} ({time.perf_counter() - t0:.0f} s)", flush=True)
            except Exception as exc:  # noqa: BLE001 - one line per check, the rest still runs
                failed += 1
                print(f"{label}: FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:300]}", flush=True)
                traceback.print_exc()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
