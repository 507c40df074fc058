"""Runs started in the same second never share a run dir (issue 25 item 1).

The run and sweep dirs are `<time>_<suffix>`, made by an exclusive mkdir (`${eatlab.unique_dir:...}`,
eatlab/utils/hydra_runtime.py). The subprocess test starts three `eatlab` runs at once with Hydra's clock frozen
(a sitecustomize in the children), so that all three resolve the very same time: before, they all wrote into one
dir, which then held one language's metrics.json over forward records of all three, and `eatlab-cache check`
called it complete.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from eatlab.utils.hydra_runtime import unique_dir

REPO = Path(__file__).resolve().parents[1]
EATLAB = Path(sys.executable).with_name("eatlab")
MODELS_DIR = os.environ.get("EATLAB_TEST_MODELS", str(REPO / "outputs" / "test-models"))
FROZEN = "2025-05-01_12-00-00"

FROZEN_CLOCK = """
import datetime as _dt
import hydra.core.utils as _hydra_utils


class _Frozen(_dt.datetime):
    @classmethod
    def now(cls, tz=None):
        return cls(2025, 5, 1, 12, 0, 0)


_hydra_utils.datetime = _Frozen  # `${now:...}` of every run resolves the same second
"""


def frozen_clock_env(tmp_path: Path) -> dict:
    hook = tmp_path / "frozen_clock"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(FROZEN_CLOCK, encoding="utf-8")
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def test_unique_dir_is_made_exclusively_and_resolved_once_per_config(tmp_path):
    prefix = str(tmp_path / "runs" / "eat" / FROZEN)
    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda _: unique_dir(prefix), range(64)))
    assert len(set(made)) == 64 and all(Path(p).is_dir() for p in made)
    assert all(Path(p).name.startswith(FROZEN + "_") and len(Path(p).name) == len(FROZEN) + 5 for p in made)

    # one config resolves its run dir once (Hydra reads hydra.run.dir several times); a copy of its cache (what
    # Hydra gives every job of a sweep) gives the same dir, a fresh config another one
    node = {"out": str(tmp_path), "dir": "${eatlab.unique_dir:${out}/multiruns/eat/" + FROZEN + "}"}
    cfg = OmegaConf.create(node)
    first = cfg.dir
    assert cfg.dir == first and Path(first).is_dir()
    job = OmegaConf.create(node)
    OmegaConf.copy_cache(from_config=cfg, to_config=job)
    assert job.dir == first
    assert OmegaConf.create(node).dir != first
    assert len(list((tmp_path / "multiruns" / "eat").iterdir())) == 2


def test_shipped_run_and_sweep_dirs_are_unique(tmp_path):
    """conf/hydra/default.yaml: two compositions with the clock frozen get two run dirs and two sweep dirs."""
    import datetime as dt

    import hydra.core.utils as hydra_utils
    from hydra import compose, initialize_config_dir

    from eatlab.paths import CONF_DIR

    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2025, 5, 1, 12, 0, 0)

    real = hydra_utils.datetime
    hydra_utils.datetime = Frozen
    try:
        dirs = []
        for _ in range(2):
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                hydra_utils.setup_globals()
                cfg = compose("config", [f"paths.output_dir={tmp_path}"], return_hydra_config=True)
            dirs.append((cfg.hydra.run.dir, cfg.hydra.sweep.dir))
    finally:
        hydra_utils.datetime = real
    (run1, sweep1), (run2, sweep2) = dirs
    assert run1 != run2 and sweep1 != sweep2
    for run in (run1, run2):
        assert Path(run).parent == tmp_path / "runs" / "eat" and Path(run).name.startswith(FROZEN + "_")
    for sweep in (sweep1, sweep2):
        assert Path(sweep).parent == tmp_path / "multiruns" / "eat" and Path(sweep).name.startswith(
            FROZEN + "_"
        )


@pytest.mark.slow
def test_runs_started_in_the_same_second_get_their_own_run_dirs(tmp_path):
    """Three `eatlab data.limit=2` (zh, ja, ru) at once, one outputs folder, one clock: three complete run dirs,
    each with its own language's metrics.json and artifacts; one shared cache."""
    from eatlab.cli.repair import check_run_dir
    from eatlab.llm.tiny import ensure_tiny_model
    from eatlab.rundir import RunDir

    ensure_tiny_model(Path(MODELS_DIR) / "tiny-qwen2")
    env = frozen_clock_env(tmp_path)
    out = tmp_path / "out"
    languages = ("zh", "ja", "ru")
    procs = {
        lang: subprocess.Popen(
            [
                str(EATLAB),
                f"language={lang}",
                "data.limit=2",
                "tracking=none",
                "generation.max_new_tokens=8",
                f"paths.output_dir={out}",
                f"paths.models_dir={MODELS_DIR}",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for lang in languages
    }
    for lang, proc in procs.items():
        log, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, (lang, log[-3000:])
    run_dirs = sorted((out / "runs" / "eat").iterdir())
    assert len(run_dirs) == 3 and all(d.name.startswith(FROZEN + "_") for d in run_dirs), run_dirs
    seen = set()
    for d in run_dirs:
        rd = RunDir(d)
        lang = rd.metrics["run"]["language"]
        seen.add(lang)
        ids = [json.loads(x)["sentence_id"] for x in (d / "artifacts/forward.jsonl").read_text().splitlines()]
        assert len(ids) == 2 and all(i.startswith(f"{lang}-") or lang in i for i in ids), (lang, ids)
        assert rd.metrics["n_sentences"] == 2 and check_run_dir(d).ok
        assert [ln for ln in (d / ".hydra/overrides.yaml").read_text().splitlines() if "language=" in ln] == [
            f"- language={lang}"
        ]
    assert seen == set(languages)
