"""Lightning loggers for every entry point: CSV always, W&B (offline by default) unless `tracking=none`."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf


def run_name(cfg) -> str:
    """A readable W&B run name from the model, language, rounds and fine-tuning choices."""
    parts = [
        str(cfg.get("task_name", "eat")),
        str(cfg.model.get("id", "model")).split("/")[-1],
        cfg.language.code,
        f"r{cfg.prompt_rounds.forward}" if "prompt_rounds" in cfg else None,
        cfg.finetune.name if "finetune" in cfg else None,
    ]
    return "-".join(p for p in parts if p)


def run_tags(cfg) -> list[str]:
    tags = [f"model:{cfg.model.get('id')}", f"language:{cfg.language.code}"]
    if "prompt_rounds" in cfg:
        tags.append(f"rounds:{cfg.prompt_rounds.forward}")
    if "finetune" in cfg:
        tags.append(f"finetune:{cfg.finetune.name}")
    if cfg.model.get("smoke"):
        tags.append("smoke-model")
    return tags


def sweep_group(cfg, run_dir: Path) -> str | None:
    if cfg.tracking.get("group"):
        return str(cfg.tracking.group)
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            return Path(hc.sweep.dir).name
    except Exception:  # noqa: BLE001 - outside Hydra
        pass
    return None


def build_loggers(cfg, run_dir: Path, job_type: str = "eval") -> list:
    from pytorch_lightning.loggers import CSVLogger

    run_dir = Path(run_dir)
    loggers: list = [CSVLogger(save_dir=str(run_dir), name="csv", version="")]
    if cfg.tracking.name == "wandb":
        from pytorch_lightning.loggers import WandbLogger

        loggers.append(
            WandbLogger(
                project=cfg.tracking.project,
                entity=cfg.tracking.get("entity"),
                name=run_name(cfg),
                group=sweep_group(cfg, run_dir),
                job_type=job_type,
                tags=run_tags(cfg),
                save_dir=str(run_dir),
                offline=cfg.tracking.mode == "offline",
                config=OmegaConf.to_container(cfg, resolve=True),
            )
        )
    return loggers
