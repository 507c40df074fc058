"""The schema of every plain config node (data, generation, model, finetune, trainer's neighbours, ...) and of each
entry point's top level: what keys a node takes, their types and ranges, checked before any work.

Why pydantic models rather than Hydra structured configs: a schema here checks the node as composed, whatever
YAML or search-path file it came from, without changing the config tree or its defaults lists (a structured
config must be registered in the ConfigStore and named in every defaults list that uses it, and OmegaConf's
errors are several lines naming Python types). Pydantic (already the check behind component nodes,
eatlab.utils.components) reports every failure with its key path, from which `check_node` writes the one line:

    data.limit=abc: expected a whole number >= 0 or null
    data.limti=3: unknown key (data takes: source, root, split, limit, sample, seed, drop_redirects)

Component nodes (`backend`, `extractor`, `method`, `trainer`, `callbacks.*`, `optimizer`, `scheduler`: a
`_target_` built by instantiate) are checked against their class's signature instead (components.check_params);
the entry points' roots only say that they are there. Which root goes with which entry point, and the checks that
need higher layers (a backend class's capabilities, files on disk), are eatlab.cli.config_check's.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Le, Lt, MinLen
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from eatlab.errors import ConfigError


class Expected(str):
    """What a field expects, in words, when its type does not say it well (`Annotated[..., Expected("...")]`)."""


def Int(ge: int | None = None, le: int | None = None):  # noqa: N802 - a type, read as one
    """A whole number (never a bool, never a float) within the bounds."""
    return Annotated[int, Field(ge=ge, le=le)]


def Num(ge: float | None = None, le: float | None = None, gt: float | None = None, lt: float | None = None):  # noqa: N802
    """A number (a whole number is one too; a bool is not) within the bounds."""
    return Annotated[float, Field(ge=ge, le=le, gt=gt, lt=lt)]


Fraction = Num(ge=0, le=1)
Share = Num(ge=0, lt=1)  # a held-out share or a dropout: 1 would leave nothing
Positive = Int(ge=1)
Count = Int(ge=0)
Text = Annotated[str, Field(min_length=1)]
FileOrDir = str  # a file or folder; whether it exists is checked where the run needs it (config_check)
DTypes = Literal["auto", "float32", "bfloat16", "float16"]
QUANTIZATIONS = ("nf4", "none")
SELECT_MODES = ("generate", "rank")
CACHE_MODES = ("readwrite", "readonly", "off")  # eatlab.llm.cache.MODES (a test keeps them equal)


class Node(BaseModel):
    """A config node: unknown keys and values of the wrong type fail (no "3" -> 3, no true -> 1)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# ------------------------------------------------------------------------------------------------ the pipeline
class Data(Node):
    source: Literal["local", "hub"] = "local"
    root: FileOrDir | None = None
    split: Text = "test"
    limit: Count | None = None
    sample: Count | None = None
    seed: int | None = None
    drop_redirects: bool = False


class Eval(Node):
    batch_size: Positive = 256
    accelerator: Text = "auto"
    devices: int | Text | list[int] = 1
    strategy: Text = "auto"
    max_failed_share: Fraction = 0.5


class Generation(Node):
    do_sample: bool = False
    temperature: Num(ge=0) = 1.0
    top_p: Fraction = 1.0
    top_k: int = 0
    repetition_penalty: Num(ge=0) = 1.0
    seed: int | None = None
    max_new_tokens: Positive | None = None


class PromptRounds(Node):
    forward: Int(ge=1, le=5) = 3
    backward: Int(ge=1, le=5) = 3


class Prompts(Node):
    name: Text = "eatlab"
    file: Annotated[str, Field(min_length=1), Expected("a prompt set file (.yaml)")] = "eatlab_v1.yaml"
    max_new_tokens: Annotated[
        list[Positive] | None,
        Field(min_length=1),
        Expected("null or a list of whole numbers >= 1, one per round"),
    ] = None


class Alignment(Node):
    constrained: bool = False
    select: Literal[SELECT_MODES] = "generate"
    max_span_words: Positive = 10
    max_span_chars: Positive = 16
    rank_top_first: Positive | None = 16


