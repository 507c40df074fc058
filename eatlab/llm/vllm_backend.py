"""Offline vLLM backend: `vllm.LLM.chat` with prefix caching (the shared preamble of every conversation is computed
once), for GPU runs. vLLM is an optional extra (`pip install eatlab[vllm]`) imported only when this backend is
selected and first used; without it the backend fails with a ConfigError that says how to install it.

- Greedy settings become temperature 0. Sampling passes the seed per request (`SamplingParams.seed`), so a sampled
  reply does not depend on batch composition. Explicit SamplingParams replace the model's generation_config.json
  defaults (vLLM applies those only when no SamplingParams are given).
- Adapters (LoRA/QLoRA from the fine-tuning step) are served with `LoRARequest` on the base weights
  (`enable_lora=True`).
- Entropy: vLLM returns only the top-`logprobs` log-probabilities per step (`max_logprobs`, 20 by default), so the
  per-step entropy is APPROXIMATED from them (a lower bound; `entropy_approx=True`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from eatlab.errors import ConfigError
from eatlab.llm.base import Conversation, GenerationSettings, LLMBackend, ModelSpec, Reply, split_rows
from eatlab.llm.entropy import entropy_from_top_logprobs

INSTALL_HINT = (
    "backend=vllm needs vLLM on a CUDA machine: pip install 'eatlab[vllm]' (or use backend=hf / openai)"
)


def import_vllm():
    """Import vllm, or raise a ConfigError that says how to get it."""
    try:
        import vllm
        from vllm.lora.request import LoRARequest
    except ImportError as exc:
        raise ConfigError(f"{INSTALL_HINT} ({exc})") from None
    return vllm, LoRARequest


class VLLMBackend(LLMBackend):
    """vllm.LLM, created on the first `generate`."""

    kind = "vllm"
    row_constraints = True  # a list of SamplingParams, one grammar per conversation
    one_engine_per_process = True  # vLLM cannot reliably start a second engine in one process

    @classmethod
    def model_kwargs(cls, model, params: dict) -> dict:
        return {**model.weights_kwargs(), "seed": model.seed}

    def __init__(
        self,
        model_path_or_id: str | Path,
        *,
        model_id: str | None = None,
        revision: str | None = None,
        adapter_path: str | Path | None = None,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        max_lora_rank: int = 64,
        logprobs: int = 20,
        hash_weights: bool = True,
        seed: int = 0,
    ):
        self.source = str(model_path_or_id)
        local = Path(self.source).is_dir()
        self.model_id = model_id or (Path(self.source).name if local else self.source)
        self.revision = revision
        self.adapter_path = str(adapter_path) if adapter_path else None
        self.dtype = dtype
        self.gpu_memory_utilization = gpu_memory_utilization
        self.tensor_parallel_size = tensor_parallel_size
        self.max_model_len = max_model_len
        self.max_lora_rank = max_lora_rank
        self.logprobs = int(logprobs)
        self.seed = seed
        spec = ModelSpec(self.model_id, self.source, local, revision, self.adapter_path, hash_weights)
        self._model_key = self.cache_identity(spec, {"dtype": dtype})
        self._llm = None
        self._lora = None
        self.load_seconds = 0.0

    @property
    def model_key(self) -> str:
        return self._model_key

    @property
    def loaded(self) -> bool:
        return self._llm is not None

    def load(self) -> None:
        if self._llm is not None:
            return
        vllm, LoRARequest = import_vllm()
        t0 = time.perf_counter()
        kwargs = {
            "model": self.source,
            "revision": self.revision,
            "dtype": self.dtype,
            "seed": self.seed,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "tensor_parallel_size": self.tensor_parallel_size,
            "enable_prefix_caching": True,
        }
        if self.max_model_len:
            kwargs["max_model_len"] = self.max_model_len
        if self.logprobs > 20:
            kwargs["max_logprobs"] = self.logprobs
        if self.adapter_path:
            kwargs.update(enable_lora=True, max_lora_rank=self.max_lora_rank)
            self._lora = LoRARequest("eatlab-adapter", 1, self.adapter_path)
        self._llm = vllm.LLM(**kwargs)
        self.load_seconds = time.perf_counter() - t0

    def sampling_params(self, settings: GenerationSettings):
        vllm, _ = import_vllm()
        kw = {
            "n": 1,
            "max_tokens": settings.max_new_tokens,
            "repetition_penalty": settings.repetition_penalty,
            "logprobs": self.logprobs or None,
        }
        if settings.do_sample:
            kw.update(
                temperature=settings.temperature,
                top_p=settings.top_p,
                top_k=settings.top_k if settings.top_k and settings.top_k > 0 else -1,
                seed=settings.seed,
            )
        else:
            kw.update(temperature=0.0)
        if settings.substring_of is not None:  # structured outputs (xgrammar or llguidance) read the GBNF
            from eatlab.llm.grammar import substring_gbnf

            grammar = substring_gbnf(settings.substring_of)
            try:  # vLLM >= 0.10
                from vllm.sampling_params import StructuredOutputsParams

                kw["structured_outputs"] = StructuredOutputsParams(grammar=grammar)
            except ImportError:  # older releases
                from vllm.sampling_params import GuidedDecodingParams

                kw["guided_decoding"] = GuidedDecodingParams(grammar=grammar)
        return vllm.SamplingParams(**kw)

    def generate(
        self, conversations: list[Conversation], settings: GenerationSettings | Sequence[GenerationSettings]
    ) -> list[Reply]:
        if not conversations:
            return []
        self.load()
        msgs = [[{"role": m["role"], "content": m["content"]} for m in c] for c in conversations]
        if isinstance(settings, GenerationSettings):
            params = self.sampling_params(settings)
        else:  # one grammar per row (LLM.chat takes a list of SamplingParams, one per conversation)
            shared, texts = split_rows(settings, len(conversations))
            params = [self.sampling_params(replace(shared, substring_of=t)) for t in texts]
        outputs = self._llm.chat(
            msgs,
            sampling_params=params,
            use_tqdm=False,
            lora_request=self._lora,
            add_generation_prompt=True,
        )
        replies = []
        for out in outputs:
            comp = out.outputs[0]
            entropies = None
            if comp.logprobs:
                entropies = [
                    entropy_from_top_logprobs(lp.logprob for lp in step.values()) for step in comp.logprobs
                ]
            replies.append(
                Reply(
                    text=comp.text,
                    prompt_tokens=len(out.prompt_token_ids or []),
                    completion_tokens=len(comp.token_ids),
                    entropies=entropies,
                    entropy_approx=entropies is not None,
                    finish_reason=comp.finish_reason,
                )
            )
        return replies

    def close(self) -> None:
        self._llm = None
