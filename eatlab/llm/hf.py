"""transformers backend: the model's own chat template, left-padded batched generation, exact per-step entropies.

Why it is built this way:
- Prompts are sorted by length (longest first) and cut into batches of at most `batch_size` rows whose padded
  size (rows x (longest prompt + max_new_tokens)) stays within `token_budget`: little padding, bounded memory.
  Replies come back in the caller's order.
- Left padding with an attention mask; `generate` derives position ids from the mask, so a padded row sees the
  same positions as when it runs alone. With the fp32 tiny model, batched and one-at-a-time greedy replies are
  identical (tested).
- Decoding knobs are applied by eatlab's own logits-processor chain, not taken from the model's
  `generation_config.json` (Qwen2.5 ships sampling defaults there): a greedy GenerationSettings is greedy.
- Entropy: at every generated step the exact entropy (nats) of the model's raw next-token distribution (softmax
  of the logits, before repetition penalty, temperature, top-k or top-p) is recorded.
- Sampling with a seed draws each row from its own torch.Generator seeded from (seed, conversation), so a sampled
  reply depends on its conversation and seed only, not on which other conversations share its batch: that is what
  makes seeded sampled answers cacheable.
- Weights load lazily on the first `generate`: a run answered entirely from the cache never loads them.
- `alignment.select=rank` (a constrained call with `substring_select="rank"`) does not decode: the prompt's
  key/values are computed once (from the prefix store where it has them), then every candidate span of the
  sentence (`eatlab.llm.constraint.span_candidates`) plus the chat template's end-of-turn token is scored as a
  continuation of it, in right-padded batches over copies of those key/values; the best mean log-probability
  wins (`score_continuations`, tested equal to a plain full forward).
- On CPU (Linux/glibc), `cpu_malloc_tuning` keeps freed memory in the process heap instead of returning it to the
  system: batched decoding allocates several batch x vocabulary buffers (40 MB at 64 rows) per step, and fresh
  pages from the system cost more than the arithmetic (about 2x on the batched benchmark). The price: the
  process keeps its peak memory.
"""

from __future__ import annotations

import ctypes
import hashlib
import inspect
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from eatlab.errors import ConfigError
from eatlab.llm.base import Conversation, GenerationSettings, LLMBackend, Reply, split_rows
from eatlab.llm.identity import make_model_key
from eatlab.llm.prefix_cache import PrefixKVStore
from eatlab.utils.io import canonical_json

log = logging.getLogger(__name__)

# alignment.select=rank: the logits of one batch of candidates (rows x tokens x vocabulary) stay within this
RANK_LOGITS_MB = 256

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}  # fmt: skip


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