class Cache(Node):
    path: FileOrDir = "responses.sqlite"
    mode: Literal[CACHE_MODES] = "readwrite"


class Model(Node):
    id: Annotated[str, Field(min_length=1, pattern=r"\S"), Expected("the model's name")]
    path: FileOrDir | None = None
    smoke_path: FileOrDir | None = None
    revision: str | None = None
    smoke: bool = False
    hash_weights: bool = True
    max_new_tokens_cap: Positive | None = None
    trust_remote_code: bool = False


class Language(Node):
    """eatlab.data.languages.Language's fields (docs/extending.md, "A language")."""

    code: Text
    name: Text
    script: Text
    char_tokenized: bool
    spaceless: bool
    cased: bool
    nsl: bool
    sacrebleu_tokenizer: Text
    redirect_words: list[str] = []


class Paths(Node):
    """Folders; a folder of one's own may be added here for interpolation (`+paths.data_dir=...`)."""

    model_config = ConfigDict(extra="allow")
    output_dir: FileOrDir = "outputs"
    cache_dir: FileOrDir = "outputs/cache"
    models_dir: FileOrDir = "outputs/models"
    run_dir: FileOrDir = "."


class Tracking(Node):
    name: Literal["wandb", "none"] = "none"
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "eatlab"
    entity: str | None = None
    group: str | None = None


# ---------------------------------------------------------------------------------------- QLoRA on EACL, held out
class Lora(Node):
    r: Positive = 16
    alpha: Num(gt=0) = 32
    dropout: Share = 0.05
    target_modules: Annotated[
        list[Text], Field(min_length=1), Expected("a non-empty list of module names")
    ] = ["q_proj"]


class Optim(Node):
    lr: Num(gt=0) = 2e-4
    weight_decay: Num(ge=0) = 0.0
    betas: Annotated[list[Fraction], Field(min_length=2, max_length=2), Expected("two numbers in [0, 1]")] = [
        0.9,
        0.999,
    ]
    warmup_ratio: Fraction = 0.0
    min_lr_ratio: Fraction = 0.0


class Filters(Node):
    """eatlab.finetune.eacl.FilterOptions's fields."""

    phrase_in_text: bool = True
    normalize: bool = True
    strip_qualifier: bool = True
    uninvert_names: bool = True
    chinese_t2s: bool = True
    dedup: bool = True
    max_text_chars: Positive = 300
    max_pairs_per_language: Positive | None = None


class Templates(Node):
    system: str | None = None
    backward: Text = "{phrase} {sentence}"
    forward: Text = "{phrase} {sentence}"


class Finetune(Node):
    """`finetune` (eatlab reads `name` and `adapter_path`; eatlab-finetune the rest) and align_eval's `heldout`.

    One schema for both `finetune=none` (two keys) and `finetune=eacl_qlora` (all of them): a key is checked when
    the node has it. QLoRASettings (eatlab.finetune.module) validates through `Finetune.check_settings`."""

    name: Text = "none"
    adapter_path: FileOrDir | None = None
    output_root: FileOrDir | None = None
    update_pointer: bool = True
    eacl_root: FileOrDir | None = None
    languages: Annotated[list[Text], Field(min_length=1), Expected("a non-empty list of language codes")] = [
        "zh"
    ]
    directions: Annotated[
        list[Literal["backward", "forward"]],
        Field(min_length=1),
        Expected("a non-empty list of backward, forward"),
    ] = ["backward", "forward"]
    filters: Filters = Filters()
    val_fraction: Share = 0.05
    val_max: Count | None = None
    test_fraction: Share = 0.05
    test_max: Count | None = None
    val_max_new_tokens: Positive = 32
    val_generate: Count | None = None
    report_only: bool = False
    max_length: Positive = 512
    batch_size: Positive = 4
    eval_batch_size: Positive = 8
    num_workers: Count = 0
    quantization: Literal[QUANTIZATIONS] = "nf4"
    double_quant: bool = True
    compute_dtype: DTypes = "auto"
    quant_storage: DTypes | None = None
    gradient_checkpointing: Annotated[Literal["auto"] | bool, Expected("auto, true or false")] = "auto"
    lora: Lora = Lora()
    optim: Optim = Optim()
    templates: Templates = Templates()


