"""OpenAI-compatible HTTP backend: any /v1/chat/completions server (vLLM serve, llama.cpp server, Ollama, ...).

- The API key is read from the environment variable named by `api_key_env` (default OPENAI_API_KEY) when the
  backend is built; it is only ever sent as the Authorization header, never logged, stored or put in a repr.
  Local servers usually need none: without the variable no header is sent.
- Requests run in a pool of `concurrency` threads (one conversation per request, the server batches them).
- Timeouts, connection errors, HTTP 429 and 5xx, and malformed bodies (not JSON, no choices) are retried up to
  `max_retries` times with exponential backoff (`backoff_s` x 2^attempt, capped at `max_backoff_s`; a 429's
  Retry-After is honoured within that cap). A request still failing then gives Reply(error=...), which the client
  never caches. HTTP 401/403/404 end the run with a ConfigError: a wrong key, model name or URL fails every call.
- After `fail_fast_after` requests in a row have failed every attempt (the server is gone), the next requests get
  a single attempt each until one succeeds: a dead server costs seconds, not hours of backoff; the failed samples
  are recorded and a re-run of the same command retries only them.
- Replies are handed to `on_reply` as they arrive (the client stores each in the cache at once).
- Greedy settings are sent as temperature 0. `top_k` (-1 = off) and `repetition_penalty` are not OpenAI
  parameters but vLLM and llama.cpp accept them, and vLLM serve would otherwise apply the model's
  generation_config.json defaults (Qwen2.5: repetition_penalty 1.05), so they are always sent;
  `extra_sampling_params: false` (for servers that reject unknown fields) never sends them.
- Entropy: with `logprobs: true` the request asks for `top_logprobs` (at most 20 on OpenAI itself) and each
  generated step's entropy is APPROXIMATED from those top-k log-probabilities (a lower bound, see
  eatlab.llm.entropy); replies then carry `entropy_approx=True`. Without them `entropies` is None.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import httpx

from eatlab.errors import ConfigError
from eatlab.llm.base import Conversation, GenerationSettings, LLMBackend, Reply, split_rows
from eatlab.llm.entropy import entropy_from_top_logprobs

log = logging.getLogger(__name__)


class _Retryable(Exception):
    """A failure worth another attempt; `wait` is the server's requested delay (Retry-After), if any."""

    def __init__(self, message: str, wait: float | None = None):
        super().__init__(message)
        self.wait = wait