def _row_seed(seed: int, conversation: Conversation) -> int:
    msgs = [{"role": m["role"], "content": m["content"]} for m in conversation]  # what the cache key sees
    digest = hashlib.sha256(canonical_json([seed, msgs]).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class HFBackend(LLMBackend):
    """A transformers causal LM (hub id or local folder), optionally with a peft adapter."""

    kind = "hf"
    row_constraints = True  # SubstringProcessor keeps one automaton per row

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
        self.prompt_tokens_computed = 0  # prompt tokens actually run through the model (the rest were reused)
        # where the time goes (eatlab-bench); "rank": scoring candidate spans (alignment.select=rank)
        self.seconds = {"prefill": 0.0, "decode": 0.0, "generate": 0.0, "rank": 0.0}
        self._model_key = make_model_key(
            self.model_id,
            revision,
            self.source if self.local else None,
            self.adapter_path,
            hash_weights=hash_weights,
            quantization=quantization,
        )
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

        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        name = self.dtype
        if name == "auto":
            if device.startswith("cuda"):
                name = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
            else:
                name = "float32"  # half precision on CPU is slow and inexact
        if name not in _DTYPES:
            raise ConfigError(f"backend.dtype={self.dtype}: expected auto, float32, bfloat16 or float16")
        return device, getattr(torch, _DTYPES[name])

    def load(self) -> None:
        """Load tokenizer and weights (called by the first `generate`)."""
        if self._model is not None:
            return
        t0 = time.perf_counter()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device, dtype = self._resolve_device_dtype()
        if device == "cpu" and self.cpu_malloc_tuning:
            tune_cpu_malloc()
        kwargs: dict = {"revision": self.revision, "trust_remote_code": self.trust_remote_code}
        try:
            tok = AutoTokenizer.from_pretrained(self.source, **kwargs)
            mkw = dict(kwargs, dtype=dtype)
            if self.quantization:
                from transformers import BitsAndBytesConfig

                if self.quantization not in ("4bit", "8bit"):
                    raise ConfigError(
                        f"backend.quantization={self.quantization}: expected null, 4bit or 8bit"
                    )
                mkw["quantization_config"] = BitsAndBytesConfig(
                    load_in_4bit=self.quantization == "4bit",
                    load_in_8bit=self.quantization == "8bit",
                    bnb_4bit_compute_dtype=dtype,
                    bnb_4bit_quant_type="nf4",
                )
                mkw["device_map"] = "auto"
            elif device == "cuda" and torch.cuda.device_count() > 1:
                mkw["device_map"] = "auto"
            model = AutoModelForCausalLM.from_pretrained(self.source, **mkw)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"model: cannot load {self.source!r} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                "offline, point model.path at a local folder"
            ) from None
        if "device_map" not in mkw:
            model = model.to(device)
        if self.adapter_path:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, self.adapter_path)
        model.eval()
        if not tok.chat_template:
            raise ConfigError(f"model: {self.source!r} has no chat template (an -Instruct model is needed)")
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tok.eos_token_id is not None:
            eos.append(tok.eos_token_id)
        if not eos:
            raise ConfigError(f"model: {self.source!r} defines no end-of-sequence token")
        self._eos = set(eos)
        self._pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
        self._tok, self._model = tok, model
        # transformers 5 names the forward's cache argument `cache`; 4.x calls it `past_key_values`
        core = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the model
        params = inspect.signature(type(core).forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
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
        if not conversations:
            return []
        self.load()
        shared, texts = split_rows(settings, len(conversations))
        if shared.substring_select == "rank" and any(t is not None for t in texts):
            return self._rank(conversations, shared, texts)
        prompts = [self.encode(c) for c in conversations]
        replies: list[Reply | None] = [None] * len(conversations)
        run = self._generate_reusing if self.prefix_reuse else self._generate_batch
        for batch in self.batches([len(p) for p in prompts], shared.max_new_tokens):
            outs = run(
                [prompts[i] for i in batch],
                [conversations[i] for i in batch],
                shared,
                [texts[i] for i in batch],
            )
            for i, r in zip(batch, outs, strict=True):
                replies[i] = r
        for r, text in zip(replies, texts):
            if text is not None:  # a constrained answer cut at its token budget may end inside a character
                r.text = r.text.rstrip("\ufffd")
        return replies  # type: ignore[return-value]

    def _processors(
        self,
        settings: GenerationSettings,
        conversations: list[Conversation],
        device,
        prompt_width: int,
        texts: list[str | None],
    ):
        import torch
        from transformers import (
            LogitsProcessorList,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        procs = LogitsProcessorList()
        recorder = _EntropyRecorder() if self.compute_entropy else None
        if recorder is not None:
            procs.append(recorder)  # first: sees the raw logits
        if settings.repetition_penalty != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(settings.repetition_penalty))
        if any(t is not None for t in texts):  # before any sampling warper: they see only allowed tokens
            from eatlab.llm.constraint import SubstringProcessor

            procs.append(SubstringProcessor(self._tok, texts, sorted(self._eos), prompt_width))
        if settings.do_sample:
            if settings.temperature <= 0:
                raise ConfigError("generation.temperature: must be > 0 when sampling")
            if settings.temperature != 1.0:
                procs.append(TemperatureLogitsWarper(settings.temperature))
            if settings.top_k and settings.top_k > 0:
                procs.append(TopKLogitsWarper(settings.top_k))
            if settings.top_p < 1.0:
                procs.append(TopPLogitsWarper(settings.top_p))
            gens = []
            for conv in conversations:
                g = torch.Generator(device=device)
                if settings.seed is None:
                    g.seed()
                else:
                    g.manual_seed(_row_seed(settings.seed, conv))
                gens.append(g)
            procs.append(_SeededSampler(gens))
        return procs, recorder

    def _generate_batch(
        self, prompts: list[list[int]], conversations: list[Conversation], settings, texts: list[str | None]
    ) -> list[Reply]:
        import torch
        from transformers import GenerationConfig

        model = self._model
        device = next(model.parameters()).device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[r, width - len(p) :] = 1
        procs, recorder = self._processors(settings, conversations, device, width, texts)
        # Every knob explicit: nothing is inherited from the model's generation_config.json.
        gc = GenerationConfig(
            max_new_tokens=settings.max_new_tokens,
            do_sample=False,  # sampling, when asked, is done by _SeededSampler
            num_beams=1,
            temperature=1.0,  # the global defaults (inert when greedy); set so the model's own cannot leak in
            top_p=1.0,
            top_k=50,
            typical_p=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            min_length=0,
            eos_token_id=sorted(self._eos),
            pad_token_id=self._pad,
        )
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                generation_config=gc,
                logits_processor=procs,
            )
        self.prompt_tokens_computed += len(prompts) * width
        self.seconds["generate"] += time.perf_counter() - t0
        return self._replies(prompts, out[:, width:].cpu().tolist(), recorder)

    def _generate_reusing(
        self, prompts: list[list[int]], conversations: list[Conversation], settings, texts: list[str | None]
    ) -> list[Reply]:
        """Greedy/seeded decoding like `generate`, but each prompt starts from the key/value states of its
        longest already-computed prefix (`prefix_cache`): rows are prefilled one by one over their new tokens
        only, then decoded together in one left-padded batch; prompt + answer are stored for the next round."""
        import torch

        model = self._model
        device = next(model.parameters()).device
        rows, first_logits = [], []
        t0 = time.perf_counter()
        with torch.inference_mode():
            for p in prompts:
                kv, logits = self._prefill(p)
                rows.append(kv)
                first_logits.append(logits)
            t1 = time.perf_counter()
            self.seconds["prefill"] += t1 - t0
            width = max(len(p) for p in prompts)
            batch = _cache_of(_left_padded(rows, width))
            ids = torch.full((len(prompts), width), self._pad, dtype=torch.long, device=device)
            mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
            for r, p in enumerate(prompts):
                ids[r, width - len(p) :] = torch.tensor(p, dtype=torch.long)
                mask[r, width - len(p) :] = 1
            positions = torch.tensor([len(p) for p in prompts], device=device)
            procs, recorder = self._processors(settings, conversations, device, width, texts)
            eos = torch.tensor(sorted(self._eos), device=device)
            unfinished = torch.ones(len(prompts), dtype=torch.bool, device=device)
            scores = torch.stack(first_logits)
            steps = []
            for step in range(settings.max_new_tokens):
                scores = procs(ids, scores)
                tok = torch.where(
                    unfinished, scores.argmax(-1), torch.full_like(unfinished, self._pad, dtype=torch.long)
                )
                steps.append(tok)
                ids = torch.cat([ids, tok[:, None]], dim=1)
                unfinished &= ~torch.isin(tok, eos)
                if not unfinished.any() or step == settings.max_new_tokens - 1:
                    break
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                out = model(
                    input_ids=tok[:, None],
                    attention_mask=mask,
                    position_ids=positions[:, None],
                    use_cache=True,
                    **{self._cache_kw: batch},
                )
                positions = positions + 1
                scores = out.logits[:, -1].float()
            gen = torch.stack(steps, dim=1).cpu().tolist()
            self.seconds["decode"] += time.perf_counter() - t1
            replies = self._replies(prompts, gen, recorder)
            done = _layers_of(batch)
            for r, (p, rep) in enumerate(zip(prompts, replies, strict=True)):
                # tokens whose states exist: the last chosen token of the longest row is never fed back
                fed = min(rep.completion_tokens, done[0][0].shape[2] - width)
                if fed > 0:
                    start = width - len(p)
                    kv = [
                        (k[r : r + 1, :, start : width + fed], v[r : r + 1, :, start : width + fed])
                        for k, v in done
                    ]
                    self.prefix_cache.store(p + gen[r][:fed], kv)
        return replies

    def _prefill(self, p: list[int]) -> tuple[list[tuple], object]:
        """Per-layer key/value states of prompt `p` (batch 1) and the logits after its last token (float), from its
        longest stored prefix on (when `prefix_reuse`), stored for the next prompt. Call in inference mode."""
        import torch

        device = next(self._model.parameters()).device
        n, past = self.prefix_cache.lookup(p) if self.prefix_reuse else (0, None)
        cache = _cache_of(past)
        out = self._model(
            input_ids=torch.tensor([p[n:]], dtype=torch.long, device=device),
            position_ids=torch.arange(n, len(p), device=device)[None],
            use_cache=True,
            **{self._cache_kw: cache},
        )
        kv = _layers_of(cache)  # filled in place
        if self.prefix_reuse:
            self.prefix_cache.store(p, kv)
        self.prefix_cache.hits_tokens += n
        self.prompt_tokens_computed += len(p) - n
        return kv, out.logits[0, -1].float()

    # -- alignment.select=rank ----------------------------------------------------------------------------------
    def end_of_turn(self) -> list[int]:
        """The tokens the chat template writes after an assistant answer, up to its first end-of-sequence token
        (Qwen: `<|im_end|>`): what a generated answer ends with, so a ranked one is scored with it."""
        self.load()
        if self._eot is None:
            mark = "EATLAB-ANSWER-MARK"
            conv = [{"role": "user", "content": "x"}, {"role": "assistant", "content": mark}]
            text = self._tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=False)
            tail = text[text.rindex(mark) + len(mark) :] if mark in text else ""
            ids = list(self._tok(tail, add_special_tokens=False)["input_ids"])
            stop = next((k for k, t in enumerate(ids) if t in self._eos), None)
            # a template that writes no end-of-sequence token after an answer: the one generation stops at
            first = self._tok.eos_token_id if self._tok.eos_token_id in self._eos else min(self._eos)
            self._eot = ids[: stop + 1] if stop is not None else [first]
        return list(self._eot)

    def score_continuations(
        self, prompt: list[int], continuations: list[list[int]], top_first: int | None = None
    ) -> list[float]:
        """Mean log-probability of each continuation's tokens (each non-empty) after `prompt`, in order.

        `top_first`: only continuations whose first token is among the `top_first` likeliest of their first tokens
        are scored in full (the others get -inf): the first token's probability is known from the prompt alone,
        and on a real model a span that starts unlikely rarely wins, while scoring every candidate of a long
        zh/ja sentence costs a forward over thousands of tokens.

        The prompt's key/values are computed once (`_prefill`, reusing the prefix store). A continuation's tokens
        but its last are fed; one fed row serves every continuation whose fed tokens are a prefix of it
        (`_shared_rows`: the candidate spans that start at the same word share their tokens), and its last token
        is read off the row's logits there. The rows, sorted by length, go in right-padded batches as
        continuations of copies of the prompt's key/values, one forward per batch. A batch holds at most
        token_budget tokens of context (rows x (prompt + longest row)) and RANK_LOGITS_MB of logits.
        """
        import torch

        self.load()
        model = self._model
        device = next(model.parameters()).device
        n = len(prompt)
        t0 = time.perf_counter()
        with torch.inference_mode():
            kv, first = self._prefill(prompt)
            t1 = time.perf_counter()
            self.seconds["prefill"] += t1 - t0
            first = torch.log_softmax(first, dim=-1)
            vocab = first.shape[-1]
            heads = torch.tensor([seq[0] for seq in continuations], dtype=torch.long, device=first.device)
            out = first[heads].cpu().tolist()  # the first tokens: from the prompt's last logits
            keep = list(range(len(continuations)))
            if top_first is not None:
                lp = {seq[0]: out[i] for i, seq in enumerate(continuations)}
                firsts = sorted(lp, key=lambda t: (-lp[t], t))
                chosen = set(firsts[: int(top_first)])
                keep = [i for i, seq in enumerate(continuations) if seq[0] in chosen]
                for i, seq in enumerate(continuations):
                    if seq[0] not in chosen:
                        out[i] = float("-inf")
            rows, kept_row_of = _shared_rows([continuations[i] for i in keep])
            row_of: list[int | None] = [None] * len(continuations)
            for i, r in zip(keep, kept_row_of):
                row_of[i] = r
            served: dict[int, list[int]] = {}
            for i, r in enumerate(row_of):
                if r is not None:
                    served.setdefault(r, []).append(i)
            order = sorted(served, key=lambda r: (len(rows[r]), r))
            k = 0
            while k < len(order):
                size, width = 1, len(rows[order[k]])  # rows of a batch; width grows along `order`
                while k + size < len(order):
                    w = len(rows[order[k + size]])
                    fits = (size + 1) * (n + w) <= self.token_budget
                    if not fits or (size + 1) * w * vocab * 4 > RANK_LOGITS_MB << 20:
                        break
                    size, width = size + 1, w
                chunk = order[k : k + size]
                k += size
                ids = torch.full((size, width), self._pad, dtype=torch.long)
                fed = torch.zeros((size, width), dtype=torch.long)
                for b, r in enumerate(chunk):
                    ids[b, : len(rows[r])] = torch.tensor(rows[r], dtype=torch.long)
                    fed[b, : len(rows[r])] = 1
                ids, fed = ids.to(device), fed.to(device)
                cache = _cache_of(
                    [(kk.expand(size, -1, -1, -1), vv.expand(size, -1, -1, -1)) for kk, vv in kv]
                )
                logits = model(
                    input_ids=ids,
                    attention_mask=torch.cat([torch.ones_like(ids[:, :1]).expand(size, n), fed], 1),
                    position_ids=torch.arange(n, n + width, device=device)[None].expand(size, -1),
                    use_cache=True,
                    **{self._cache_kw: cache},
                ).logits
                lse = torch.logsumexp(logits.float(), dim=-1)  # [batch, width]
                # cum[b, j]: log-probability of the row's tokens 1..j, each given those before it
                nxt = logits[:, :-1].gather(-1, ids[:, 1:, None])[..., 0].float() - lse[:, :-1]
                cum = torch.cat([torch.zeros_like(lse[:, :1]), nxt.cumsum(-1)], 1)
                b_idx, pos, last = [], [], []
                for b, r in enumerate(chunk):
                    for i in served[r]:
                        b_idx.append(b)
                        # where the continuation's last token is predicted
                        pos.append(len(continuations[i]) - 2)
                        last.append(continuations[i][-1])
                b_t = torch.tensor(b_idx, device=device)
                p_t = torch.tensor(pos, device=device)
                tail = (
                    logits[b_t, p_t, torch.tensor(last, device=device)].float()
                    - lse[b_t, p_t]
                    + cum[b_t, p_t]
                )
                for i, x in zip((i for r in chunk for i in served[r]), tail.cpu().tolist(), strict=True):
                    out[i] += x
            self.seconds["rank"] += time.perf_counter() - t1
        return [total / len(seq) for total, seq in zip(out, continuations, strict=True)]

    def _rank(
        self, conversations: list[Conversation], settings: GenerationSettings, texts: list[str]
    ) -> list[Reply]:
        """alignment.select=rank: per conversation, the candidate span of its text (`texts`) whose tokens
        plus end-of-turn the model finds most likely (mean log-probability; ties: the earliest, then shortest)."""
        from eatlab.llm.constraint import span_candidates

        eot = self.end_of_turn()
        candidates: dict[str, tuple[list[str], list[list[int]]]] = {}
        replies = []
        for conv, text in zip(conversations, texts, strict=True):
            if text not in candidates:  # the sentence's spans and their tokens, once per sentence
                spans = span_candidates(text, settings.max_span_words, settings.max_span_chars)
                seqs = [list(self._tok(c, add_special_tokens=False)["input_ids"]) + eot for c in spans]
                candidates[text] = (spans, seqs)
            spans, seqs = candidates[text]
            prompt = self.encode(conv)
            scores = self.score_continuations(prompt, seqs, settings.rank_top_first) if seqs else []
            best = 0
            for i, sc in enumerate(scores):  # strict: the first of equal scores (span_candidates' order) wins
                if sc > scores[best]:
                    best = i
            meta = {"selected_by": "rank", "candidates": len(spans), "scored_tokens": sum(map(len, seqs))}
            if scores:
                meta["logprob"] = scores[best]
            text = spans[best] if spans else ""  # a sentence without letters or digits: empty (counted)
            replies.append(
                Reply(
                    text=text,
                    prompt_tokens=len(prompt),  # the whole prompt, as generate counts it (computed: _prefill)
                    # the chosen answer's tokens with its end-of-turn, as if generated (generate counts its
                    # stop token too); all candidates' tokens, the actual work, are meta["scored_tokens"]
                    completion_tokens=len(seqs[best]) if seqs else 0,
                    entropies=None,  # nothing was decoded: no per-step distribution to measure
                    finish_reason="stop",
                    meta=meta,
                )
            )
        return replies

    def _replies(self, prompts: list[list[int]], gen: list[list[int]], recorder) -> list[Reply]:
        """Replies from generated token ids: cut after the first end-of-sequence token."""
        import torch

        ent = torch.stack(recorder.steps, dim=1).cpu().tolist() if recorder and recorder.steps else None
        replies = []
        for r, toks in enumerate(gen):
            n = len(toks)
            stop = next((k for k, t in enumerate(toks) if t in self._eos), None)
            if stop is not None:
                n = stop + 1
            text = self._tok.decode(toks[: stop if stop is not None else n], skip_special_tokens=True)
            replies.append(
                Reply(
                    text=text,
                    prompt_tokens=len(prompts[r]),
                    completion_tokens=n,
                    entropies=[float(x) for x in ent[r][:n]] if ent is not None else None,
                    entropy_approx=False,
                    finish_reason="stop" if stop is not None else "length",
                )
            )
        return replies

    def close(self) -> None:
        self._model = None
        self._tok = None
        self.prefix_cache.clear()


