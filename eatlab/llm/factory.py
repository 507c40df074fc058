"""Backend and client from the composed Hydra config (`backend`, `model.*`, `finetune.adapter_path`, `cache.*`).

The backend is built from `cfg.backend` (eatlab.utils.components.build) with the run's model added by the
class's `model_kwargs`, so a backend of one's own plugs in with `backend._target_=mylab.MyBackend` or a YAML file.
`build_client(cfg)` gives the stages an LLMClient whose backend is created only on the first cache miss; the
cache identity (the class's `kind` + `cache_identity`) is computed from the config alone, so a fully cached run
never loads weights. `check_backend(cfg)` checks the node against the class before any work, also when every
answer is cached.

`model.path` means "these weights", with any model group: an existing folder (or GGUF file, converted once to an
HF folder, eatlab.llm.gguf) is used as it is, and a path that does not exist is a one-line error that creates
nothing. Only a smoke model group (`model.smoke=true`, `model=tiny`) without a path builds the tiny random model,
at `model.smoke_path`, once: its weights fingerprint is part of its cache key.
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
from eatlab.llm.gguf import resolve_gguf
from eatlab.utils.components import build, check_params, locate, node_params, require_subclass
from eatlab.utils.io import canonical_json

log = logging.getLogger(__name__)


def _get(node, key: str, default=None):
    value = OmegaConf.select(node, key, default=None) if node is not None else None
    return default if value is None else value


def is_smoke(cfg) -> bool:
    """The run's weights are the tiny random smoke model: a smoke group without `model.path`, or a folder that
    says so (its SMOKE_MODEL marker)."""
    path = _get(cfg, "model.path")
    if path:
        from eatlab.llm.tiny import is_smoke_model

        return is_smoke_model(path)
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


_WARNED: set[str] = set()


def model_source(cfg) -> tuple[str, bool]:
    """(hub id or local folder, is_local). `model.path`, when set, must exist (a folder, or a GGUF file converted
    once to an HF folder under `paths.models_dir`); else a smoke group builds the tiny model on first use."""
    model_id = _get(cfg, "model.id")
    path = _get(cfg, "model.path")
    if not model_id:
        raise ConfigError("model.id: required (it names the weights in the response cache)")
    if path:
        converted = resolve_gguf(str(path), models_dir(cfg))  # a missing *.gguf: "no such GGUF file"
        if converted is not None:
            return str(converted), True
        if not Path(str(path)).exists():
            raise ConfigError(
                f"model.path={path}: no such file or folder (model.path names existing weights)"
            )
        if not Path(str(path)).is_dir():
            raise ConfigError(f"model.path={path}: not a model folder or GGUF file")
        return str(path), True
    if is_smoke(cfg):
        build_at = _get(cfg, "model.smoke_path")
        if not build_at:
            raise ConfigError("model.smoke_path: the smoke model needs a folder to be built in")
        from eatlab.llm.tiny import ensure_tiny_model

        ensure_tiny_model(build_at)
        if str(build_at) not in _WARNED:  # once per process, however often the model is resolved
            _WARNED.add(str(build_at))
            log.warning("model %s is a SMOKE model with random weights: its outputs mean nothing", model_id)
        return str(build_at), True
    return str(model_id), False


def model_spec(cfg, local_weights: bool = True) -> ModelSpec:
    """The run's model; `local_weights=False` (a server's model) neither checks nor builds `model.path`.

    `model.id` names the weights, except where a smoke group's id would name other weights: with `model.path`
    of real weights under `model=tiny`, the model is named by its folder (or GGUF file)."""
    model_id = str(_get(cfg, "model.id"))
    source, local = model_source(cfg) if local_weights else (model_id, False)
    smoke = local_weights and is_smoke(cfg)
    path = _get(cfg, "model.path")
    if local_weights and path and not smoke and _get(cfg, "model.smoke", False):
        model_id = Path(str(path)).stem if Path(str(path)).is_file() else Path(str(path)).name
    return ModelSpec(
        id=model_id,
        source=source,
        local=local,
        revision=_get(cfg, "model.revision"),
        adapter_path=adapter_path(cfg),
        hash_weights=bool(_get(cfg, "model.hash_weights", True)),
        seed=int(_get(cfg, "seed", 0)),
        smoke=smoke,
    )


def run_model(cfg) -> ModelSpec:
    """The model the configured backend runs (what a run records as its model)."""
    return model_spec(cfg, backend_class(cfg).local_weights)


def backend_class(cfg) -> type[LLMBackend]:
    """The class named by `backend._target_` (its module imports no heavy library)."""
    cls = locate(cfg, "backend._target_", "eatlab.llm.hf.HFBackend")
    return require_subclass(cls, LLMBackend, "backend._target_", _get(cfg, "backend._target_"))


def _params(cfg) -> dict:
    return node_params(cfg.backend)


def check_backend(cfg) -> None:
    """The backend node against its class (unknown key, missing parameter, wrong type): one line naming the key.

    Nothing is built and no weights are read: a typo is seen before the first model call, also when every
    answer is cached and the backend is never built."""
    cls = backend_class(cfg)
    params = _params(cfg)
    model_id = str(_get(cfg, "model.id", "model"))
    probe = ModelSpec(id=model_id, source=str(_get(cfg, "model.path") or model_id), local=False)
    check_params(cls, params, "backend", provided=cls.model_kwargs(probe, params))


def backend_identity(cfg) -> tuple[str, str]:
    """(kind, model_key) exactly as the backend built by `build_backend(cfg)` reports them."""
    cls = backend_class(cfg)
    return cls.kind, cls.cache_identity(model_spec(cfg, cls.local_weights), _params(cfg))


def backend_compute(cfg) -> dict:
    """How the configured weights compute, resolved as the built backend resolves it (for provenance.json):
    `dtype` (`auto` resolved; None for a server, whose precision is not this process's choice) and
    `batch_invariant` (acts in half precision only, as in the cache key)."""
    cls = backend_class(cfg)
    params = _params(cfg)
    dtype = cls.compute_dtype(params)
    half = dtype in ("bfloat16", "float16")
    return {"dtype": dtype, "batch_invariant": half and bool(params.get("batch_invariant", False))}


def build_backend(cfg) -> LLMBackend:
    """The configured backend (weights still unloaded)."""
    cls = backend_class(cfg)
    kwargs = cls.model_kwargs(model_spec(cfg, cls.local_weights), _params(cfg))
    backend = build(cfg.backend, "backend", **kwargs)
    if not isinstance(backend, LLMBackend):
        raise ConfigError(f"backend._target_={_get(cfg, 'backend._target_')}: does not build an LLMBackend")
    return backend


class _LoadedBackend:
    """The one backend a process keeps between jobs: an in-process sweep (Hydra's basic launcher) whose jobs use
    the same model and backend settings loads the weights once; a job that needs another model releases it."""

    key: tuple | None = None
    backend: LLMBackend | None = None
    engine_started: str | None = None  # a backend with `one_engine_per_process` (vLLM) started one


def shared_backend(cfg) -> LLMBackend:
    """The configured backend, reused from the previous job of this process when nothing about it changed."""
    cls = backend_class(cfg)
    kind, model_key = backend_identity(cfg)
    key = (kind, model_key, canonical_json(_params(cfg)), str(_get(cfg, "model.path") or ""))
    if _LoadedBackend.key == key and _LoadedBackend.backend is not None:
        log.info("reusing the loaded backend %s (%s)", kind, model_key)
        return _LoadedBackend.backend
    release_shared_backend()
    if cls.one_engine_per_process:
        if _LoadedBackend.engine_started and _LoadedBackend.engine_started != model_key:
            raise ConfigError(
                f"backend={kind}: this process already started an engine for {_LoadedBackend.engine_started} "
                f"and {cls.__name__} cannot start a second one reliably; sweep over models with "
                "hydra/launcher=joblib (one process per job)"
            )
        _LoadedBackend.engine_started = model_key
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
