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
