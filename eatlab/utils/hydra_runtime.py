"""Hydra's runtime, when there is one: a task may also be composed without it (tests, notebooks)."""

from __future__ import annotations


def hydra_config():
    """The running job's HydraConfig, or None outside a Hydra job."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get()
    except Exception:  # noqa: BLE001 - composed without Hydra's runtime
        return None


def task_overrides() -> list[str]:
    """The job's command-line overrides ([] outside a Hydra job)."""
    hc = hydra_config()
    return list(hc.overrides.task) if hc is not None else []


def is_multirun(hc=None) -> bool:
    from hydra.types import RunMode

    hc = hc if hc is not None else hydra_config()
    return hc is not None and hc.mode == RunMode.MULTIRUN


# ------------------------------------------------------------------------------------------- unique run dirs
UNIQUE_DIR_RESOLVER = "eatlab.unique_dir"


def unique_dir(prefix: str) -> str:
    """`<prefix>_<4 hex>`, a folder made here and now with an exclusive mkdir: two runs started in the same
    second (a SLURM array, joblib, two terminals) never share a run dir, on one machine or on a shared disk."""
    import secrets
    from pathlib import Path

    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    for _ in range(1000):
        path = f"{prefix}_{secrets.token_hex(2)}"
        try:
            Path(path).mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{prefix}_*: no free run dir name after 1000 tries")


def register_resolvers() -> None:
    """`${eatlab.unique_dir:PREFIX}` (conf/hydra/default.yaml). Cached per config, as Hydra's `now` is: a job
    resolves its run dir once, and Hydra copies the cache from the sweep's config into every job's config, so
    every job of a sweep gets the same sweep dir."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(UNIQUE_DIR_RESOLVER):
        OmegaConf.register_new_resolver(UNIQUE_DIR_RESOLVER, unique_dir, use_cache=True)


register_resolvers()
