"""The one task runner behind every Hydra entry point (`eatlab`, `eatlab-finetune`, `eatlab-train-extractor`,
`eatlab-eval-extractor`, `eatlab-train-baseline`).

An entry point is a task function `fn(cfg, task) -> dict` wrapped by `entry_point(config_name, job_type)`. The
runner checks the command line (one line naming the bad override), resolves and validates the config (one line
naming the key), owns the run dir (a stale `error.json` of an earlier attempt removed), builds the loggers in
one place (`task.loggers()`), resolves precision in one place (`resolve_precision`), and always finishes every
logger with the job's status. On failure it writes `error.json`; a single run prints `error: <message>` and
exits non-zero, a multirun job returns and the sweep goes on with the next job; a multirun with any job not `ok`
exits 1 once every job has run (the summary printed). A sweep's values are all checked before its first job
(eatlab.cli.sweep_check). SIGTERM and SIGINT stop a run or a whole sweep at once (eatlab.utils.signals): exit
143 / 130, `error: stopped by SIGTERM ...`, error.json naming the signal, every cached answer kept. Tests and
notebooks call the same tasks through `with Task(cfg, job_type, run_dir) as task: ...`, where errors propagate.
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import hydra
from omegaconf import DictConfig

from eatlab.cli.config_check import precheck_overrides, resolve_or_fail, validate_for
from eatlab.errors import EatlabError
from eatlab.paths import CONF_DIR
from eatlab.rundir import ERROR as ERROR_JSON
from eatlab.utils import signals
from eatlab.utils.hydra_runtime import hydra_config, is_multirun
from eatlab.utils.io import atomic_write_json


def current_run_dir(cfg=None) -> Path:
    hc = hydra_config()
    if hc is not None:
        return Path(hc.runtime.output_dir)
    return Path(cfg.paths.run_dir) if cfg is not None else Path.cwd()


def resolve_precision(requested: str, accelerator: str, fp16_safe: bool = True) -> str:
    """Lightning precision for `auto`: bf16-mixed on a CUDA GPU with bf16; on an older GPU 16-mixed, unless
    the model overflows in fp16 (`fp16_safe=False`: T5) which then trains in 32-true; 32-true on the CPU."""
    if str(requested) != "auto":
        return str(requested)
    import torch

    if str(accelerator) not in ("auto", "gpu", "cuda") or not torch.cuda.is_available():
        return "32-true"
    if torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "16-mixed" if fp16_safe else "32-true"


class Task:
    """One job's run dir, provenance and loggers; finishes the loggers with the job's status on exit."""

    def __init__(self, cfg: DictConfig, job_type: str, run_dir: Path | str | None = None):
        self.cfg = cfg
        self.job_type = job_type
        self.run_dir = Path(run_dir or current_run_dir(cfg))
        self._loggers: list | None = None

    def __enter__(self) -> Task:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # a re-run in the same run dir (hydra.run.dir=...): an earlier failure record is not this run's
        (self.run_dir / ERROR_JSON).unlink(missing_ok=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None:
            write_error(self.run_dir, exc)
        self.close(failed=exc is not None)
        return False

    def loggers(self, cfg: DictConfig | None = None) -> list:
        """CSV + W&B (unless tracking=none), built once per job; `cfg` is the view the run is named from."""
        if self._loggers is None:
            from eatlab.tracking.loggers import build_loggers

            self._loggers = build_loggers(cfg or self.cfg, self.run_dir, job_type=self.job_type)
        return self._loggers

    def provenance(self, extra: dict | None = None) -> dict:
        """provenance.json: command line, git commit and diff, package versions, config, plus `extra`."""
        from eatlab.provenance import write_provenance

        return write_provenance(self.run_dir, self.cfg, extra)

    def close(self, failed: bool = False) -> None:
        if self._loggers is not None:
            from eatlab.tracking.loggers import finish_loggers

            finish_loggers(self._loggers, failed=failed)
            self._loggers = None


def write_error(run_dir: Path, exc: BaseException) -> None:
    """error.json: what failed; a user error (EatlabError) or a signal without traceback."""
    stop = signals.stop_of(exc)
    if stop is not None:
        record = {"status": "failed", "error_type": "Stopped", "message": str(stop), "traceback": None,
                  "signal": stop.signal_name, "exit_code": stop.exit_code}  # fmt: skip
    else:
        user_error = isinstance(exc, EatlabError)
        record = {
            "status": "failed",
            "error_type": type(exc).__name__,
            "message": str(exc),
            "traceback": None if user_error else "".join(traceback.format_exception(exc)),
        }
        record.update(getattr(exc, "details", None) or {})
    atomic_write_json(Path(run_dir) / ERROR_JSON, record)


def run_task(fn: Callable, cfg: DictConfig, config_name: str, job_type: str):
    """Validate, run `fn(cfg, task)` in a Task, and turn a failure into one line (single run) or a failed
    job that lets the sweep go on (multirun)."""
    run_dir = current_run_dir(cfg)
    try:
        resolve_or_fail(cfg)
        validate_for(config_name, cfg)  # one line naming the key, before any model or data is loaded
        with Task(cfg, job_type, run_dir) as task:
            return fn(cfg, task)
    except BaseException as exc:  # noqa: BLE001 - every failure is recorded; user errors end in one line
        stop = signals.stop_of(exc)
        if stop is None and not isinstance(exc, Exception):
            raise  # a plain sys.exit() of the task
        if not (run_dir / ERROR_JSON).is_file():  # a config error, raised before the Task started
            run_dir.mkdir(parents=True, exist_ok=True)
            write_error(run_dir, exc)
        if stop is not None:  # the run, or the whole sweep, ends here
            print(f"error: {stop}", file=sys.stderr)
            signals.exit_now(stop.exit_code)
        user_error = isinstance(exc, EatlabError)
        print(f"error: {exc}" if user_error else f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if is_multirun():
            return None
        if user_error:
            sys.exit(exc.exit_code)
        raise


def entry_point(config_name: str, job_type: str | Callable) -> Callable[[Callable], Callable[[], None]]:
    """Turn a task function `fn(cfg, task) -> dict` into a console-script `main()` over `conf/<config_name>`;
    `job_type` (W&B's job type) may be a function of the config."""

    def wrap(fn: Callable) -> Callable[[], None]:
        @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)
        def hydra_main(cfg: DictConfig):
            return run_task(fn, cfg, config_name, job_type(cfg) if callable(job_type) else job_type)

        @functools.wraps(fn)
        def main() -> None:
            signals.install()
            try:
                check_command_line(sys.argv[1:], config_name)
                hydra_main()
            except signals.Stopped as stop:  # outside a job: composing, checking, between jobs
                print(f"error: {stop}", file=sys.stderr)
                signals.exit_now(stop.exit_code)
            check_sweep_outcome()

        return main

    return wrap


