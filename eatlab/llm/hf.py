"""transformers backend: the model's own chat template, batched generation with prefix reuse, exact per-step
entropies, and candidate spans ranked by log-probability. One job per module:

- loading the tokenizer and weights: `eatlab.llm.hf_load` (lazily, on the first `generate`: a run answered
  entirely from the cache never loads them);
- decoding, with and without prefix reuse, one path: `eatlab.llm.hf_decode` (batched prefill from the prefix
  store, transformers' logits processors, seeded per-row sampling, finished rows leaving the batch);
- `alignment.select=rank` (a constrained call with `substring_select="rank"`), which scores instead of decoding:
  `eatlab.llm.hf_score`.

This class batches: prompts are sorted by length (longest first) and cut into batches of at most `batch_size`
rows whose padded size (rows x (longest prompt + max_new_tokens)) stays within `token_budget`: little padding,
bounded memory. Replies come back in the caller's order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from eatlab.errors import ConfigError
from eatlab.llm.base import Conversation, GenerationSettings, LLMBackend, ModelSpec, Reply, split_rows
from eatlab.llm.hf_load import LoadedModel, load_model, tune_cpu_malloc
from eatlab.llm.prefix_cache import PrefixKVStore
from eatlab.utils.progress import progress_logger

log = logging.getLogger(__name__)

__all__ = ["HFBackend", "tune_cpu_malloc"]


class HFBackend(LLMBackend):
    """A transformers causal LM (hub id or local folder), optionally with a peft adapter."""

    kind = "hf"
    row_constraints = True  # SubstringProcessor keeps one automaton per row
    rank_scoring = True  # alignment.select=rank: candidate spans scored by log-probability (`_rank`)

    @classmethod
    def model_kwargs(cls, model, params: dict) -> dict:
        return model.weights_kwargs()

    def __init__(
        self,
        model_path_or_id: str | Path,
        *,
        model_id: str | None = None,
        revision: str | None = None,
        adapter_path: str | Path | None = None,
        batch_size: int = 16,
        token_budget: int = 65536,
        dtype: str = "auto",
        device: str = "auto",
        compute_entropy: bool = True,
        quantization: str | None = None,
        hash_weights: bool = True,
        trust_remote_code: bool = False,
        cpu_malloc_tuning: bool = True,
        prefix_reuse: bool = True,
        prefix_cache_mb: int = 2048,
        batch_invariant: bool = True,
    ):
        self.source = str(model_path_or_id)
        self.local = Path(self.source).is_dir()
        # without an explicit id, a local folder is named by its base name (never its absolute path)
        self.model_id = model_id or (Path(self.source).name if self.local else self.source)
        self.revision = revision
        self.adapter_path = str(adapter_path) if adapter_path else None
        if self.adapter_path and not Path(self.adapter_path).exists():
            raise ConfigError(f"finetune.adapter_path={self.adapter_path}: no such folder")
        if batch_size < 1 or token_budget < 1:
            raise ConfigError("backend.batch_size / backend.token_budget: must be >= 1")
        self.batch_size = int(batch_size)
        self.token_budget = int(token_budget)
        self.dtype = dtype
        self.device = device
        self.compute_entropy = compute_entropy
        self.quantization = quantization
        self.trust_remote_code = trust_remote_code
        self.cpu_malloc_tuning = cpu_malloc_tuning
        self.prefix_reuse = bool(prefix_reuse)
        self.prefix_cache = PrefixKVStore(int(prefix_cache_mb) << 20)
        # half precision only: fp32 replies are already independent of the batch (docs/llm.md)
        self.batch_invariant = bool(batch_invariant)
        # prompt tokens actually run through the model (the rest were reused), and the padding run with them
        self.prompt_tokens_computed = self.padding_tokens_computed = 0
        # where the time goes (eatlab-bench): "constrain" is the substring constraint's part of "decode"; "rank":
        # scoring candidate spans (alignment.select=rank); decode_steps: forwards after the prefill, and the rows
        # they ran (finished rows leave the batch)
        self.seconds = {"prefill": 0.0, "decode": 0.0, "constrain": 0.0, "rank": 0.0}
        self.decode_steps = self.decode_row_steps = 0
        spec = ModelSpec(self.model_id, self.source, self.local, revision, self.adapter_path, hash_weights)
        self._model_key = self.cache_identity(
            spec,
            {
                "quantization": quantization,
                "dtype": dtype,
                "device": device,
                "batch_invariant": batch_invariant,
            },
        )
        self._lm: LoadedModel | None = None
        self._model = None
        self._tok = None
        self._eos: set[int] = set()
        self._eot: list[int] | None = None  # the chat template's end-of-turn tokens (rank scores them)
        self._pad = 0
        self.load_seconds = 0.0

    # -- identity and loading -------------------------------------------------------------------------------
    @property
    def model_key(self) -> str:
        return self._model_key

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _resolve_device_dtype(self):
        import torch

        from eatlab.llm.identity import resolve_device, resolve_dtype

        device = resolve_device(self.device)
        return device, getattr(torch, resolve_dtype(self.dtype, device))

    def load(self) -> None:
        """Load tokenizer and weights (called by the first `generate`)."""
        if self._model is not None:
            return
        t0 = time.perf_counter()
        device, dtype = self._resolve_device_dtype()
        lm = load_model(
            self.source,
            device=device,
            dtype=dtype,
            revision=self.revision,
            trust_remote_code=self.trust_remote_code,
            quantization=self.quantization,
            adapter_path=self.adapter_path,
            cpu_malloc_tuning=self.cpu_malloc_tuning,
            batch_invariant=self.batch_invariant and str(dtype) != "torch.float32",
        )
        self._lm = lm
        self._tok, self._model, self._eos, self._pad = lm.tokenizer, lm.model, set(lm.eos), lm.pad
        self.load_seconds = time.perf_counter() - t0
        log.info("loaded %s (%s) in %.1fs", self.source, self.model_key, self.load_seconds)

    # -- generation ---------------------------------------------------------------------------------------------
    def encode(self, conversation: Conversation) -> list[int]:
        """Token ids of the conversation rendered with the model's chat template, ready for the reply."""
        self.load()
        text = self._tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        return list(self._tok(text, add_special_tokens=False)["input_ids"])

    def batches(self, lengths: list[int], max_new_tokens: int) -> list[list[int]]:
        """Indices grouped into batches: longest first, <= batch_size rows, padded size <= token_budget."""
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
        out: list[list[int]] = []
        cur: list[int] = []
        for i in order:
            width = (lengths[cur[0]] if cur else lengths[i]) + max_new_tokens
            if cur and (len(cur) >= self.batch_size or (len(cur) + 1) * width > self.token_budget):
                out.append(cur)
                cur = []
            cur.append(i)
        if cur:
            out.append(cur)
        return out

    def generate(
        self, conversations: list[Conversation], settings: GenerationSettings | Sequence[GenerationSettings]
    ) -> list[Reply]:
        from eatlab.llm.hf_decode import decode

        if not conversations:
            return []
        self.load()
        shared, texts = split_rows(settings, len(conversations))
        if shared.substring_select == "rank" and any(t is not None for t in texts):
            return self._rank(conversations, shared, texts)
        prompts = [self.encode(c) for c in conversations]
        replies: list[Reply | None] = [None] * len(conversations)
        store = self.prefix_cache if self.prefix_reuse else None
        report = progress_logger(
            len(prompts), f"{self.kind} {self.model_id}", "conversations answered", logger=log
        )
        done = 0
        for batch in self.batches([len(p) for p in prompts], shared.max_new_tokens):
            outs, stats = decode(
                self._lm,
                [prompts[i] for i in batch],
                [conversations[i] for i in batch],
                shared,
                [texts[i] for i in batch],
                store,
                self.compute_entropy,
            )
            self._account(stats)
            for i, r in zip(batch, outs, strict=True):
                replies[i] = r
            done += len(batch)
            if len(batch) < len(prompts):  # several batches: say how far (one batch says nothing new)
                report(done)
        for r, text in zip(replies, texts, strict=True):
            if text is not None:  # a constrained answer cut at its token budget may end inside a character
                r.text = r.text.rstrip("\ufffd")
        return replies  # type: ignore[return-value]

    def _account(self, stats, work: str = "decode") -> None:
        """Add one batch's time and prompt tokens to the backend's totals (eatlab-bench reads them)."""
        self.seconds["prefill"] += stats.prefill_s
        self.seconds[work] += stats.decode_s
        self.seconds["constrain"] += stats.constrain_s
        self.decode_steps += stats.steps
        self.decode_row_steps += stats.row_steps
        self.prompt_tokens_computed += stats.computed
        self.padding_tokens_computed += stats.padding

    # -- alignment.select=rank ----------------------------------------------------------------------------------
    def end_of_turn(self) -> list[int]:
        """The chat template's end-of-turn tokens after an answer (`hf_score.end_of_turn`), computed once."""
        from eatlab.llm.hf_score import end_of_turn

        self.load()
        if self._eot is None:
            self._eot = end_of_turn(self._lm)
        return list(self._eot)

    def score_continuations(
        self, prompt: list[int], continuations: list[list[int]], top_first: int | None = None
    ) -> list[float]:
        """Mean log-probability of each continuation after `prompt` (`hf_score.score_continuations`)."""
        from eatlab.llm.hf_score import score_continuations

        self.load()
        store = self.prefix_cache if self.prefix_reuse else None
        scores, stats = score_continuations(
            self._lm, store, prompt, continuations, self.token_budget, top_first
        )
        self._account(stats, "rank")
        return scores

    def _rank(
        self, conversations: list[Conversation], settings: GenerationSettings, texts: list[str]
    ) -> list[Reply]:
        from eatlab.llm.hf_score import rank

        store = self.prefix_cache if self.prefix_reuse else None
        prompts = [self.encode(c) for c in conversations]
        replies, spent = rank(
            self._lm, store, prompts, settings, texts, self.token_budget, self.end_of_turn()
        )
        for stats in spent:
            self._account(stats, "rank")
        return replies

    def close(self) -> None:
        self._model = None
        self._tok = None
        self._lm = None
        self.prefix_cache.clear()
