"""A sweep's values are checked before its first job: `eatlab -m data.limit=2,abc` stops at start, exit 2, in
one line naming `data.limit=abc`, instead of running job 0 and failing job 1 an hour later.

The jobs are enumerated as Hydra's basic sweeper will run them (the config's `hydra.sweeper.params`, e.g. a study
preset's, then the command line's overrides, one job per combination); each job's config is composed and goes
through the same checks as a job's start (`resolve_or_fail`, `validate_for`). A sweep of more than `MAX_JOBS`
jobs is checked on a subset in which every value of every swept key occurs at least once. Sweeps that Hydra's
basic sweeper cannot enumerate (intervals, other sweepers' syntax) are left to the jobs.
"""

from __future__ import annotations

from omegaconf import open_dict

from eatlab.cli.config_check import compose_config, first_line, resolve_or_fail, validate_for
from eatlab.errors import ConfigError

MAX_JOBS = 64
_PLACEHOLDER_RUN_DIR = "<the job's run dir>"  # `${hydra:runtime.output_dir}` exists only inside a job


def sweep_jobs(args: list[str], config_name: str) -> list[list[str]] | None:
    """Every job's overrides, in the sweeper's order; None when the sweep is not one the basic sweeper runs."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(args)
        base = [
            f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override() else a
            for a, o in zip(args, parsed, strict=True)
        ]
        hydra_cfg = compose_config(config_name, base, return_hydra_config=True).hydra
        if hydra_cfg.sweeper.get("_target_", "").rsplit(".", 1)[-1] != BasicSweeper.__name__:
            return None
        params = hydra_cfg.sweeper.get("params")
        preset = [f"{k}={v}" for k, v in (params or {}).items()]
        (jobs,) = BasicSweeper.split_arguments(parser.parse_overrides(preset + args), None)
    except Exception:  # noqa: BLE001 - not enumerable here (glob, interval, ...): each job checks itself
        return None
    return jobs


def covering(jobs: list[list[str]], limit: int = MAX_JOBS) -> list[list[str]]:
    """All jobs, or (over `limit`) the first job plus jobs until every `key=value` occurs at least once."""
    if len(jobs) <= limit:
        return jobs
    seen: set[str] = set()
    out = []
    for job in jobs:
        if not out or not seen.issuperset(job):
            out.append(job)
            seen.update(job)
    return out


def check_job(config_name: str, overrides: list[str]) -> None:
    """ConfigError naming the bad value if the job with these overrides would fail its start-up checks."""
    try:
        cfg = compose_config(config_name, overrides)
    except Exception as exc:  # noqa: BLE001 - a composition error: one line naming the job
        raise ConfigError(f"{' '.join(overrides)}: {first_line(exc) or type(exc).__name__}") from None
    if "paths" in cfg and "run_dir" in cfg.paths:
        with open_dict(cfg):
            cfg.paths.run_dir = _PLACEHOLDER_RUN_DIR
    resolve_or_fail(cfg)
    validate_for(config_name, cfg)


def check_sweep(args: list[str], config_name: str) -> int:
    """Check every job of the sweep `args` (command-line overrides); returns how many jobs were checked.
    Raises ConfigError (one line: the bad value, exit 2) at the first bad one."""
    jobs = sweep_jobs(args, config_name)
    if not jobs:
        return 0
    checked = covering(jobs)
    for overrides in checked:
        check_job(config_name, overrides)
    return len(checked)
