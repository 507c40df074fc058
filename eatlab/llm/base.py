"""The one small interface every LLM backend implements: conversations in, replies out.

Stages never call a backend directly; they go through `eatlab.llm.client.LLMClient`, which adds the response
cache and the per-stage counters for metrics.json.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}
Conversation = list[Message]


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings of one call; all of them enter the cache key."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    # constrained decoding: the answer must be a verbatim substring of this text (eatlab.llm.constraint)
    substring_of: str | None = None
    # how the constrained answer is chosen: "generate" (decoded under the constraint) or "rank" (the candidate
    # span of at most max_span_words words / max_span_chars characters of a script without spaces that the model
    # finds most likely; hf backend only). Read only when substring_of is set.
    substring_select: str = "generate"
    max_span_words: int = 10
    max_span_chars: int = 16
    # rank: only candidates whose first token is among the rank_top_first likeliest first tokens (of the
    # candidates') are scored in full; None: all. The full score costs one forward over every candidate.
    rank_top_first: int | None = 16
    # version of the constrained answer's rules per selection mode (generate: word-boundary start/stop, a leading
    # space on the first token since 3, no run-on past the last word end and the servers' grammar the same since
    # 4; rank: its candidates): in every constrained key, so answers cached under older rules are not reused. Bump
    # when they change.
    # (unannotated class attributes: not fields, so not in asdict)
    SUBSTRING_RULE = {"generate": 4, "rank": 2}
    SELECT_MODES = ("generate", "rank")  # = eatlab.utils.schemas.SELECT_MODES (a test keeps them equal)

    def __post_init__(self):
        if self.substring_select not in self.SELECT_MODES:  # the `alignment` node's rule, said in its words
            from eatlab.utils.schemas import Alignment, check_field  # pydantic: imported only to say why

            check_field("alignment.select", Alignment, "select", self.substring_select)

    def key_dict(self) -> dict:
        """The settings that change the answer; sampling knobs are irrelevant (and dropped) when greedy, and a
        free call's key has no constraint entry (so constraints never change a free call's cache key). A
        constrained key has the rule version and the selection mode; the span limits and pruning only when ranking."""
        d = asdict(self)
        if not self.do_sample:
            for k in ("temperature", "top_p", "top_k", "seed"):
                d.pop(k)
        if self.substring_of is None:
            for k in (
                "substring_of",
                "substring_select",
                "max_span_words",
                "max_span_chars",
                "rank_top_first",
            ):
                d.pop(k)
        else:
            d["substring_rule"] = self.SUBSTRING_RULE[self.substring_select]
            if self.substring_select != "rank":
                for k in ("max_span_words", "max_span_chars", "rank_top_first"):
                    d.pop(k)
        return d

    @property
    def cacheable(self) -> bool:
        """Sampled answers are only reproducible (and so only cached) with a fixed seed."""
        return not self.do_sample or self.seed is not None


def batch_shape(settings: GenerationSettings) -> tuple[GenerationSettings, bool]:
    """What the rows of one batched call share: every setting but the constraint's text, and whether there is
    one. Rows of equal shape go in one `generate` call of a backend with `row_constraints`."""
    return replace(settings, substring_of=None), settings.substring_of is not None


def split_rows(
    settings: GenerationSettings | Sequence[GenerationSettings], n: int
) -> tuple[GenerationSettings, list[str | None]]:
    """The shared settings of a `generate` call (without a constraint text) and each row's `substring_of`.

    `settings` is one GenerationSettings for every row, or one per row differing only in `substring_of`
    (backends with `row_constraints`)."""
    if isinstance(settings, GenerationSettings):
        return replace(settings, substring_of=None), [settings.substring_of] * n
    rows = list(settings)
    if len(rows) != n:
        raise ValueError(f"{len(rows)} settings for {n} conversations")
    shapes = {batch_shape(r) for r in rows}
    if len(shapes) > 1:
        raise ValueError("per-row settings may differ only in substring_of (all rows constrained, or none)")
    return replace(rows[0], substring_of=None), [r.substring_of for r in rows]


def generation_config(cfg) -> dict:
    """The `generation` group plus the model's token cap (smoke models have one): the mapping that
    `settings_for_round` turns into each call's GenerationSettings."""
    gen = dict(cfg.generation)
    gen["max_new_tokens_cap"] = cfg.model.get("max_new_tokens_cap")
    path = cfg.model.get("path")
    # real weights (`model.path`) under a smoke group: the smoke model's cap is not theirs
    if path and cfg.model.get("smoke"):
        from eatlab.llm.tiny import is_smoke_model

        if not is_smoke_model(path):
            gen["max_new_tokens_cap"] = None
    return gen


