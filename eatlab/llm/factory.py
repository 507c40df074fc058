"""Backend and client from the composed Hydra config (`backend.*`, `model.*`, `finetune.adapter_path`, `cache.*`).

`build_client(cfg)` gives the stages an LLMClient whose backend is created only on the first cache miss; the
cache identity (backend kind + model key) is computed from the config alone, so a fully cached run never touches
the backend's libraries or weights. The tiny smoke model is built on disk (once) when `model.smoke` is true,
because its weights fingerprint is part of its cache key.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

from eatlab.errors import ConfigError
from eatlab.llm.base import GenerationSettings, LLMBackend, settings_for_round
from eatlab.llm.cache import ResponseCache
from eatlab.llm.client import LLMClient
from eatlab.llm.identity import make_model_key

log = logging.getLogger(__name__)
KINDS = ("hf", "openai", "vllm")


def _get(node, key: str, default=None):
    if node is None:
        return default
    try:
        value = node.get(key, default)
    except AttributeError:
        value = getattr(node, key, default)
    return default if value is None else value


def _kind(cfg) -> str:
    kind = _get(cfg.backend, "kind")
    if kind not in KINDS:
        raise ConfigError(f"backend.kind={kind}: expected one of {', '.join(KINDS)}")
    return kind


def is_smoke(cfg) -> bool:
    return bool(_get(cfg.model, "smoke", False))


def adapter_path(cfg) -> str | None:
    """The LoRA adapter folder of `finetune=...`; a missing one is a one-line error naming the key."""
    path = _get(_get(cfg, "finetune"), "adapter_path")
    if not path:
        return None
    if not Path(str(path)).exists():
        lang = _get(_get(cfg, "language"), "code", "<code>")
        raise ConfigError(
            f"finetune.adapter_path={path}: no such folder; train it with `eatlab-finetune language={lang} "
            f"model=<name>` or set finetune.adapter_path"
        )
    return str(path)


def model_source(cfg) -> tuple[str, bool]:
    """(hub id or local folder, is_local); builds the tiny smoke model on first use."""
    m = cfg.model
    model_id = _get(m, "id")
    path = _get(m, "path")
    if not model_id:
        raise ConfigError("model.id: required (it names the weights in the response cache)")
    if is_smoke(cfg):
        if not path:
            raise ConfigError("model.path: the smoke model needs a folder to be built in")
        from eatlab.llm.tiny import ensure_tiny_model

        ensure_tiny_model(path)
        log.warning("model %s is a SMOKE model with random weights: its outputs mean nothing", model_id)
    if path:
        if not Path(path).is_dir():
            raise ConfigError(f"model.path={path}: no such folder")
        return str(path), True
    return str(model_id), False


def backend_identity(cfg) -> tuple[str, str]:
    """(kind, model_key) exactly as the backend built by `build_backend(cfg)` reports them."""
    kind = _kind(cfg)
    if kind == "openai":
        name = _get(cfg.backend, "model") or _get(cfg.model, "id")
        rev = _get(cfg.model, "revision")
        return kind, f"{name}@{rev}" if rev else str(name)
    source, local = model_source(cfg)
    key = make_model_key(
        _get(cfg.model, "id"),
        _get(cfg.model, "revision"),
        source if local else None,
        adapter_path(cfg),
        hash_weights=bool(_get(cfg.model, "hash_weights", True)),
        quantization=_get(cfg.backend, "quantization") if kind == "hf" else None,
    )
    return kind, key


def build_backend(cfg) -> LLMBackend:
    """The backend named by `backend.kind` (weights still unloaded)."""
    kind = _kind(cfg)
    b = cfg.backend
    if kind == "openai":
        from eatlab.llm.openai_http import OpenAIBackend

        _, key = backend_identity(cfg)
        return OpenAIBackend(
            _get(b, "base_url"),
            _get(b, "model") or _get(cfg.model, "id"),
            api_key_env=_get(b, "api_key_env", "OPENAI_API_KEY"),
            concurrency=int(_get(b, "concurrency", 8)),
            timeout_s=float(_get(b, "timeout_s", 120)),
            max_retries=int(_get(b, "max_retries", 5)),
            backoff_s=float(_get(b, "backoff_s", 1.0)),
            max_backoff_s=float(_get(b, "max_backoff_s", 30.0)),
            logprobs=bool(_get(b, "logprobs", False)),
            top_logprobs=int(_get(b, "top_logprobs", 20)),
            extra_sampling_params=bool(_get(b, "extra_sampling_params", True)),
            fail_fast_after=int(_get(b, "fail_fast_after", 8)),
            model_key=key,
        )
    source, _ = model_source(cfg)
    common = {
        "model_id": _get(cfg.model, "id"),
        "revision": _get(cfg.model, "revision"),
        "adapter_path": adapter_path(cfg),
        "hash_weights": bool(_get(cfg.model, "hash_weights", True)),
        "dtype": _get(b, "dtype", "auto"),
    }
    if kind == "hf":
        from eatlab.llm.hf import HFBackend

        return HFBackend(
            source,
            batch_size=int(_get(b, "batch_size", 16)),
            token_budget=int(_get(b, "token_budget", 65536)),
            device=_get(b, "device", "auto"),
            compute_entropy=bool(_get(b, "compute_entropy", True)),
            quantization=_get(b, "quantization"),
            cpu_malloc_tuning=bool(_get(b, "cpu_malloc_tuning", True)),
            **common,
        )
    from eatlab.llm.vllm_backend import VLLMBackend

    return VLLMBackend(
        source,
        gpu_memory_utilization=float(_get(b, "gpu_memory_utilization", 0.9)),
        tensor_parallel_size=int(_get(b, "tensor_parallel_size", 1)),
        max_model_len=_get(b, "max_model_len"),
        max_lora_rank=int(_get(b, "max_lora_rank", 64)),
        logprobs=int(_get(b, "logprobs", 20)),
        seed=int(_get(cfg, "seed", 0)),
        **common,
    )


def build_cache(cfg) -> ResponseCache:
    c = _get(cfg, "cache")
    return ResponseCache(_get(c, "path"), mode=_get(c, "mode", "readwrite"))


def build_client(cfg, cache: ResponseCache | None = None) -> LLMClient:
    """LLMClient for a run: the configured cache, the backend created on the first miss."""
    kind, key = backend_identity(cfg)
    return LLMClient(partial(build_backend, cfg), cache or build_cache(cfg), kind=kind, model_key=key)


def generation_settings(cfg, max_new_tokens: int | None = None) -> GenerationSettings:
    """GenerationSettings from `cfg.generation`; `max_new_tokens` (a round's budget) applies where the config has
    none (`generation.max_new_tokens: null`)."""
    return settings_for_round(cfg.generation, max_new_tokens)
