"""Bad configuration fails at start, in one line that names the key, before any model or data is loaded.

Two checks:
- `precheck_overrides(argv)` composes the config from the command line the way `eatlab` will (every value of a
  `-m` sweep too) and turns Hydra's multi-line composition errors (an unknown group option, an unknown key, an
  unparsable override) into one line naming the override.
- `validate_config(cfg)` checks the types and ranges of the values a run reads (`data.limit=abc`, a missing
  `data.root` or `prompts.file`, ...) and raises ConfigError("key=value: expected ...").
"""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from eatlab.errors import ConfigError

_ABSENT = object()
MAX_COMPOSITIONS = 40
_HYDRA_FLAGS_WE_HANDLE = ("-m", "--multirun")


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in str(text).splitlines() if ln.strip()), str(text))


def _explain(override: str, exc: Exception) -> str:
    """One line for a Hydra composition error caused by `override`."""
    from hydra.errors import MissingConfigException

    if isinstance(exc, MissingConfigException):
        missing = getattr(exc, "missing_cfg_file", None) or override
        options = getattr(exc, "options", None)
        avail = f" (available: {', '.join(options)})" if options else ""
        return f"{override}: no config {missing!r}{avail}"
    msg = _first_line(exc)
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


def _compose(config_name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from eatlab.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


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
            return f"{a}: cannot parse this override ({_first_line(exc)})"
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
            _compose(config_name, overrides)
        except Exception:  # noqa: BLE001 - find the override that breaks it
            for k in range(1, len(overrides) + 1):
                try:
                    _compose(config_name, overrides[:k])
                except Exception as exc:  # noqa: BLE001
                    return _explain(overrides[k - 1], exc)
            return None  # only fails with everything together: Hydra will say why
    return None


# --------------------------------------------------------------------------------------------------- values
def _get(cfg, key: str):
    try:
        return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
    except Exception as exc:  # noqa: BLE001 - an interpolation that cannot be resolved
        raise ConfigError(f"{key}: {_first_line(exc)}") from None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _fail(key: str, value, expected: str):
    raise ConfigError(f"{key}={value}: expected {expected}")


def _check_int(cfg, key: str, minimum: int | None = None, maximum: int | None = None, null: bool = False):
    v = _get(cfg, key)
    if v is _ABSENT or (v is None and null):
        return
    what = "a whole number" + (f" >= {minimum}" if minimum is not None else "") + (" or null" if null else "")
    if maximum is not None:
        what = f"a whole number from {minimum} to {maximum}"
    if not _is_int(v) or (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        _fail(key, v, what)


def _check_num(cfg, key: str, minimum: float | None = None, maximum: float | None = None, null: bool = False):
    v = _get(cfg, key)
    if v is _ABSENT or (v is None and null):
        return
    bounds = (
        f" in [{minimum}, {maximum}]"
        if maximum is not None
        else (f" >= {minimum}" if minimum is not None else "")
    )
    if not _is_num(v) or (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        _fail(key, v, "a number" + bounds)


def _check_bool(cfg, key: str):
    v = _get(cfg, key)
    if v is not _ABSENT and not isinstance(v, bool):
        _fail(key, v, "true or false")


def _check_choice(cfg, key: str, options: tuple[str, ...]):
    v = _get(cfg, key)
    if v is not _ABSENT and v not in options:
        _fail(key, v, "one of " + ", ".join(options))


def validate_config(cfg: DictConfig) -> None:
    """Types, ranges and files of the values an `eatlab` run reads; ConfigError naming the first bad key."""
    from eatlab.llm.cache import MODES

    for key in ("data.limit", "data.sample"):
        _check_int(cfg, key, minimum=0, null=True)
    _check_int(cfg, "seed")
    _check_int(cfg, "data.seed", null=True)
    _check_bool(cfg, "data.drop_redirects")
    _check_choice(cfg, "data.source", ("local", "hub"))
    _check_int(cfg, "max_sentence_chars", minimum=1)
    _check_int(cfg, "n_sample_predictions", minimum=0)
    _check_int(cfg, "eval.batch_size", minimum=1)
    _check_num(cfg, "eval.max_failed_share", minimum=0, maximum=1)
    for key in ("prompt_rounds.forward", "prompt_rounds.backward"):
        _check_int(cfg, key, minimum=1, maximum=5)
    _check_bool(cfg, "generation.do_sample")
    _check_num(cfg, "generation.temperature", minimum=0)
    _check_num(cfg, "generation.top_p", minimum=0, maximum=1)
    _check_int(cfg, "generation.top_k")
    _check_num(cfg, "generation.repetition_penalty", minimum=0)
    _check_int(cfg, "generation.seed", null=True)
    _check_int(cfg, "generation.max_new_tokens", minimum=1, null=True)
    _check_choice(cfg, "cache.mode", MODES)
    from eatlab.eat.methods import method_class
    from eatlab.extractors.base import extractor_factory
    from eatlab.llm.factory import backend_class, check_backend
    from eatlab.utils.components import check_params, node_params

    backend = backend_class(cfg)  # each component's `_target_` must import (one line naming the key)
    if _get(cfg, "extractor") is not _ABSENT:  # the alignment benchmark has no extractor or method
        ext = {k: v for k, v in node_params(cfg.extractor).items() if k != "train"}  # train: the recipe
        check_params(extractor_factory(cfg), ext, "extractor", provided=("client", "prompts", "generation"))
        check_params(method_class(cfg), node_params(cfg.method), "method", provided=("ctx", "extractor"))
    from eatlab.llm.openai_http import OpenAIBackend

    if issubclass(backend, OpenAIBackend):  # its HTTP settings, with their ranges
        url = _get(cfg, "backend.base_url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            _fail("backend.base_url", url, "an http:// or https:// URL")
        _check_int(cfg, "backend.concurrency", minimum=1)
        _check_int(cfg, "backend.max_retries", minimum=0)
        for key in ("backend.timeout_s", "backend.backoff_s", "backend.max_backoff_s"):
            _check_num(cfg, key, minimum=0)
    _check_alignment(cfg, backend)
    check_backend(cfg)  # the node against its class: also when every answer is cached (nothing is built)
    model_id = _get(cfg, "model.id")
    if model_id is not _ABSENT and (not isinstance(model_id, str) or not model_id.strip()):
        _fail("model.id", model_id, "the model's name")
    _check_prompts(cfg)
    _check_data_files(cfg)


def _check_alignment(cfg, backend) -> None:
    """`alignment.*`: ranking candidate spans needs a backend class that scores them (`rank_scoring`)."""
    _check_bool(cfg, "alignment.constrained")
    _check_choice(cfg, "alignment.select", ("generate", "rank"))
    for key in ("alignment.max_span_words", "alignment.max_span_chars"):
        _check_int(cfg, key, minimum=1)
    _check_int(cfg, "alignment.rank_top_first", minimum=1, null=True)
    if _get(cfg, "alignment.select") == "rank" and not backend.rank_scoring:
        raise ConfigError(
            f"alignment.select=rank needs backend=hf or a backend class with rank_scoring "
            f"({backend.__module__}.{backend.__qualname__} does not score candidate spans)"
        )


def _check_prompts(cfg) -> None:
    from eatlab.paths import PROMPTS_DIR

    file = _get(cfg, "prompts.file")
    if file is not _ABSENT:
        if not isinstance(file, str) or not file:
            _fail("prompts.file", file, "a prompt set file (.yaml)")
        path = Path(file)
        if not path.is_absolute() and not path.exists():
            path = PROMPTS_DIR / path
        if not path.is_file():
            raise ConfigError(f"prompts.file={file}: no such file (prompt sets: {PROMPTS_DIR})")
    budgets = _get(cfg, "prompts.max_new_tokens")
    if budgets is not _ABSENT and budgets is not None:
        items = list(budgets) if OmegaConf.is_list(budgets) or isinstance(budgets, list) else None
        if items is None or not items or not all(_is_int(b) and b >= 1 for b in items):
            _fail("prompts.max_new_tokens", budgets, "null or a list of whole numbers >= 1, one per round")


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
        raise ConfigError(f"{key}: {_first_line(getattr(exc, 'msg', None) or exc)}") from None


# ------------------------------------------------------------------------------------- the other entry points
# key -> check, per config name; keys a composition lacks are skipped. `eatlab` (config) has validate_config.
_INT, _POS, _NUM, _FRAC, _BOOL = "int", "positive int", "number", "fraction", "bool"
SCHEMAS: dict[str, dict[str, tuple[str, bool]]] = {  # key -> (kind, null allowed)
    "finetune": {
        "seed": (_INT, False),
        "finetune.batch_size": (_POS, False),
        "finetune.eval_batch_size": (_POS, False),
        "finetune.max_length": (_POS, False),
        "finetune.val_fraction": (_FRAC, False),
        "finetune.val_max": (_INT, False),
        "finetune.val_generate": (_INT, True),  # >= 0 is checked by QLoRASettings.validate
        "finetune.lora.r": (_POS, False),
        "finetune.lora.alpha": (_NUM, False),
        "finetune.lora.dropout": (_FRAC, False),
        "finetune.optim.lr": (_NUM, False),
        "finetune.optim.warmup_ratio": (_FRAC, False),
        "finetune.report_only": (_BOOL, False),
        "trainer.max_epochs": (_INT, False),
        "trainer.max_steps": (_INT, False),
        "trainer.accumulate_grad_batches": (_POS, False),
        "trainer.devices": (_POS, False),
    },
    "align_eval": {
        "align_eval.limit": (_POS, True),
        "align_eval.batch_size": (_POS, False),
        "align_eval.naming_max_new_tokens": (_POS, False),
        "align_eval.n_boot": (_POS, False),
        "heldout.val_fraction": (_FRAC, False),
        "heldout.val_max": (_INT, True),
    },
    "train_extractor": {
        "seed": (_INT, False),
        "extractor.batch_size": (_POS, False),
        "extractor.train.batch_size": (_POS, False),
        "extractor.train.max_epochs": (_INT, False),
        "extractor.train.lr": (_NUM, False),
        "extractor.train.learn_rate": (_NUM, False),
        "extractor.train.train_limit": (_POS, True),
        "extractor.train.dev_limit": (_POS, True),
        "extractor.train.max_steps": (_INT, False),
        "extractor.train.dropout": (_FRAC, False),
        "trainer.accumulate_grad_batches": (_POS, False),
    },
    "train_baseline": {
        "seed": (_INT, False),
        "encoder.batch_size": (_POS, False),
        "encoder.eval_batch_size": (_POS, False),
        "encoder.max_length": (_POS, False),
        "encoder.lr": (_NUM, False),
        "encoder.warmup_ratio": (_FRAC, False),
        "encoder.max_epochs": (_INT, False),
        "train.limit": (_POS, True),
        "train.dev_limit": (_POS, True),
        "data.limit": (_INT, True),
    },
}


def validate_for(config_name: str, cfg: DictConfig) -> None:
    """The checks of one entry point's config: ConfigError naming the first bad key."""
    from eatlab.extractors.base import extractor_factory

    if config_name in ("config", "eval_extractor", "align_eval"):
        validate_config(cfg)
        if config_name != "align_eval":
            return
    if config_name == "train_extractor":
        extractor_factory(cfg)
    if config_name == "align_eval":
        directions = _get(cfg, "align_eval.directions")
        known = ("backward", "naming")
        if not OmegaConf.is_list(directions) or not directions or any(d not in known for d in directions):
            shown = list(directions) if OmegaConf.is_list(directions) else directions
            raise ConfigError(
                f"align_eval.directions={shown}: expected a non-empty list of {', '.join(known)}"
            )
    checks = {
        _INT: lambda key, null: _check_int(cfg, key, null=null),
        _POS: lambda key, null: _check_int(cfg, key, minimum=1, null=null),
        _NUM: lambda key, null: _check_num(cfg, key, minimum=0, null=null),
        _FRAC: lambda key, null: _check_num(cfg, key, minimum=0, maximum=1, null=null),
        _BOOL: lambda key, null: _check_bool(cfg, key),
    }
    for key, (kind, null) in SCHEMAS.get(config_name, {}).items():
        checks[kind](key, null)
