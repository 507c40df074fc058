"""Backend and client from the composed Hydra config (`backend`, `model.*`, `finetune.adapter_path`, `cache.*`).

The backend is `hydra.utils.instantiate(cfg.backend)` with the run's model added by the class's `model_kwargs`,
so a backend of one's own plugs in with `backend._target_=mylab.MyBackend` or a YAML file. `build_client(cfg)`
gives the stages an LLMClient whose backend is created only on the first cache miss; the cache identity (the
class's `kind` + `cache_identity`) is computed from the config alone, so a fully cached run never touches the
backend's libraries or weights. The tiny smoke model is built on disk (once) when `model.smoke` is true,
because its weights fingerprint is part of its cache key; a GGUF `model.path` is converted (once) to an HF
folder for the same reason (eatlab.llm.gguf).
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

from omegaconf import OmegaConf

from eatlab.errors import ConfigError
from eatlab.llm.base import LLMBackend, ModelSpec
from eatlab.llm.cache import ResponseCache
from eatlab.llm.client import LLMClient
from eatlab.llm.gguf import is_gguf_path, resolve_gguf
from eatlab.utils.components import build, locate, require_subclass
from eatlab.utils.io import canonical_json

log = logging.getLogger(__name__)


def _get(node, key: str, default=None):
    value = OmegaConf.select(node, key, default=None) if node is not None else None
    return default if value is None else value


def is_smoke(cfg) -> bool:
    return bool(_get(cfg, "model.smoke", False))


def adapter_path(cfg) -> str | None:
    """The LoRA adapter folder of `finetune=...`; a missing one is a one-line error naming the key."""
    path = _get(cfg, "finetune.adapter_path")
    if not path:
        return None
    if not Path(str(path)).exists():
        lang = _get(cfg, "language.code", "<code>")
        raise ConfigError(
            f"finetune.adapter_path={path}: no such folder; train it with `eatlab-finetune language={lang} "
            f"model=<name>` or set finetune.adapter_path"
        )
    return str(path)


def models_dir(cfg) -> str:
    """Where built and converted models live (`paths.models_dir`)."""
    return str(_get(cfg, "paths.models_dir", "outputs/models"))


def model_source(cfg) -> tuple[str, bool]:
    """(hub id or local folder, is_local); builds the tiny smoke model on first use, and converts a GGUF
    `model.path` (a .gguf file, or a folder holding one) once to an HF folder under `paths.models_dir`."""
    model_id = _get(cfg, "model.id")
    path = _get(cfg, "model.path")
    if not model_id:
        raise ConfigError("model.id: required (it names the weights in the response cache)")
    if is_smoke(cfg):
        if not path:
            raise ConfigError("model.path: the smoke model needs a folder to be built in")
        if is_gguf_path(str(path)):
            raise ConfigError(f"model.path={path}: a GGUF file is not a smoke model; set model.smoke=false")
        from eatlab.llm.tiny import ensure_tiny_model

        ensure_tiny_model(path)
        log.warning("model %s is a SMOKE model with random weights: its outputs mean nothing", model_id)
    if path:
        converted = resolve_gguf(str(path), models_dir(cfg))
        if converted is not None:
            return str(converted), True
        if not Path(path).is_dir():
            raise ConfigError(f"model.path={path}: no such folder")
        return str(path), True
    return str(model_id), False


def model_spec(cfg, local_weights: bool = True) -> ModelSpec:
    """The run's model; `local_weights=False` (a server's model) neither checks nor builds `model.path`."""
    source, local = model_source(cfg) if local_weights else (str(_get(cfg, "model.id")), False)
    return ModelSpec(
        id=str(_get(cfg, "model.id")),
        source=source,
        local=local,
        revision=_get(cfg, "model.revision"),
        adapter_path=adapter_path(cfg),
        hash_weights=bool(_get(cfg, "model.hash_weights", True)),
        seed=int(_get(cfg, "seed", 0)),
    )


def backend_class(cfg) -> type[LLMBackend]:
    """The class named by `backend._target_` (its module imports no heavy library)."""
    cls = locate(cfg, "backend._target_", "eatlab.llm.hf.HFBackend")
    return require_subclass(cls, LLMBackend, "backend._target_", _get(cfg, "backend._target_"))


def _params(cfg) -> dict:
    node = OmegaConf.to_container(cfg.backend, resolve=True)
    return {k: v for k, v in node.items() if not k.startswith("_")}


def backend_identity(cfg) -> tuple[str, str]:
    """(kind, model_key) exactly as the backend built by `build_backend(cfg)` reports them."""
    cls = backend_class(cfg)
    return cls.kind, cls.cache_identity(model_spec(cfg, cls.local_weights), _params(cfg))


def build_backend(cfg) -> LLMBackend:
    """The configured backend (weights still unloaded)."""
    cls = backend_class(cfg)
    kwargs = cls.model_kwargs(model_spec(cfg, cls.local_weights), _params(cfg))
    return build(cfg.backend, "backend", **kwargs)


class _LoadedBackend:
    """The one backend a process keeps between jobs: an in-process sweep (Hydra's basic launcher) whose jobs use
    the same model and backend settings loads the weights once; a job that needs another model releases it."""

    key: tuple | None = None
    backend: LLMBackend | None = None
    vllm_started: str | None = None  # vLLM cannot reliably start a second engine in one process


def shared_backend(cfg) -> LLMBackend:
    """The configured backend, reused from the previous job of this process when nothing about it changed."""
    cls = backend_class(cfg)
    kind, model_key = backend_identity(cfg)
    key = (kind, model_key, canonical_json(_params(cfg)), str(_get(cfg, "model.path") or ""))
    if _LoadedBackend.key == key and _LoadedBackend.backend is not None:
        log.info("reusing the loaded backend %s (%s)", kind, model_key)
        return _LoadedBackend.backend
    release_shared_backend()
    if cls.kind == "vllm":
        if _LoadedBackend.vllm_started and _LoadedBackend.vllm_started != model_key:
            raise ConfigError(
                f"backend=vllm: this process already started a vLLM engine for {_LoadedBackend.vllm_started} and "
                "vLLM cannot start a second one reliably; sweep over models with hydra/launcher=joblib "
                "(one process per job)"
            )
        _LoadedBackend.vllm_started = model_key
    backend = build_backend(cfg)
    _LoadedBackend.key, _LoadedBackend.backend = key, backend
    return backend


def release_shared_backend() -> None:
    """Free the kept backend's weights (GPU memory, HTTP pools)."""
    if _LoadedBackend.backend is not None:
        _LoadedBackend.backend.close()
    _LoadedBackend.key = _LoadedBackend.backend = None


def build_cache(cfg) -> ResponseCache:
    return ResponseCache(_get(cfg, "cache.path"), mode=_get(cfg, "cache.mode", "readwrite"))


def build_client(cfg, cache: ResponseCache | None = None) -> LLMClient:
    """LLMClient for a run: the configured cache, the backend created on the first miss (a backend with local
    weights is reused from the previous job of this process when nothing about it changed)."""
    kind, key = backend_identity(cfg)
    if not backend_class(cfg).local_weights:  # a server's client: nothing loaded here, nothing to keep
        return LLMClient(partial(build_backend, cfg), cache or build_cache(cfg), kind=kind, model_key=key)
    return LLMClient(
        partial(shared_backend, cfg), cache or build_cache(cfg), kind=kind, model_key=key, owns_backend=False
    )
