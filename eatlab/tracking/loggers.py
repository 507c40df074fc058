"""Lightning loggers for every entry point: CSV always, W&B (offline by default) unless `tracking=none`.

W&B runs are named from the command-line overrides, grouped by sweep (`<task>-<sweep dir name>` in a multirun),
tagged with model, language, rounds, fine-tuning, method and extractor, and carry the resolved config. A run
that fails is always finished, with exit code 1, so that it shows as failed instead of hanging as "running".
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf

from eatlab.utils.hydra_runtime import hydra_config, is_multirun

log = logging.getLogger(__name__)


TAG_KEYS = (  # tag name -> config key; keys an entry point's config lacks are skipped
    ("model", "model.id"),
    ("language", "language.code"),
    ("rounds", "prompt_rounds.forward"),
    ("finetune", "finetune.name"),
    ("method", "method.name"),
    ("extractor", "extractor.name"),
)


def _select(cfg, key: str):
    return OmegaConf.select(cfg, key, default=None)


def run_name(cfg) -> str:
    """The W&B run name: the job's overrides (`3:language=ja,prompt_rounds=r1` in a sweep), else
    `<task>-<model>-<language>-r<rounds>-<finetune>` from whichever of these the entry point's config has."""
    hc = hydra_config()
    if hc is not None:
        overrides = str(hc.job.get("override_dirname") or "")
        if overrides:
            return f"{hc.job.num}:{overrides}" if is_multirun(hc) else overrides
    rounds = _select(cfg, "prompt_rounds.forward")
    parts = [
        _select(cfg, "task_name") or "eat",
        str(_select(cfg, "model.id") or "").split("/")[-1],
        _select(cfg, "language.code"),
        f"r{rounds}" if rounds is not None else None,
        _select(cfg, "finetune.name"),
    ]
    return "-".join(str(p) for p in parts if p)


def run_tags(cfg) -> list[str]:
    """`key:value` tags W&B can filter on: model, language, rounds, fine-tuning, method, extractor."""
    tags = [f"{name}:{v}" for name, key in TAG_KEYS if (v := _select(cfg, key)) is not None]
    if _select(cfg, "model.smoke"):
        tags.append("smoke-model")
    return [t[:64] for t in tags]  # W&B rejects tags longer than 64 characters


def sweep_group(cfg, run_dir: Path | None = None) -> str | None:
    """`tracking.group` if set, else `<task>-<sweep dir name>` in a multirun, else None (a single run)."""
    if _select(cfg, "tracking.group"):
        return str(cfg.tracking.group)
    hc = hydra_config()
    if is_multirun(hc):
        return f"{_select(cfg, 'task_name') or 'eat'}-{Path(hc.sweep.dir).name}"
    return None


def wandb_config(cfg) -> dict:
    """The resolved config plus the job's overrides (what W&B shows in its config columns)."""
    out = OmegaConf.to_container(cfg, resolve=True)
    hc = hydra_config()
    if hc is not None:
        out["overrides"] = list(hc.overrides.task)
    return out


def _wandb_logger_class():
    from pytorch_lightning.loggers import WandbLogger

    class EatlabWandbLogger(WandbLogger):
        """WandbLogger that finishes the run with exit code 1 when Lightning reports a failure."""

        # entry points find the W&B logger by class name

        def finalize(self, status: str) -> None:
            super().finalize(status)
            if status != "success":
                finish_wandb(failed=True)

    EatlabWandbLogger.__name__ = EatlabWandbLogger.__qualname__ = "WandbLogger"
    return EatlabWandbLogger


def build_loggers(cfg, run_dir: Path, job_type: str = "eval") -> list:
    """CSV logger always; W&B logger when `tracking.name == wandb` (`tracking.mode`: offline | online)."""
    from pytorch_lightning.loggers import CSVLogger

    run_dir = Path(run_dir)
    loggers: list = [CSVLogger(save_dir=str(run_dir), name="csv", version="")]
    if _select(cfg, "tracking.name") == "wandb":
        logger_cls = _wandb_logger_class()
        mode = str(cfg.tracking.get("mode", "offline"))
        if mode not in ("offline", "online", "disabled"):
            from eatlab.errors import ConfigError

            raise ConfigError(f"tracking.mode={mode}: expected offline, online or disabled")
        _finish_stale_run()
        loggers.append(
            logger_cls(
                project=_select(cfg, "tracking.project") or "eatlab",
                entity=cfg.tracking.get("entity"),
                name=run_name(cfg),
                group=sweep_group(cfg, run_dir),
                job_type=job_type,
                tags=run_tags(cfg),
                save_dir=str(run_dir),
                offline=False,  # Lightning's offline=True sets WANDB_MODE for the whole process; mode= does not
                mode=mode,
                config=wandb_config(cfg),
            )
        )
    return loggers


def wandb_logger(loggers: list):
    """The W&B logger among `loggers`, or None."""
    return next((lg for lg in loggers if lg.__class__.__name__.endswith("WandbLogger")), None)


def finish_wandb(failed: bool = False) -> None:
    """Finish the active W&B run (exit code 1 when failed); a no-op when W&B was never started."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)


def _finish_stale_run() -> None:
    """A run left open by an earlier job in this process would swallow this job's logs: finish it."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        log.warning("finishing W&B run %s left open by an earlier job", wandb.run.id)
        wandb.finish()


def finish_loggers(loggers: list, failed: bool = False) -> None:
    """Call in a `finally:` of every entry point: the W&B run is finished even when the job failed."""
    if wandb_logger(loggers) is not None:
        finish_wandb(failed=failed)