def check_command_line(argv: list[str], config_name: str) -> None:
    """Composition errors, and with -m every job's values, as one line (exit 2) before anything runs."""
    problem = precheck_overrides(argv, config_name)
    flags = {a for a in argv if a.startswith("-")}
    if problem is None and flags and flags <= {"-m", "--multirun"}:  # --cfg, --help, ...: left to Hydra
        from eatlab.cli.sweep_check import check_sweep

        try:
            check_sweep([a for a in argv if not a.startswith("-")], config_name)
        except EatlabError as exc:
            problem = str(exc)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)


def check_sweep_outcome() -> None:
    """After a multirun: exit 1 when any job failed or did not finish (the summary was printed by the callback)."""
    from eatlab.sweep.callback import last_outcome

    outcome = last_outcome()
    if outcome is None:  # a single run, or a sweep without eatlab's callback
        return
    bad = outcome["failed"] + outcome["incomplete"]
    if bad or outcome["summary"] is None:
        print(
            f"error: sweep: {bad} of {outcome['jobs']} jobs did not succeed ({outcome['ok']} ok, "
            f"{outcome['failed']} failed, {outcome['incomplete']} incomplete); summary: "
            f"{outcome['summary'] or 'not written'}",
            file=sys.stderr,
        )
        sys.exit(1)
