"""The one Lightning Trainer builder of every entry point (`eatlab`, `eatlab-finetune`, `eatlab-train-extractor`,
`eatlab-train-baseline`), as in lightning-hydra-template: `trainer` and `callbacks` are config nodes built by
`hydra.utils.instantiate`; the loggers are the task's (`task.loggers()`).

    eatlab-finetune trainer.max_epochs=3 trainer.gradient_clip_val=0.5        # any Trainer argument
    eatlab-finetune trainer=ddp                                                # a trainer preset (conf/trainer/)
    eatlab-train-extractor callbacks.early_stopping.patience=5 callbacks.lr_monitor=null
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from eatlab.cli.task import Task, resolve_precision
from eatlab.errors import ConfigError
from eatlab.utils.lightning import TRAINER_TARGET


def build_callbacks(node, defaults: dict | None = None) -> list:
    """One Lightning callback per entry of the `callbacks` node (an entry set to null is left out); `defaults`
    fills arguments the node leaves null that are only known at run time, e.g.
    `{"model_checkpoint": {"dirpath": <run dir>/checkpoints}}`."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    out = []
    for name, spec in (node or {}).items():
        if spec is None:
            continue
        if not OmegaConf.is_dict(spec) or "_target_" not in spec:
            raise ConfigError(
                f"callbacks.{name}: expected a node with _target_ (a Lightning callback) or null"
            )
        fill = {k: v for k, v in (defaults or {}).get(name, {}).items() if spec.get(k) is None}
        try:
            out.append(instantiate(spec, **fill))
        except InstantiationException as exc:  # a bad class path or argument
            raise ConfigError(f"callbacks.{name}: cannot build {spec._target_} ({_cause(exc)})") from None
    return out


def build_trainer(
    cfg: DictConfig,
    task: Task,
    *,
    node: DictConfig | None = None,
    fp16_safe: bool = True,
    callback_defaults: dict | None = None,
    **overrides,
):
    """`instantiate(cfg.trainer)` (or `node`) with `precision: auto` resolved, the callbacks of `cfg.callbacks`,
    the task's loggers and the run dir as `default_root_dir`; keyword `overrides` win over the node (what a task
    fixes, e.g. the FSDP strategy object or the evaluation's devices)."""
    from hydra.utils import instantiate

    spec = node if node is not None else cfg.get("trainer")
    spec = OmegaConf.create({"_target_": TRAINER_TARGET}) if spec is None else spec.copy()
    if "_target_" not in spec:
        spec["_target_"] = TRAINER_TARGET
    accelerator = overrides.get("accelerator", spec.get("accelerator", "auto"))
    precision = overrides.pop("precision", spec.get("precision", "auto"))
    kwargs = {
        "precision": resolve_precision(precision, accelerator, fp16_safe=fp16_safe),
        "logger": task.loggers(),
        "callbacks": build_callbacks(cfg.get("callbacks"), callback_defaults),
        "default_root_dir": str(task.run_dir),
        **overrides,
    }
    from hydra.errors import InstantiationException

    try:
        return instantiate(spec, **kwargs, _convert_="all")
    except InstantiationException as exc:  # an unknown Trainer argument or a bad value, named by Lightning
        raise ConfigError(f"trainer: {_cause(exc)}") from None


def _cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
