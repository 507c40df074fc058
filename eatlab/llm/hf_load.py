"""Loading a transformers chat model for the hf backend: tokenizer, weights (optionally quantised, with a peft
adapter) and what decoding needs to know about them (end-of-sequence tokens, padding, the forward's argument
names), checked once so that decoding and scoring never look again.

On CPU (Linux/glibc), `cpu_malloc_tuning` keeps freed memory in the process heap instead of returning it to the
system: batched decoding allocates several batch x vocabulary buffers (40 MB at 64 rows) per step, and fresh pages
from the system cost more than the arithmetic (about 2x on the batched benchmark). The price: the process keeps
its peak memory.
"""

from __future__ import annotations

import ctypes
import inspect
import sys
from dataclasses import dataclass

from eatlab.errors import ConfigError
from eatlab.llm.identity import warn_if_slow_bf16


def tune_cpu_malloc() -> bool:
    """glibc: serve large blocks from the heap (no mmap) and never trim it; True when applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 1 << 40))
    except (OSError, AttributeError):
        return False


@dataclass
class LoadedModel:
    """A loaded chat model and the facts decoding needs about it."""

    tokenizer: object
    model: object
    eos: list[int]  # every end-of-sequence id (generation config and tokenizer), sorted
    pad: int
    cache_kw: str  # the forward's key/value cache argument: `cache` (transformers 5) or `past_key_values`
    keep_kw: str | None  # the forward's "logits of the last n positions only" argument, if it has one
    min_rows: int = 1  # 2: batch-invariant decoding; no forward runs a single row (eatlab.llm.hf_attention)

    @property
    def device(self):
        return next(self.model.parameters()).device


# transformers 5 kernelizes a model at load time with code fetched from the Hub whenever the `kernels` package is
# installed (`use_kernels` defaults to on): a run would depend on a download its config does not name, and fails
# offline (seen on a lent H200: 'kernels-community/rotary' for a 4-bit load). eatlab's causal LMs load without.
PRETRAINED_KWARGS = {"use_kernels": False}


def load_model(
    source: str,
    *,
    device: str,
    dtype,
    revision: str | None = None,
    trust_remote_code: bool = False,
    quantization: str | None = None,
    adapter_path: str | None = None,
    cpu_malloc_tuning: bool = True,
    batch_invariant: bool = False,
) -> LoadedModel:
    """Tokenizer and weights of `source` (hub id or folder) on `device` in `dtype` (a torch dtype), in eval mode;
    `batch_invariant`: with eatlab's batch-invariant attention, and no forward of a single row."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device == "cpu" and cpu_malloc_tuning:
        tune_cpu_malloc()
    warn_if_slow_bf16(str(dtype), device)
    kwargs: dict = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        tok = AutoTokenizer.from_pretrained(source, **kwargs)
        mkw = dict(kwargs, dtype=dtype, **PRETRAINED_KWARGS)
        if batch_invariant:
            from eatlab.llm.hf_attention import register

            mkw["attn_implementation"] = register()
        if quantization:
            from transformers import BitsAndBytesConfig

            if quantization not in ("4bit", "8bit"):
                raise ConfigError(f"backend.quantization={quantization}: expected null, 4bit or 8bit")
            mkw["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=quantization == "4bit",
                load_in_8bit=quantization == "8bit",
                bnb_4bit_compute_dtype=dtype,
                bnb_4bit_quant_type="nf4",
            )
            mkw["device_map"] = "auto"
        elif device == "cuda" and torch.cuda.device_count() > 1:
            mkw["device_map"] = "auto"
        model = AutoModelForCausalLM.from_pretrained(source, **mkw)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"model: cannot load {source!r} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "offline, point model.path at a local folder"
        ) from None
    if "device_map" not in mkw:
        model = model.to(device)
    if adapter_path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_path)
        if (
            not quantization
        ):  # fold B·A into the weights: the same function, without 2 extra matmuls per layer
            model = model.merge_and_unload()
    model.eval()
    if not tok.chat_template:
        raise ConfigError(f"model: {source!r} has no chat template (an -Instruct model is needed)")
    eos = model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if tok.eos_token_id is not None:
        eos.append(tok.eos_token_id)
    if not eos:
        raise ConfigError(f"model: {source!r} defines no end-of-sequence token")
    core = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the model
    params = inspect.signature(type(core).forward).parameters
    keep = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)  # 4.45-4.49: num_
    return LoadedModel(
        tokenizer=tok,
        model=model,
        eos=sorted(set(eos)),
        pad=tok.pad_token_id if tok.pad_token_id is not None else eos[0],
        cache_kw="cache" if "cache" in params else "past_key_values",
        keep_kw=keep,
        min_rows=2 if batch_invariant else 1,
    )
