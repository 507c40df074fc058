"""LLMClient: the only way stages talk to a model. Cache first, the model only for misses, counters per stage.

- The backend is created (and its weights loaded) on the first cache miss: a fully cached run needs no weights.
- Identical cacheable requests inside one batch are sent once.
- Failed replies (`Reply.error` set) are returned but never cached.
- Each answer is written to the cache as soon as the backend gives it (see `_generate_and_store`): a run killed
  at any point keeps every answer it had received, and re-running the same command asks only for the rest.
- Counters per stage, for metrics.json: `llm_calls` (requests sent to a model, i.e. conversations generated, not
  batches), `llm_cache_hits`, `llm_errors`, `prompt_tokens` and `completion_tokens` (of the requests sent to the
  model; cached answers cost nothing and are not counted), `seconds` (wall time inside the backend, including the
  lazy weight load).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

from eatlab.errors import ConfigError
from eatlab.llm.base import Conversation, GenerationSettings, LLMBackend, Reply, batch_shape
from eatlab.llm.cache import ResponseCache, cache_key
from eatlab.utils.progress import progress_logger
from eatlab.utils.signals import check as stop_if_signalled

BackendFactory = Callable[[], LLMBackend]
log = logging.getLogger(__name__)


@dataclass
class StageCounters:
    llm_calls: int = 0
    llm_cache_hits: int = 0
    llm_errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def add(self, other: StageCounters) -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)


class LLMClient:
    """Answers conversations through the response cache and a lazily created backend.

    `backend` is an LLMBackend or a zero-argument factory returning one; with a factory, `kind` and `model_key`
    (the cache identity of the weights) must be given, since the cache is consulted before any backend exists.
    """

    def __init__(
        self,
        backend: LLMBackend | BackendFactory,
        cache: ResponseCache | None = None,
        *,
        kind: str | None = None,
        model_key: str | None = None,
        owns_backend: bool = True,
    ):
        self.owns_backend = owns_backend  # False: the backend outlives the client (shared by a sweep's jobs)
        if isinstance(backend, LLMBackend):
            self._backend: LLMBackend | None = backend
            self._factory: BackendFactory | None = None
            kind = kind or backend.kind
            model_key = model_key or backend.model_key
        elif callable(backend):
            self._backend, self._factory = None, backend
            if not kind or not model_key:
                raise ConfigError("LLMClient: a backend factory needs kind= and model_key= for the cache")
        else:
            raise ConfigError(
                f"LLMClient: backend must be an LLMBackend or a factory, got {type(backend).__name__}"
            )
        self.kind = str(kind)
        self.model_key = str(model_key)
        self.cache = cache if cache is not None else ResponseCache(mode="off")
        self.counters: dict[str, StageCounters] = {}

    @property
    def backend_created(self) -> bool:
        return self._backend is not None

    @property
    def backend(self) -> LLMBackend:
        """The backend, created on first use."""
        if self._backend is None:
            self._backend = self._factory()  # type: ignore[misc]
        return self._backend

    def key(self, conversation: Conversation, settings: GenerationSettings) -> str:
        return cache_key(self.kind, self.model_key, conversation, settings)

    # -- one request set ------------------------------------------------------------------------------------
    def chat(
        self,
        conversations: Sequence[Conversation],
        settings: GenerationSettings | Sequence[GenerationSettings],
        stage: str = "forward",
    ) -> list[Reply]:
        """One reply per conversation, in order: cached answers where present, the model for the rest.

        `settings` is one GenerationSettings for all, or one per conversation (each keys its own cache entry). The
        misses go to the backend in one call per batch shape (`batch_shape`: settings equal but for the
        constraint's text) when it has `row_constraints`, else in one call per distinct settings."""
        counters = self.counters.setdefault(stage, StageCounters())
        n = len(conversations)
        if n == 0:
            return []
        for conv in conversations:
            if not conv or conv[-1].get("role") != "user":
                raise ConfigError("LLMClient.chat: every conversation must end with a user message")
        rows = [settings] * n if isinstance(settings, GenerationSettings) else list(settings)
        if len(rows) != n:
            raise ConfigError(f"LLMClient.chat: {len(rows)} settings for {n} conversations")
        keys = [self.key(c, s) if s.cacheable else None for c, s in zip(conversations, rows)]
        wanted = [k for k in keys if k is not None]
        hits = self.cache.get_many(wanted) if wanted and self.cache.enabled else {}
        replies: list[Reply | None] = [hits.get(k) if k is not None else None for k in keys]
        counters.llm_cache_hits += sum(r is not None for r in replies)

        # misses, deduplicated by key (uncacheable requests are all distinct)
        todo: dict[object, list[int]] = {}
        for i, r in enumerate(replies):
            if r is None:
                todo.setdefault(keys[i] if keys[i] is not None else ("uncached", i), []).append(i)
        if not todo:
            return replies  # type: ignore[return-value]
        backend = self.backend
        calls: dict[object, list[list[int]]] = {}  # one backend call per group of equal settings / shapes
        for idx in todo.values():
            s = rows[idx[0]]
            calls.setdefault(batch_shape(s) if backend.row_constraints else s, []).append(idx)
        for groups in calls.values():
            first = [idx[0] for idx in groups]
            t0 = time.perf_counter()
            fresh = self._generate_and_store(
                [conversations[i] for i in first], [rows[i] for i in first], stage, self.cache.writable
            )
            counters.seconds += time.perf_counter() - t0
            counters.llm_calls += len(first)
            for idx, reply in zip(groups, fresh, strict=True):
                counters.prompt_tokens += reply.prompt_tokens
                counters.completion_tokens += reply.completion_tokens
                if reply.error is not None:
                    counters.llm_errors += 1
                for i in idx:
                    replies[i] = reply
        return replies  # type: ignore[return-value]

    def _generate_and_store(
        self, convs: list[Conversation], rows: list[GenerationSettings], stage: str, store: bool
    ) -> list[Reply]:
        """The backend's replies (`rows`: each conversation's settings, of one batch shape), each written to the
        cache as soon as it exists.

        A run killed in the middle of a request set then loses only the requests in flight: backends that stream
        replies (`streams_replies`, the HTTP backend) store each one as it arrives; backends with a `batch_size`
        (transformers) get the set in chunks of that size, longest conversations first, stored chunk by chunk;
        others (vLLM, which wants every prompt at once) get the whole set.
        """
        backend = self.backend

        def save(pairs) -> None:
            items = [
                (self.kind, self.model_key, convs[i], rows[i], r)
                for i, r in pairs
                if r.error is None and rows[i].cacheable
            ]
            if store and items:
                self.cache.put_many(items, stage=stage)

        def settings_of(idx: list[int]):
            """One settings object when the rows share it (every backend takes that), else the list."""
            sub = [rows[i] for i in idx]
            return sub[0] if all(s == sub[0] for s in sub) else sub

        n = len(convs)
        if getattr(backend, "streams_replies", False):
            stop_if_signalled()  # SIGTERM/SIGINT: no new model call (eatlab.utils.signals)
            out = backend.generate(convs, settings_of(list(range(n))), on_reply=lambda i, r: save([(i, r)]))
            if len(out) != n:
                raise RuntimeError(f"backend {self.kind} returned {len(out)} replies for {n} requests")
            return out
        chunk = int(getattr(backend, "batch_size", 0) or 0)
        if chunk <= 0 or chunk >= n:
            order, chunk = list(range(n)), n
        else:
            order = sorted(range(n), key=lambda i: -sum(len(m["content"]) for m in convs[i]))
        out: list[Reply | None] = [None] * n
        # several chunks: say how far the set is (`hf MODEL (forward): 32/100 requests answered (120 s, eta 255 s)`)
        what = " ".join(str(x) for x in (self.kind, getattr(backend, "model_id", None)) if x) + f" ({stage})"
        report = progress_logger(n, what, "requests answered", logger=log) if chunk < n else None
        for start in range(0, n, chunk):
            idx = order[start : start + chunk]
            stop_if_signalled()  # between chunks too
            got = backend.generate([convs[i] for i in idx], settings_of(idx))
            if len(got) != len(idx):
                raise RuntimeError(f"backend {self.kind} returned {len(got)} replies for {len(idx)} requests")
            for i, r in zip(idx, got):
                out[i] = r
            save(list(zip(idx, got)))
            if report is not None:
                report(start + len(idx))
        return out  # type: ignore[return-value]

    # -- reporting ------------------------------------------------------------------------------------------
    def counters_dict(self) -> dict[str, dict]:
        """{"total": {...}, "<stage>": {...}} with llm_calls, llm_cache_hits, llm_errors, tokens and seconds."""
        return counters_as_dict(self.counters)

    def close(self) -> None:
        if self._backend is not None and self.owns_backend:
            self._backend.close()
        self.cache.close()


# -- counters of several clients (one per data-parallel rank) ---------------------------------------------------
def merge_counters(parts: Iterable[Mapping[str, StageCounters]]) -> dict[str, StageCounters]:
    """Per-stage sums of several clients' `counters`, so that a run split over ranks reports its whole cost."""
    out: dict[str, StageCounters] = {}
    for counters in parts:
        for stage, c in counters.items():
            out.setdefault(stage, StageCounters()).add(c)
    return out


def counters_as_dict(counters: Mapping[str, StageCounters]) -> dict[str, dict]:
    """`LLMClient.counters_dict`'s form of per-stage counters: a "total" first, seconds rounded."""
    total = StageCounters()
    out = {}
    for stage, c in sorted(counters.items()):
        total.add(c)
        out[stage] = asdict(c)
    out = {"total": asdict(total), **out}
    for d in out.values():
        d["seconds"] = round(d["seconds"], 3)
    return out