class OpenAIBackend(LLMBackend):
    """Chat completions over HTTP with bounded concurrency, timeouts and retries."""

    kind = "openai"
    streams_replies = True  # generate() accepts on_reply
    row_constraints = True  # one request per conversation: each carries its own grammar
    local_weights = False

    @classmethod
    def model_kwargs(cls, model, params: dict) -> dict:
        return {"model": params.get("model") or model.id, "model_key": cls.cache_identity(model, params)}

    @classmethod
    def cache_identity(cls, model, params: dict) -> str:
        """The served model's name (and `model.revision` when set): the server's weights are not visible."""
        name = params.get("model") or model.id
        return f"{name}@{model.revision}" if model.revision else str(name)

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        logprobs: bool = False,
        top_logprobs: int = 20,
        extra_sampling_params: bool = True,
        model_key: str | None = None,
        fail_fast_after: int = 8,
        constraint_param: str | None = None,
    ):
        if not base_url:
            raise ConfigError("backend.base_url: required for backend=openai (e.g. http://127.0.0.1:8000/v1)")
        if not model:
            raise ConfigError("backend.model: the model name the server serves is required")
        if concurrency < 1:
            raise ConfigError("backend.concurrency: must be >= 1")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.concurrency = int(concurrency)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.logprobs = bool(logprobs)
        self.top_logprobs = int(top_logprobs)
        self.extra_sampling_params = extra_sampling_params
        self._model_key = model_key or model
        self.fail_fast_after = int(fail_fast_after)
        if constraint_param not in (None, "grammar", "guided_grammar", "structured_outputs"):
            raise ConfigError(
                f"backend.constraint_param={constraint_param}: expected null, grammar (llama.cpp server), "
                "guided_grammar (older vLLM serve) or structured_outputs (vLLM serve >= 0.10)"
            )
        self.constraint_param = constraint_param
        self._warned_unconstrained = False
        self._failures_in_a_row = 0
        self._state_lock = threading.Lock()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(api_key_env) if api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(self.timeout_s),
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
        )

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIBackend(base_url={self.base_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    @property
    def model_key(self) -> str:
        return self._model_key

    # -- requests -------------------------------------------------------------------------------------------
    def payload(self, conversation: Conversation, settings: GenerationSettings) -> dict:
        body: dict = {
            "model": self.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in conversation],
            "max_tokens": settings.max_new_tokens,
            "n": 1,
            "stream": False,
        }
        if settings.do_sample:
            body["temperature"] = settings.temperature
            body["top_p"] = settings.top_p
            if settings.seed is not None:
                body["seed"] = settings.seed
            if self.extra_sampling_params:
                body["top_k"] = settings.top_k if settings.top_k and settings.top_k > 0 else -1
        else:
            body["temperature"] = 0.0
        if self.extra_sampling_params:
            # explicit even when neutral: vLLM serve otherwise applies the model's generation_config.json (1.05)
            body["repetition_penalty"] = settings.repetition_penalty
        if self.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = self.top_logprobs
        if settings.substring_of is not None and self.constraint_param:
            from eatlab.llm.grammar import substring_gbnf

            grammar = substring_gbnf(settings.substring_of)
            if self.constraint_param == "structured_outputs":  # vLLM serve >= 0.10
                body["structured_outputs"] = {"grammar": grammar}
            else:  # "grammar" (llama.cpp server), "guided_grammar" (older vLLM serve)
                body[self.constraint_param] = grammar
        return body

    def _once(self, body: dict) -> Reply:
        try:
            resp = self._client.post("/chat/completions", json=body)
        except httpx.TimeoutException as exc:
            raise _Retryable(f"timeout after {self.timeout_s}s ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise _Retryable(f"connection error ({type(exc).__name__}: {exc})") from None
        if resp.status_code in (401, 403):
            raise ConfigError(
                f"backend.api_key_env={self.api_key_env}: the server refused the request (HTTP {resp.status_code})"
            )
        if resp.status_code == 404:
            raise ConfigError(
                f"backend.base_url={self.base_url} / backend.model={self.model}: HTTP 404 ({resp.text[:200]})"
            )
        if resp.status_code == 429 or resp.status_code >= 500:
            wait = None
            with contextlib.suppress(ValueError):
                wait = float(resp.headers.get("retry-after", ""))
            raise _Retryable(f"HTTP {resp.status_code}", wait)
        if resp.status_code >= 400:
            return Reply(text="", error=f"HTTP {resp.status_code}: {resp.text[:300]}")
        try:
            data = resp.json()
            choice = data["choices"][0]
            text = choice["message"]["content"]
            if not isinstance(text, str):
                text = "" if text is None else str(text)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError) as exc:
            raise _Retryable(f"malformed response body ({type(exc).__name__})") from None
        usage = data.get("usage") or {}
        entropies = None
        content = (
            (choice.get("logprobs") or {}).get("content")
            if isinstance(choice.get("logprobs"), dict)
            else None
        )
        if self.logprobs and content:
            entropies = [
                entropy_from_top_logprobs(t.get("logprob") for t in (step.get("top_logprobs") or []))
                for step in content
            ]
        return Reply(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or (len(content) if content else 0)),
            entropies=entropies,
            entropy_approx=entropies is not None,
            finish_reason=choice.get("finish_reason"),
            meta={"server_model": data.get("model")} if data.get("model") not in (None, self.model) else {},
        )

    def request(self, conversation: Conversation, settings: GenerationSettings) -> Reply:
        """One conversation with retries; a request that keeps failing returns Reply(error=...)."""
        body = self.payload(conversation, settings)
        last = ""
        with self._state_lock:
            fail_fast = 0 < self.fail_fast_after <= self._failures_in_a_row
        retries = 0 if fail_fast else self.max_retries
        for attempt in range(retries + 1):
            try:
                reply = self._once(body)
                with self._state_lock:
                    self._failures_in_a_row = 0
                return reply
            except _Retryable as exc:
                last = str(exc)
                if attempt == retries:
                    break
                delay = min(self.backoff_s * (2**attempt), self.max_backoff_s)
                if exc.wait is not None:
                    delay = min(max(delay, exc.wait), self.max_backoff_s)
                delay *= 1.0 + 0.1 * random.random()  # de-synchronise the threads
                log.warning(
                    "%s: %s; retry %d/%d in %.2fs", self.base_url, last, attempt + 1, self.max_retries, delay
                )
                time.sleep(delay)
        with self._state_lock:
            self._failures_in_a_row += 1
        if fail_fast:
            return Reply(
                text="",
                error=f"failed (server down: {self.fail_fast_after}+ requests in a row failed): {last}",
            )
        return Reply(text="", error=f"failed after {retries + 1} attempts: {last}")

    def generate(
        self,
        conversations: list[Conversation],
        settings: GenerationSettings | Sequence[GenerationSettings],
        on_reply: Callable[[int, Reply], None] | None = None,
    ) -> list[Reply]:
        """One reply per conversation, in order; `on_reply(i, reply)` is called as each one arrives. Per-row
        settings (`row_constraints`): each request carries its own sentence's grammar."""
        if not conversations:
            return []
        shared, texts = split_rows(settings, len(conversations))
        rows = [replace(shared, substring_of=t) for t in texts]
        free = any(t is not None for t in texts) and not self.constraint_param
        if free and not self._warned_unconstrained:
            self._warned_unconstrained = True
            log.warning(
                "backend=openai: alignment.constrained needs backend.constraint_param (grammar for llama.cpp "
                "server, structured_outputs or guided_grammar for vLLM serve); decoding these answers freely "
                "(counted as unconstrained_answers)"
            )

        def one(i: int) -> Reply:
            reply = self.request(conversations[i], rows[i])
            if free and texts[i] is not None:
                reply.meta["unconstrained"] = True
            if on_reply is not None:
                on_reply(i, reply)
            return reply

        if len(conversations) == 1 or self.concurrency == 1:
            return [one(i) for i in range(len(conversations))]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(conversations))) as pool:
            return list(pool.map(one, range(len(conversations))))

    def close(self) -> None:
        self._client.close()