# ------------------------------------------------------------------------------------------- the other trainings
class AlignEvalNode(Node):
    split: Annotated[Literal["dev", "test"], Expected("dev or test")] = "dev"
    limit: Positive | None = 50
    shifted: bool = True
    directions: Annotated[
        list[Literal["backward", "naming"]],
        Field(min_length=1),
        Expected("a non-empty list of backward, naming"),
    ] = ["backward", "naming"]
    batch_size: Positive = 16
    naming_max_new_tokens: Positive = 32
    n_boot: Positive = 1000


class Encoder(Node):
    name: Text = "tiny"
    id: Text = "tiny"
    smoke: bool = False
    max_length: Positive = 128
    eval_max_length: Positive = 512
    lr: Num(gt=0) = 2e-5
    weight_decay: Num(ge=0) = 0.01
    warmup_ratio: Fraction = 0.1
    adam_epsilon: Num(ge=0) = 1e-8
    batch_size: Positive = 32
    eval_batch_size: Positive = 128


class BaselineTrain(Node):
    split: Text = "train"
    limit: Positive | None = None
    dev_split: Text = "dev"
    dev_limit: Positive | None = None
    num_workers: Count = 0
    keep_checkpoint: bool = False
    save_model: bool = False


class BaselineMethod(Node):
    name: Text = "encoder_zero_shot"


class T5Lora(Node):
    enabled: bool = False
    r: Positive = 16
    alpha: Num(gt=0) = 32
    dropout: Share = 0.05
    target_modules: Annotated[
        list[Text], Field(min_length=1), Expected("a non-empty list of module names")
    ] = ["q"]


class FlanT5Train(Node):
    """`extractor.train` of the Flan-T5 extractors (conf/extractor/flan_t5_base.yaml)."""

    model: Text = "google/flan-t5-base"
    output_dir: FileOrDir = "outputs/extractors/flan_t5"
    train_file: FileOrDir | None = None
    dev_file: FileOrDir | None = None
    train_limit: Positive | None = None
    dev_limit: Positive | None = None
    drop_types: list[str] = ["MISC"]
    max_source_len: Positive = 256
    max_target_len: Positive = 128
    batch_size: Positive = 32
    eval_batch_size: Positive = 64
    lr: Num(gt=0) = 3e-4
    weight_decay: Num(ge=0) = 0.01
    warmup_ratio: Fraction = 0.0
    warmup_steps: Count | None = None
    max_new_tokens: Positive = 128
    num_beams: Positive = 1
    num_workers: Count = 0
    lora: T5Lora = T5Lora()


class SpacyArchitecture(Node):
    width: Positive = 96
    depth: Positive = 4
    window_size: Positive = 1
    embed_rows: Annotated[list[Positive], Field(min_length=4, max_length=4)] = [5000, 1000, 2500, 2500]
    hidden_width: Positive = 64
    lexeme_features: bool = False
    cluster_prefixes: list[Positive] = []
    ontonotes_tags: bool = False
    static_vectors: str | None = None


class SpacyTrain(Node):
    """`extractor.train` of spacy_wikiann (conf/extractor/spacy_wikiann.yaml)."""

    output_dir: FileOrDir = "outputs/extractors/spacy_wikiann"
    init: Text = "blank"
    train_file: FileOrDir | None = None
    dev_file: FileOrDir | None = None
    train_limit: Positive | None = None
    dev_limit: Positive | None = None
    max_steps: Count = 50000
    eval_frequency: Positive = 500
    patience: Count = 2000
    max_minutes: Num(gt=0) | None = None
    dropout: Share = 0.2
    learn_rate: Num(gt=0) = 0.001
    architecture: SpacyArchitecture | None = None


