"""Bad configuration fails at start, in one line that names the key, before any model or data is loaded.

Two checks:
- `precheck_overrides(argv)` composes the config from the command line the way `eatlab` will (every value of a
  `-m` sweep too) and turns Hydra's multi-line composition errors (an unknown group option, an unknown key, an
  unparsable override) into one line naming the override.
- `validate_for(config_name, cfg)`, the one entry point of the task runner and the sweep check: the composed
  config against its entry point's schema (ROOTS: every plain node, eatlab.utils.schemas: unknown keys, types,
  ranges), every `_target_` node against its class's signature (backend, extractor, method, trainer, callbacks,
  optimizer, scheduler: eatlab.utils.components), what a component must be able to do (`alignment=ranked` needs
  `rank_scoring`), and the files the run reads (`data.root`, `prompts.file`). ConfigError("key=value: expected
  ..."), exit 2; nothing is built and no weights are read, so this holds also when every answer is cached.
"""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from eatlab.errors import ConfigError
from eatlab.utils import schemas
from eatlab.utils.schemas import check_node

_ABSENT = object()
MAX_COMPOSITIONS = 40
_HYDRA_FLAGS_WE_HANDLE = ("-m", "--multirun")


def first_line(text: str) -> str:
    return next((ln.strip() for ln in str(text).splitlines() if ln.strip()), str(text))


def _explain(override: str, exc: Exception) -> str:
    """One line for a Hydra composition error caused by `override`."""
    from hydra.errors import MissingConfigException

    if isinstance(exc, MissingConfigException):
        missing = getattr(exc, "missing_cfg_file", None) or override
        options = getattr(exc, "options", None)
        avail = f" (available: {', '.join(options)})" if options else ""
        return f"{override}: no config {missing!r}{avail}"
    msg = first_line(exc)
    if msg.startswith("Could not override"):
        key = override.split("=", 1)[0].lstrip("+~")
        named = re.match(r"Could not override '([^']+)'", msg)
        if named and named.group(1) != key:
            # the override just added chose a group option that lacks a key set by an earlier override
            other = named.group(1)
            return (
                f"{other}: {override} has no key {other.split('.')[-1]!r} (drop the `{other}=...` override, "
                f"it belongs to another {key} option)"
            )
        return f"{override}: no such key {key!r} in the config (to add a new key use +{override})"
    return f"{override}: {msg}"


def compose_config(config_name: str, overrides: list[str], return_hydra_config: bool = False):
    """The entry point's config as `eatlab` composes it from these overrides (outside a Hydra job)."""
    from hydra import compose, initialize_config_dir

    from eatlab.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=return_hydra_config)


