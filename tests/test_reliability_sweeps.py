"""A sweep says when it failed, and its values are checked before its first job (issue 25 item 3).

Before: `eatlab -m ...` exited 0 with "0 ok, 2 failed"; `eatlab -m data.limit=2,abc` ran job 0 and failed job 1.
Now every job's config is composed and checked up front (eatlab.cli.sweep_check: one line naming the bad value,
exit 2, no job run), and a multirun with a job not `ok` exits 1 after running every job, its summary printed.
The same under the joblib and submitit launchers: tests/test_sweep_launchers.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eatlab.cli.sweep_check import check_sweep, covering, sweep_jobs
from eatlab.errors import ConfigError

EATLAB = Path(sys.executable).with_name("eatlab")


@pytest.mark.slow  # a dozen compositions, each job's components imported
def test_every_job_of_a_sweep_is_composed_and_checked():
    assert sweep_jobs(["data.limit=2,abc", "language=zh,ja"], "config") == [
        ["data.limit=2", "language=zh"],
        ["data.limit=2", "language=ja"],
        ["data.limit=abc", "language=zh"],
        ["data.limit=abc", "language=ja"],
    ]
    with pytest.raises(ConfigError) as info:
        check_sweep(["data.limit=2,abc", "language=zh,ja"], "config")
    assert str(info.value) == "data.limit=abc: expected a whole number >= 0 or null"
    # a study preset's own sweep (hydra.sweeper.params) is enumerated as the sweeper will run it
    jobs = sweep_jobs(["experiment=smoke_sweep"], "config")
    assert len(jobs) == 4 and all("experiment=smoke_sweep" in j for j in jobs)
    with pytest.raises(ConfigError, match=r"^backend.max_retries=-1: expected a whole number >= 0"):
        check_sweep(["backend=openai", "backend.max_retries=1,-1"], "config")
    assert check_sweep(["language=zh,ja", "data.limit=2"], "config") == 2


def test_a_large_sweep_is_checked_on_a_subset_that_holds_every_value():
    jobs = [[f"a={a}", f"b={b}", f"c={c}"] for a in range(5) for b in range(5) for c in range(5)]
    subset = covering(jobs, limit=64)
    assert subset[0] == jobs[0] and len(subset) < len(jobs)
    assert {ov for job in subset for ov in job} == {ov for job in jobs for ov in job}
    assert covering(jobs[:10], limit=64) == jobs[:10]


def _eatlab(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [str(EATLAB), *args, "tracking=none", f"paths.output_dir={tmp_path / 'out'}"]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_a_bad_value_of_a_sweep_stops_it_before_job_0(tmp_path):
    proc = _eatlab(tmp_path, "-m", "data.limit=2,abc")
    assert (proc.returncode, proc.stderr) == (
        2,
        "error: data.limit=abc: expected a whole number >= 0 or null\n",
    )
    assert not (tmp_path / "out").exists()  # no job ran, no sweep dir


@pytest.mark.slow
def test_a_sweep_whose_jobs_fail_runs_them_all_and_exits_1(tmp_path):
    """The issue's command: a server that is not there; both jobs fail, both ran, the summary says so."""
    proc = _eatlab(tmp_path, "-m", "language=zh,ja", "backend=openai", "backend.base_url=http://127.0.0.1:9/v1",
                   "backend.max_retries=0", "data.limit=2", "extractor=llm")  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "out" / "multiruns" / "eat").iterdir()
    assert proc.stderr.splitlines()[-1] == (
        f"error: sweep: 2 of 2 jobs did not succeed (0 ok, 2 failed, 0 incomplete); summary: "
        f"{sweep / 'sweep_summary.md'}"
    )
    assert "sweep summary: 2 jobs, 0 ok, 2 failed, 0 incomplete" in proc.stdout + proc.stderr
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert [(j["language"], j["status"]) for j in summary["jobs"]] == [("zh", "failed"), ("ja", "failed")]
    assert all("connection error" in j["error"] for j in summary["jobs"])