class OpenAIHttp(BaseModel):
    """The ranges of eatlab.llm.openai_http.OpenAIBackend's HTTP keys (its signature names their types only)."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)
    base_url: Annotated[str, Field(pattern=r"^https?://"), Expected("an http:// or https:// URL")]
    concurrency: Positive = 8
    max_retries: Count = 5
    timeout_s: Num(ge=0) = 120
    backoff_s: Num(ge=0) = 1.0
    max_backoff_s: Num(ge=0) = 30.0


TRAIN_SCHEMAS: dict[str, type[Node]] = {
    "flan_t5": FlanT5Train,
    "spacy_wikiann": SpacyTrain,
}  # by extractor.name


# ------------------------------------------------------------------------------------ each entry point's top level
Component = dict  # a `_target_` node: checked against its class (eatlab.utils.components.check_params)


class _Root(Node):
    task_name: Text = "eat"
    seed: int = 0
    paths: Paths = Paths()
    tracking: Tracking = Tracking()


class _ModelSide(_Root):
    """What every entry point that talks to the LLM reads."""

    max_sentence_chars: Positive = 1000
    language: Language
    model: Model
    backend: Component
    generation: Generation = Generation()
    prompts: Prompts = Prompts()
    prompt_rounds: PromptRounds = PromptRounds()
    finetune: Finetune = Finetune()
    alignment: Alignment = Alignment()
    cache: Cache = Cache()


class EatlabConfig(_ModelSide):
    """`eatlab` (conf/config.yaml) and `eatlab-eval-extractor` (conf/eval_extractor.yaml)."""

    n_sample_predictions: Count = 20
    eval: Eval = Eval()
    data: Data = Data()
    extractor: Component
    method: Component


class AlignEvalConfig(_ModelSide):
    """`eatlab-align-eval` (conf/align_eval.yaml)."""

    align_eval: AlignEvalNode = AlignEvalNode()
    heldout: Finetune


class _Training(_Root):
    trainer: Component
    callbacks: dict[str, Component | None] | None = None
    optimizer: Component | None = None
    scheduler: Component | None = None


class FinetuneConfig(_Training):
    """`eatlab-finetune` (conf/finetune.yaml)."""

    ckpt_path: str | None = "auto"
    keep_checkpoints: bool = False
    language: Language
    model: Model
    finetune: Finetune
    # set by the debug presets (conf/debug/, `@package _global_`), which are the pipeline's: unused here
    data: dict | None = None
    eval: dict | None = None
    generation: dict | None = None


class TrainExtractorConfig(_Training):
    """`eatlab-train-extractor` (conf/train_extractor.yaml); `extractor.train` by TRAIN_SCHEMAS."""

    data: Data = Data()
    extractor: Component


class TrainBaselineConfig(_Training):
    """`eatlab-train-baseline` (conf/train_baseline.yaml)."""

    data: Data = Data()
    encoder: Encoder
    method: BaselineMethod = BaselineMethod()
    source_language: Text = "en"
    languages: Annotated[
        Text | Annotated[list[Text], Field(min_length=1)],
        Expected("a language code or a non-empty list of them"),
    ] = ["zh"]
    train: BaselineTrain = BaselineTrain()


# ------------------------------------------------------------------------------------------------------- checking
def check_node(key: str, schema: type[BaseModel], value: Any) -> None:
    """ConfigError, one line naming the first bad key under `key` (`""`: the top level), if `value` (plain
    dicts and lists, as OmegaConf.to_container gives them) does not fit `schema`."""
    try:
        schema.model_validate(value)
    except ValidationError as exc:
        raise ConfigError(explain(key, schema, value, exc.errors()[0])) from None


def check_field(key: str, schema: type[BaseModel], field: str, value: Any) -> None:
    """One field of `schema` (e.g. GenerationSettings checking its `substring_select` as `alignment.select`)."""
    from pydantic import TypeAdapter

    info = schema.model_fields[field]
    try:
        hint = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
        TypeAdapter(hint).validate_python(value, strict=True)
    except ValidationError:
        raise ConfigError(f"{key}={_shown(value)}: expected {expected(info)}") from None


def explain(key: str, schema: type[BaseModel], value: Any, error: dict) -> str:
    """The one line for one pydantic error: `<key>=<value>: expected ...`, `... unknown key (...)`, or required."""
    model, here, path, field = schema, value, key, None
    loc = list(error.get("loc", ()))
    for i, part in enumerate(loc):
        if not isinstance(part, str) or model is None or part not in model.model_fields:
            if error["type"] == "extra_forbidden" and i == len(loc) - 1 and model is not None:
                bad = _join(path, part)
                shown = f"={_shown(here.get(part))}" if isinstance(here, dict) else ""
                takes = ", ".join(model.model_fields) or "no keys"
                return f"{bad}{shown}: unknown key ({path or 'the config'} takes: {takes})"
            break
        field = model.model_fields[part]
        path = _join(path, part)
        here = here.get(part) if isinstance(here, dict) else None
        model = _model_of(field.annotation)
        if error["type"] == "missing" and i == len(loc) - 1:
            return f"{path}: required (add it to the config)"
    if field is None:  # the node itself is not a mapping
        return f"{key or 'the config'}={_shown(value)}: expected a node of keys ({', '.join(schema.model_fields)})"
    return f"{path}={_shown(here)}: expected {expected(field)}"


def _join(path: str, part: str) -> str:
    return f"{path}.{part}" if path else str(part)


def _shown(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def _model_of(annotation):
    """The node schema of a field (also `Schema | None`), or None for a leaf."""
    for t in (annotation, *typing.get_args(annotation)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


# ------------------------------------------------------------------------------------------ types, said in words
def expected(field: FieldInfo) -> str:
    """A field's type and range in words: `a whole number >= 0 or null`, `a number in [0, 1]`, `one of a, b`."""
    said = next((m for m in field.metadata if isinstance(m, Expected)), None)
    return said or describe(field.annotation, field.metadata)