def precheck_overrides(argv: list[str], config_name: str = "config") -> str | None:
    """None when the command line composes; else one line naming the bad override.

    Command lines with Hydra flags other than -m (--help, --cfg, -cn, ...) are left to Hydra.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if any(a.startswith("-") and a not in _HYDRA_FLAGS_WE_HANDLE for a in argv):
        return None
    multirun = any(a in _HYDRA_FLAGS_WE_HANDLE for a in argv)
    args = [a for a in argv if not a.startswith("-")]
    parser = OverridesParser.create()
    choices: list[list[str]] = []
    for a in args:
        try:
            ov = parser.parse_override(a)
        except HydraException as exc:
            return f"{a}: cannot parse this override ({first_line(exc)})"
        values = [a]
        if multirun and ov.is_sweep_override():
            try:
                key = ov.get_key_element()
                values = [f"{key}={v}" for v in ov.sweep_string_iterator()]
            except Exception:  # noqa: BLE001 - sweeps Hydra cannot enumerate (intervals): left to Hydra
                values = []
        choices.append(values)
    # every value of every sweep at least once, the others at their first value
    base = [v[0] for v in choices if v]
    sets = [base] + [
        [*(c[0] for c in choices[:i] if c), alt, *(c[0] for c in choices[i + 1 :] if c)]
        for i, vals in enumerate(choices)
        for alt in vals[1:]
    ]
    for overrides in sets[:MAX_COMPOSITIONS]:
        try:
            compose_config(config_name, overrides)
        except Exception:  # noqa: BLE001 - find the override that breaks it
            for k in range(1, len(overrides) + 1):
                try:
                    compose_config(config_name, overrides[:k])
                except Exception as exc:  # noqa: BLE001
                    return _explain(overrides[k - 1], exc)
            return None  # only fails with everything together: Hydra will say why
    return None


# ------------------------------------------------------------------------------------------------ the config
def validate_for(config_name: str, cfg: DictConfig) -> None:
    """The checks of one entry point's config (`config_name`: its file under conf/): ConfigError naming the first
    bad key. Every node against its schema (eatlab.utils.schemas, by ROOTS), every component node against its
    class, then the files the run reads. A config name without a root (an entry point of one's own) is checked
    for its components only."""
    root = ROOTS.get(config_name)
    if root is not None:
        check_node("", root, plain_config(cfg, components=COMPONENTS))
    if config_name in ("config", "eval_extractor", "align_eval"):
        _check_model_side(cfg)
    if config_name in ("config", "eval_extractor"):
        _check_pipeline_components(cfg)
        _check_data_files(cfg)
    if config_name == "train_extractor":
        _check_extractor_training(cfg)
    if config_name in ("finetune", "train_extractor", "train_baseline"):
        _check_lightning(cfg)


def validate_config(cfg: DictConfig) -> None:
    """`eatlab`'s checks (validate_for("config", cfg)); tests and notebooks call it on a composed config."""
    validate_for("config", cfg)


ROOTS: dict[str, type] = {
    "config": schemas.EatlabConfig,
    "eval_extractor": schemas.EatlabConfig,
    "align_eval": schemas.AlignEvalConfig,
    "finetune": schemas.FinetuneConfig,
    "train_extractor": schemas.TrainExtractorConfig,
    "train_baseline": schemas.TrainBaselineConfig,
}
# `_target_` nodes: checked against their class below, not by the roots' schemas
COMPONENTS = ("backend", "extractor", "method", "trainer", "callbacks", "optimizer", "scheduler")


def plain_config(cfg: DictConfig, components: tuple[str, ...] = ()) -> dict:
    """The config as plain values, resolved, top-level key by key; `components` stand in as `{}`.

    A `???` left unset and an interpolation that cannot be resolved are one line naming the key;
    `${hydra:...}` outside a Hydra job (a config composed by a test or a sweep's check) stays as written."""
    out = {}
    for key in cfg:
        if key == "hydra":
            continue
        if key in components:
            out[key] = {} if cfg[key] is not None else None
            continue
        out[key] = _plain(cfg, str(key))
    return out


def _plain(parent, key: str, full: str | None = None):
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    full = full or key
    try:
        value = parent[key]
        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=True, throw_on_missing=True)
        return value
    except MissingMandatoryValue as exc:
        where = getattr(exc, "full_key", None) or full
        raise ConfigError(f"{where}: no value (??? in the config; set it, e.g. {where}=...)") from None
    except OmegaConfBaseException as exc:
        node = parent._get_node(key)
        if OmegaConf.is_config(node):  # find the leaf that fails
            keys = node.keys() if OmegaConf.is_dict(node) else range(len(node))
            vals = {k: _plain(node, k, f"{full}.{k}") for k in keys}
            return vals if OmegaConf.is_dict(node) else list(vals.values())
        raw = node._value()
        if isinstance(raw, str) and raw.startswith("${hydra:"):
            return raw
        raise ConfigError(f"{full}: {first_line(getattr(exc, 'msg', None) or exc)}") from None


def _get(cfg, key: str):
    try:
        return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
    except Exception as exc:  # noqa: BLE001 - an interpolation that cannot be resolved
        raise ConfigError(f"{key}: {first_line(exc)}") from None


def _check_model_side(cfg) -> None:
    """The LLM side (`eatlab`, `eatlab-eval-extractor`, `eatlab-align-eval`): the backend node against its class
    (also when every answer is cached: nothing is built), what alignment asks of it, the prompt set file."""
    from eatlab.llm.factory import backend_class, check_backend
    from eatlab.llm.openai_http import OpenAIBackend

    backend = backend_class(cfg)  # `_target_` must import (one line naming the key)
    if issubclass(backend, OpenAIBackend):  # its HTTP settings, with their ranges
        check_node("backend", schemas.OpenAIHttp, plain_config(cfg.backend))
    if _get(cfg, "alignment.select") == "rank" and not backend.rank_scoring:
        raise ConfigError(
            f"alignment.select=rank needs backend=hf or a backend class with rank_scoring "
            f"({backend.__module__}.{backend.__qualname__} does not score candidate spans)"
        )
    check_backend(cfg)
    _check_prompts_file(cfg)