def settings_for_round(generation, round_budget: int | None) -> GenerationSettings:
    """GenerationSettings of one call from a `generation` config mapping.

    The config's `max_new_tokens` wins over the round's budget when set; `max_new_tokens_cap` (smoke models, whose
    random answers only cost time) caps either.
    """
    budget = generation.get("max_new_tokens") or round_budget
    if not budget:
        from eatlab.errors import ConfigError

        raise ConfigError("generation.max_new_tokens: null and no per-round budget given")
    cap = generation.get("max_new_tokens_cap")
    if cap:
        budget = min(int(budget), int(cap))
    seed = generation.get("seed")
    return GenerationSettings(
        max_new_tokens=int(budget),
        do_sample=bool(generation.get("do_sample", False)),
        temperature=float(generation.get("temperature", 1.0)),
        top_p=float(generation.get("top_p", 1.0)),
        top_k=int(generation.get("top_k", 0)),
        repetition_penalty=float(generation.get("repetition_penalty", 1.0)),
        seed=int(seed) if seed is not None else None,
    )


@dataclass
class Reply:
    """One model answer with its cost and, where the backend gives them, per-step entropies (nats)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    entropies: list[float] | None = None
    entropy_approx: bool = False  # True when computed from top-k log-probabilities only
    finish_reason: str | None = None  # "stop", "length", ...
    cached: bool = False
    error: str | None = None  # set when the request failed after retries; text is then ""
    meta: dict = field(default_factory=dict)

    @property
    def mean_entropy(self) -> float | None:
        if not self.entropies:
            return None
        return sum(self.entropies) / len(self.entropies)


@dataclass(frozen=True)
class ModelSpec:
    """The run's model (`model.*`, `finetune.adapter_path`, `seed`), as every backend receives it."""

    id: str
    source: str  # hub id, or local folder
    local: bool
    revision: str | None = None
    adapter_path: str | None = None
    hash_weights: bool = True
    seed: int = 0
    smoke: bool = False  # the tiny random smoke model (its folder says so): its answers mean nothing

    def weights_kwargs(self) -> dict:
        """The keyword arguments of a backend that loads these weights itself (hf, vLLM)."""
        return {
            "model_path_or_id": self.source,
            "model_id": self.id,
            "revision": self.revision,
            "adapter_path": self.adapter_path,
            "hash_weights": self.hash_weights,
        }


class LLMBackend(abc.ABC):
    """A chat model behind one method. Implementations load weights lazily, on the first `generate`.

    Built from the `backend` config node by `hydra.utils.instantiate` (eatlab.llm.factory): the node's keys are
    constructor parameters, `model_kwargs` adds the run's model. A backend module imports its heavy libraries
    (torch, vllm) inside methods, so that `cache_identity` can name the weights without loading anything.

    What a backend can do is declared here, by class attributes that subclasses inherit (never looked up by the
    backend's name): `row_constraints`, `rank_scoring`, `local_weights`, `one_engine_per_process`.
    """

    kind: str = "abstract"  # enters the cache key: answers of different backends are never mixed
    # True: `generate` also takes one GenerationSettings per conversation, equal but for `substring_of`
    # (`split_rows`), so that constrained answers over different sentences share a batch
    row_constraints: bool = False
    # True: a constrained call with `substring_select="rank"` is answered by scoring the candidate spans with
    # the model's log-probabilities (`alignment=ranked`); only such backends accept that alignment
    rank_scoring: bool = False
    local_weights: bool = True  # False: the weights live elsewhere (a server); `model.path` is not read
    # True: a process can start only one engine (vLLM); an in-process sweep over models is refused in one line
    one_engine_per_process: bool = False

    @classmethod
    def model_kwargs(cls, model: ModelSpec, params: dict) -> dict:
        """The constructor arguments that come from the run's model (`params`: the backend node)."""
        return {"model": model}

    @classmethod
    def compute_dtype(cls, params: dict) -> str | None:
        """The precision the weights compute in (`backend.dtype`, `backend.device`; `auto` resolved as the
        backend resolves it), or None where it is not this process's choice (a server)."""
        if not cls.local_weights:
            return None
        from eatlab.llm.identity import resolve_dtype

        return resolve_dtype(params.get("dtype") or "auto", params.get("device") or "auto")

    @classmethod
    def cache_identity(cls, model: ModelSpec, params: dict) -> str:
        """The cache's name for what answers (`eatlab.llm.identity.make_model_key`): weights, revision or
        fingerprint, quantization, compute dtype, adapter. The one definition: the built backend's `model_key`
        returns it too, and the client keys every answer with it."""
        from eatlab.llm.identity import make_model_key

        return make_model_key(
            model.id,
            model.revision,
            model.source if model.local else None,
            model.adapter_path,
            hash_weights=model.hash_weights,
            quantization=params.get("quantization"),  # quantised on load: other weights
            dtype=cls.compute_dtype(params),
            batch_invariant=bool(params.get("batch_invariant", False)),
        )

    @property
    @abc.abstractmethod
    def model_key(self) -> str:
        """The cache identity of this backend (`cache_identity` of what it was built from)."""

    @abc.abstractmethod
    def generate(
        self, conversations: list[Conversation], settings: GenerationSettings | Sequence[GenerationSettings]
    ) -> list[Reply]:
        """Answer every conversation's last user turn; one Reply per conversation, in order. `settings` is a
        sequence (one per conversation) only for backends with `row_constraints`."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (HTTP pools, GPU memory)."""