def describe(annotation, metadata=()) -> str:
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        base, *extra = typing.get_args(annotation)
        meta = [*metadata]
        for m in extra:
            if isinstance(m, Expected):
                return str(m)
            meta.extend(m.metadata if isinstance(m, FieldInfo) else [m])
        return describe(base, meta)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        said = [describe(a) for a in args if a is not type(None)]
        text = " or ".join(said)
        return f"{text} or null" if type(None) in args else text
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return "a list of " + _plural(describe(item))
    if origin is dict or annotation is dict:
        return "a node"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"a node of keys ({', '.join(annotation.model_fields)})"
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "a whole number" + _bounds(metadata, whole=True)
    if annotation is float:
        return "a number" + _bounds(metadata, whole=False)
    if annotation is str:
        return (
            "a non-empty string"
            if any(isinstance(m, MinLen) and m.min_length for m in metadata)
            else "a string"
        )
    return getattr(annotation, "__name__", str(annotation))


def _plural(text: str) -> str:
    for one, many in (("a whole number", "whole numbers"), ("a number", "numbers"), ("a non-empty string", "strings"),
                      ("a string", "strings")):  # fmt: skip
        if text.startswith(one):
            return many + text[len(one) :]
    return text


def _num(x) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _bounds(metadata, whole: bool) -> str:
    lo = next(((m.ge, "[") for m in metadata if isinstance(m, Ge)), None) or next(
        ((m.gt, "(") for m in metadata if isinstance(m, Gt)), None
    )
    hi = next(((m.le, "]") for m in metadata if isinstance(m, Le)), None) or next(
        ((m.lt, ")") for m in metadata if isinstance(m, Lt)), None
    )
    if lo and hi:
        if whole and lo[1] == "[" and hi[1] == "]":
            return f" from {_num(lo[0])} to {_num(hi[0])}"
        return f" in {lo[1]}{_num(lo[0])}, {_num(hi[0])}{hi[1]}"
    if lo:
        return f" {'>=' if lo[1] == '[' else '>'} {_num(lo[0])}"
    if hi:
        return f" {'<=' if hi[1] == ']' else '<'} {_num(hi[0])}"
    return ""