def _shared_rows(continuations: list[list[int]]) -> tuple[list[list[int]], list[int | None]]:
    """The token rows to feed so that every continuation is scored: each continuation's tokens but its last are
    a prefix of one row (`row_of[i]`; None: a one-token continuation, nothing to feed). Rows are the fed token
    lists that are not a prefix of another: in lexicographic order, a list that is a prefix of others is followed
    by one of them, which serves it."""
    fed = sorted({tuple(c[:-1]) for c in continuations if len(c) > 1})
    row_index: dict[tuple, int] = {}
    rows: list[list[int]] = []
    for t in range(len(fed) - 1, -1, -1):  # the longer extension first
        seq = fed[t]
        after = fed[t + 1] if t + 1 < len(fed) else None
        if after is not None and after[: len(seq)] == seq:
            row_index[seq] = row_index[after]
        else:
            row_index[seq] = len(rows)
            rows.append(list(seq))
    return rows, [row_index[tuple(c[:-1])] if len(c) > 1 else None for c in continuations]


def _layers_of(cache) -> list[tuple]:
    """Per-layer (key, value) tensors of a transformers cache object (4.x and 5.x layouts)."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))


def _cache_of(layers: list[tuple] | None):
    """A DynamicCache holding the given per-layer tensors (empty for None)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for i, (k, v) in enumerate(layers or []):
        cache.update(k, v, i)
    return cache


