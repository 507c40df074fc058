"""A failed job never stops a sweep, whatever the launcher: basic (one process), joblib (parallel workers) and
submitit_local (one process per job). Job 0 asks for a split that does not exist; job 1 must still run, and the
sweep summary reports both; the sweep then exits 1."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_sweep import FAILING, check_failed_split_sweep, eatlab_multirun, tiny_models_dir


@pytest.fixture(scope="module")
def models_dir() -> Path:
    return tiny_models_dir()


@pytest.mark.slow
def test_basic_launcher_goes_on_after_a_failed_job(tmp_path, models_dir):
    """Jobs run one after another in one process: the job after the failure must still run."""
    check_failed_split_sweep(eatlab_multirun(tmp_path / "o", models_dir, *FAILING, failed=1))


@pytest.mark.slow
def test_joblib_launcher_reports_failures(tmp_path, models_dir):
    sweep = eatlab_multirun(
        tmp_path / "o", models_dir, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *FAILING, failed=1
    )
    check_failed_split_sweep(sweep)


@pytest.mark.slow
def test_submitit_local_launcher_reports_failures(tmp_path, models_dir):
    sweep = eatlab_multirun(tmp_path / "o", models_dir, "hydra/launcher=submitit_local", *FAILING, failed=1)
    check_failed_split_sweep(sweep)
    assert (sweep / ".submitit").is_dir()