def _check_pipeline_components(cfg) -> None:
    from eatlab.eat.methods import method_class
    from eatlab.extractors.base import extractor_factory
    from eatlab.utils.components import check_params, node_params

    ext = {k: v for k, v in node_params(cfg.extractor).items() if k != "train"}  # train: the recipe
    check_params(extractor_factory(cfg), ext, "extractor", provided=("client", "prompts", "generation"))
    check_params(method_class(cfg), node_params(cfg.method), "method", provided=("ctx", "extractor"))


def _check_extractor_training(cfg) -> None:
    """`eatlab-train-extractor`: the extractor node against its class, its `train` recipe against its schema."""
    from eatlab.extractors.base import extractor_factory
    from eatlab.utils.components import check_params, node_params

    factory = extractor_factory(cfg)
    ext = {k: v for k, v in node_params(cfg.extractor).items() if k != "train"}
    check_params(factory, ext, "extractor", provided=("client", "prompts", "generation"))
    schema = schemas.TRAIN_SCHEMAS.get(str(_get(cfg, "extractor.name")))
    if schema is not None and "train" in cfg.extractor:
        check_node("extractor.train", schema, _plain(cfg.extractor, "train", "extractor.train"))


def _check_lightning(cfg) -> None:
    """`trainer`, `callbacks.*`, `optimizer` and `scheduler`: each `_target_` imports and the node's keys fit its
    signature (what eatlab.cli.trainer and the task modules build them with is `provided`)."""
    import inspect

    from eatlab.utils.components import check_params, locate, node_params
    from eatlab.utils.lightning import TRAINER_TARGET

    if cfg.get("trainer") is not None:
        named = {
            "trainer": {"_target_": cfg.trainer.get("_target_") or TRAINER_TARGET}
        }  # as build_trainer does
        trainer = locate(named, "trainer._target_", TRAINER_TARGET)
        params = node_params(cfg.trainer)
        provided = {"logger", "callbacks", "default_root_dir"}
        if params.get("precision") == "auto":  # eatlab's: resolved by the task runner (resolve_precision)
            provided.add("precision")
        known = inspect.signature(trainer).parameters
        for name, value in params.items():
            if isinstance(value, dict):  # a node of its own (the FSDP strategy): its class must import
                if name not in known:
                    raise ConfigError(
                        f"trainer.{name}: unknown key ({_qualname(trainer)} has no such argument)"
                    )
                if "_target_" in value:
                    locate(cfg, f"trainer.{name}._target_", "a class")
                provided.add(name)
        check_params(
            trainer, {k: v for k, v in params.items() if k not in provided}, "trainer", provided=provided
        )
    for name, spec in (cfg.get("callbacks") or {}).items():
        if spec is None:
            continue
        if not OmegaConf.is_dict(spec) or "_target_" not in spec:
            raise ConfigError(
                f"callbacks.{name}: expected a node with _target_ (a Lightning callback) or null"
            )
        target = locate(cfg, f"callbacks.{name}._target_", "pytorch_lightning.callbacks.ModelCheckpoint")
        check_params(target, node_params(spec), f"callbacks.{name}")
    for node, provided in (("optimizer", ("params",)), ("scheduler", ("optimizer", "total_steps"))):
        if cfg.get(node) is not None:
            target = locate(cfg, f"{node}._target_", "torch.optim.AdamW")
            check_params(target, node_params(cfg[node]), node, provided=provided)


def _qualname(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _check_prompts_file(cfg) -> None:
    from eatlab.paths import PROMPTS_DIR

    file = _get(cfg, "prompts.file")
    if file is _ABSENT:
        return
    path = Path(file)
    if not path.is_absolute() and not path.exists():
        path = PROMPTS_DIR / path
    if not path.is_file():
        raise ConfigError(f"prompts.file={file}: no such file (prompt sets: {PROMPTS_DIR})")


def _check_data_files(cfg) -> None:
    root = _get(cfg, "data.root")
    if root is _ABSENT or root is None or _get(cfg, "data.source") == "hub":
        return
    path = Path(str(root))
    if not path.is_dir():
        raise ConfigError(f"data.root={root}: no such folder (a WikiANN copy laid out as <lang>/<split>.txt)")
    lang, split = _get(cfg, "language.code"), _get(cfg, "data.split")
    if isinstance(lang, str) and isinstance(split, str) and not (path / lang / f"{split}.txt").is_file():
        raise ConfigError(f"data.root={root}: has no {lang}/{split}.txt (expected <lang>/<split>.txt files)")


def resolve_or_fail(cfg: DictConfig) -> None:
    """OmegaConf.resolve, with an unresolvable interpolation reported as ConfigError naming its key."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "config"
        raise ConfigError(f"{key}: {first_line(getattr(exc, 'msg', None) or exc)}") from None