def _left_padded(rows: list[list[tuple]], width: int) -> list[tuple]:
    """Stack rows of per-layer tensors [1, heads, n, dim] into [rows, heads, width, dim], left-padded with zeros
    (the attention mask hides the padding)."""
    import torch

    out = []
    for layer in range(len(rows[0])):
        ks, vs = [], []
        for kv in rows:
            k, v = kv[layer]
            pad = width - k.shape[2]
            ks.append(torch.nn.functional.pad(k, (0, 0, pad, 0)))
            vs.append(torch.nn.functional.pad(v, (0, 0, pad, 0)))
        out.append((torch.cat(ks), torch.cat(vs)))
    return out


class _EntropyRecorder:
    """Logits processor that records the exact entropy of each row's raw next-token distribution, per step."""

    def __init__(self):
        self.steps: list = []
        self.work: list = []  # scratch buffers reused at every step

    def __call__(self, input_ids, scores):
        from eatlab.llm.entropy import entropy_from_logits

        self.steps.append(entropy_from_logits(scores, self.work))
        return scores


class _SeededSampler:
    """Draws each row's next token with that row's own generator and leaves only it possible (greedy then takes it)."""

    def __init__(self, generators):
        self.generators = generators

    def __call__(self, input_ids, scores):
        import torch

        probs = torch.softmax(scores.float(), dim=-1)
        out = torch.full_like(scores, -float("inf"))
        for r, g in enumerate(self.generators):
            tok = torch.multinomial(probs[r], 1, generator=g)
            out[r, tok] = 0.0
        return out
