"""Backends and clients from the composed Hydra config; the vLLM import boundary; the model/backend config groups."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from eatlab.errors import ConfigError
from eatlab.llm.base import GenerationSettings, generation_config, settings_for_round
from eatlab.llm.factory import backend_identity, build_backend, build_client
from eatlab.llm.hf import HFBackend
from eatlab.llm.openai_http import OpenAIBackend
from eatlab.llm.tiny import TINY_VERSION
from eatlab.llm.vllm_backend import VLLMBackend
from eatlab.paths import CONF_DIR

TINY_DIR = Path(tempfile.gettempdir()) / "eatlab-tests" / f"tiny-qwen2-v{TINY_VERSION}"


def cfg_for(*overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        return compose("config", overrides=list(overrides))


def test_model_configs():
    sizes = ["0.5", "1.5", "3", "7", "14", "32", "72"]
    for s in sizes:
        m = yaml.safe_load((CONF_DIR / "model" / f"qwen2.5-{s}b.yaml").read_text())
        assert m["id"] == f"Qwen/Qwen2.5-{s.upper()}B-Instruct" and m["path"] is None and not m["smoke"]
    tiny = cfg_for("model=tiny").model
    assert tiny.smoke and tiny.id == "eatlab/tiny-qwen2-smoke" and tiny.path is None
    assert tiny.smoke_path.endswith("models/tiny-qwen2")  # built there when model.path is null


def test_hf_backend_from_config_builds_the_smoke_model_lazily(tmp_path):
    cfg = cfg_for("model=tiny", "backend=hf", f"model.smoke_path={TINY_DIR}", f"cache.path={tmp_path / 'c.sqlite'}",
                  "backend.batch_size=4")  # fmt: skip
    backend = build_backend(cfg)
    assert isinstance(backend, HFBackend) and not backend.loaded and backend.batch_size == 4
    assert backend_identity(cfg) == ("hf", backend.model_key)
    assert backend.model_key.startswith("eatlab/tiny-qwen2-smoke@local:")
    client = build_client(cfg)
    assert client.cache.path == tmp_path / "c.sqlite" and not client.backend_created
    (r,) = client.chat([[{"role": "user", "content": "hi"}]], GenerationSettings(max_new_tokens=2))
    assert client.backend_created and client.counters["forward"].llm_calls == 1
    again = build_client(cfg)
    again.chat([[{"role": "user", "content": "hi"}]], GenerationSettings(max_new_tokens=2))
    assert again.counters["forward"].llm_cache_hits == 1 and not again.backend_created


def test_hub_model_key_uses_id_and_revision():
    cfg = cfg_for("model=qwen2.5-7b", "model.revision=abc123")
    assert backend_identity(cfg) == ("hf", "Qwen/Qwen2.5-7B-Instruct@abc123")
    cfg = cfg_for("model=qwen2.5-7b", "backend.quantization=4bit")
    assert backend_identity(cfg)[1] == "Qwen/Qwen2.5-7B-Instruct+quant:4bit"


def test_openai_backend_from_config():
    cfg = cfg_for("model=qwen2.5-7b", "backend=openai", "backend.base_url=http://127.0.0.1:1/v1")
    backend = build_backend(cfg)
    assert isinstance(backend, OpenAIBackend)
    assert backend.model == "Qwen/Qwen2.5-7B-Instruct" and backend.concurrency == 8
    assert backend_identity(cfg) == ("openai", backend.model_key) == ("openai", "Qwen/Qwen2.5-7B-Instruct")


@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is not None, reason="vllm installed: boundary not testable"
)
def test_vllm_is_imported_only_when_used():
    cfg = cfg_for("model=qwen2.5-7b", "backend=vllm")
    backend = build_backend(cfg)  # no import yet
    assert isinstance(backend, VLLMBackend) and backend_identity(cfg) == ("vllm", "Qwen/Qwen2.5-7B-Instruct")
    with pytest.raises(ConfigError, match=r"pip install 'eatlab\[vllm\]'"):
        backend.generate([[{"role": "user", "content": "x"}]], GenerationSettings())


def test_bad_backend_and_model_settings():
    with pytest.raises(ConfigError, match="backend._target_=eatlab.llm.tgi.TGIBackend: cannot import"):
        backend_identity(cfg_for("backend._target_=eatlab.llm.tgi.TGIBackend"))
    with pytest.raises(ConfigError, match="backend._target_=eatlab.llm.cache.ResponseCache: not a subclass"):
        backend_identity(cfg_for("backend._target_=eatlab.llm.cache.ResponseCache"))
    with pytest.raises(ConfigError, match="model.path"):
        build_backend(cfg_for("model=qwen2.5-7b", "model.path=/nonexistent/weights"))


def test_generation_settings_from_config():
    greedy = settings_for_round(generation_config(cfg_for("generation=greedy", "model=qwen2.5-7b")), 200)
    assert greedy == GenerationSettings(max_new_tokens=200)
    ref = settings_for_round(
        generation_config(cfg_for("generation=reference", "seed=5", "model=qwen2.5-7b")), 200
    )
    assert ref == GenerationSettings(max_new_tokens=512, do_sample=True, temperature=0.7, top_p=0.8, top_k=20,
                                     repetition_penalty=1.05, seed=5)  # fmt: skip
    assert ref.cacheable
    with pytest.raises(ConfigError, match="max_new_tokens"):
        settings_for_round(generation_config(cfg_for("generation=greedy", "model=qwen2.5-7b")), None)
