"""Sweeps through the real `eatlab` command: basic, joblib and submitit_local launchers, the sweep summary written
by the Hydra callback, offline W&B runs grouped by sweep, and `eatlab-analyze` on the finished sweep (failed
jobs under each launcher: test_sweep_launchers.py). Tiny smoke model, a few sentences, 8 new tokens per round."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FAST = ["model=tiny", "generation.max_new_tokens=8", "tracking.mode=offline"]


def tiny_models_dir() -> Path:
    """The tiny model, built once and shared by every sweep (each sweep's outputs link to it)."""
    from eatlab.llm.tiny import ensure_tiny_model

    path = Path(os.environ.get("EATLAB_TEST_MODELS", str(REPO / "outputs" / "test-models")))
    ensure_tiny_model(path / "tiny-qwen2")
    return path


@pytest.fixture(scope="module")
def models_dir() -> Path:
    return tiny_models_dir()


def eatlab_multirun(
    out: Path, models_dir: Path, *overrides: str, timeout: int = 400, failed: int = 0
) -> Path:
    """Run `eatlab -m ...` with outputs under `out`; return the sweep dir. With `failed` jobs expected to fail,
    the sweep runs every job and then exits 1, its last line saying so."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "models").symlink_to(models_dir, target_is_directory=True)
    exe = Path(sys.executable).with_name("eatlab")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from eatlab.cli.run import main; main()"]
    cmd += ["-m", *FAST, *overrides, f"paths.output_dir={out}"]
    proc = subprocess.run(cmd, cwd=out, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == (1 if failed else 0), proc.stderr[-3000:]
    if failed:
        assert proc.stderr.splitlines()[-1].startswith(f"error: sweep: {failed} of "), proc.stderr[-3000:]
    sweeps = [p for p in (out / "multiruns").glob("*/*") if p.is_dir()]
    assert len(sweeps) == 1, sweeps
    return sweeps[0]


def read_summary(sweep: Path) -> list[dict]:
    with (sweep / "sweep_summary.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    data = json.loads((sweep / "sweep_summary.json").read_text(encoding="utf-8"))
    assert data["n_jobs"] == len(rows) == len(data["jobs"])
    assert (sweep / "sweep_summary.md").read_text(encoding="utf-8").count("\n| ") == len(rows) + 1
    return rows


FAILING = ["language=zh", "data.split=nosuchsplit,test", "data.limit=2", "prompt_rounds=r1"]


def check_failed_split_sweep(sweep: Path) -> None:
    """data.split=nosuchsplit,test: job 0 fails cleanly (error.json, a `failed` row), job 1 still runs."""
    from eatlab.tracking.offline import find_offline_runs, read_offline_run

    rows = read_summary(sweep)
    assert [(r["job"], r["data.split"], r["status"]) for r in rows] == [
        ("0", "nosuchsplit", "failed"),
        ("1", "test", "ok"),
    ]
    for r in rows:
        job_dir = sweep / r["job_dir"]
        if r["status"] == "failed":
            assert "nosuchsplit" in r["error"] and r["error_type"]
            assert json.loads((job_dir / "error.json").read_text(encoding="utf-8"))["status"] == "failed"
            assert not (job_dir / "metrics.json").exists()
        else:
            assert float(r["entity_f1"]) >= 0 and int(r["n_sentences"]) == 2 and int(r["llm_calls"]) > 0
    (wandb_dir,) = find_offline_runs(sweep)  # the failed job stopped before its tracker started
    run = read_offline_run(wandb_dir)
    assert run.run_id == rows[1]["wandb_run_id"] and run.exit_code == 0
    assert run.group == rows[1]["wandb_group"] == f"eat-{sweep.name}"
    assert "language:zh" in run.tags and run.name.startswith("1:")


@pytest.mark.slow
def test_basic_launcher_sweep_summary_wandb_groups_and_analysis(tmp_path, models_dir):
    """The issue's sweep: 2 languages x 2 round counts -> 4 runs, 4 offline W&B runs in one group, a summary;
    then eatlab-analyze writes tables, correlations, plots and report.html."""
    from eatlab.cli.analyze import main as analyze_main
    from eatlab.tracking.offline import find_offline_runs, read_offline_run

    sweep = eatlab_multirun(
        tmp_path / "o", models_dir, "language=zh,ja", "prompt_rounds=r1,r3", "data.limit=2"
    )
    rows = read_summary(sweep)
    assert [r["status"] for r in rows] == ["ok"] * 4
    assert sorted((r["language"], r["prompt_rounds"]) for r in rows) == [
        ("ja", "r1"),
        ("ja", "r3"),
        ("zh", "r1"),
        ("zh", "r3"),
    ]
    group = f"eat-{sweep.name}"
    assert {r["wandb_group"] for r in rows} == {group}
    for r in rows:
        m = json.loads((sweep / r["job_dir"] / "metrics.json").read_text(encoding="utf-8"))
        assert float(r["entity_f1"]) == pytest.approx(m["entity_f1"])
        assert int(r["llm_calls"]) == m["llm_calls"] > 0 and int(r["llm_cache_hits"]) == m["llm_cache_hits"]
        assert float(r["seconds_total"]) > 0 and r["error"] == ""

    runs = [read_offline_run(p) for p in find_offline_runs(sweep)]
    assert len(runs) == 4
    assert {r.group for r in runs} == {group} and {r.job_type for r in runs} == {"eat"}
    by_id = {r.run_id: r for r in runs}
    for row in rows:
        run = by_id[row["wandb_run_id"]]
        assert f"language:{row['language']}" in run.tags and f"rounds:{row['prompt_rounds'][1:]}" in run.tags
        assert (
            f"language={row['language']}" in run.name and f"prompt_rounds={row['prompt_rounds']}" in run.name
        )
        assert run.summary["entity_f1"] == pytest.approx(float(row["entity_f1"])) and run.exit_code == 0
        assert f"language={row['language']}" in run.config["overrides"]

    out = tmp_path / "analysis"
    assert (
        analyze_main(
            [str(sweep), "--out", str(out), "--roundtrip-max-new-tokens", "4", "--n-boot", "50", "--quiet"]
        )
        == 0
    )
    for name in (
        "runs.csv",
        "sentences.csv",
        "correlations.csv",
        "correlations.json",
        "report.html",
        "tables/rounds_by_language.csv",
        "tables/main_entity_f1.csv",
        "plots/f1_by_language_rounds.png",
        "plots/failures_by_language.png",
        "plots/quality_vs_f1.png",
    ):
        assert (out / name).is_file(), name
    assert len(list((out / "roundtrip").glob("*.jsonl"))) == 4
    with (out / "tables" / "rounds_by_language.csv").open(encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert [t["language"] for t in table] == ["ja", "zh"] and {"r1", "r3"} <= set(table[0])
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") >= 3 and "Correlations" in html and "SMOKE" in html


def test_summary_of_an_unfinished_sweep_marks_incomplete_jobs(tmp_path):
    """A job killed before writing anything (no metrics.json, no error.json) is `incomplete`, not `ok`."""
    from eatlab.sweep.summary import main as summary_main

    job = tmp_path / "0_language=zh"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- language=zh\n", encoding="utf-8")
    assert summary_main([str(tmp_path)]) == 0
    rows = read_summary(tmp_path)
    assert rows[0]["status"] == "incomplete" and rows[0]["language"] == "zh" and rows[0]["job"] == "0"


def test_callback_writes_the_summary_at_exit_when_the_launcher_dies(tmp_path):
    """on_multirun_end never comes when the launcher raises; the exit hook still writes the summary."""
    from omegaconf import OmegaConf

    from eatlab.sweep.callback import SweepSummaryCallback

    job = tmp_path / "0_language=ja"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- language=ja\n", encoding="utf-8")
    cb = SweepSummaryCallback()
    cb.on_multirun_start(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert not (tmp_path / "sweep_summary.csv").exists()
    cb._at_exit()
    assert [r["status"] for r in read_summary(tmp_path)] == ["incomplete"]
    (tmp_path / "sweep_summary.csv").unlink()
    cb._at_exit()  # written once only
    assert not (tmp_path / "sweep_summary.csv").exists()


@pytest.mark.parametrize(
    "study",
    ["main_table", "rounds_ablation", "ft_ablation", "model_size", "lsl_vs_nsl", "baselines", "smoke_sweep"],
)
def test_study_presets_compose_with_their_sweep(study):
    from hydra import compose, initialize_config_dir

    from eatlab.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={study}"], return_hydra_config=True)
    assert cfg.task_name == study
    params = dict(cfg.hydra.sweeper.params)
    assert params, "a study preset declares its sweep"
    assert "sweep_summary" in cfg.hydra.callbacks
    assert (REPO / "experiments" / study / "README.md").is_file()
    if study in ("main_table", "rounds_ablation", "model_size", "baselines"):
        assert params["language"] == "ar,hi,hy,ja,ka,ko,ru,zh"


def test_slurm_preset_has_the_usual_keys():
    from hydra import compose, initialize_config_dir

    from eatlab.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    for key in ("partition", "gpus_per_node", "timeout_min", "mem_gb", "cpus_per_task", "array_parallelism"):
        assert key in launcher


@pytest.mark.slow
def test_an_in_process_sweep_loads_the_weights_once(tmp_path):
    """Three languages, one model, Hydra's basic launcher: the first job loads the weights, the next two reuse
    the loaded backend (each job still makes its own model calls: the cache is per job here)."""
    sweep = eatlab_multirun(
        tmp_path / "o", tiny_models_dir(), "language=zh,ja,ko", "data.limit=2", "extractor=spacy",
        f"cache.path={tmp_path / 'c'}/${{language.code}}.sqlite",
    )  # fmt: skip
    logs = "".join(p.read_text(encoding="utf-8") for p in sorted(sweep.glob("*/*.log")))
    assert logs.count("][eatlab.llm.hf][INFO] loaded ") == 1
    assert logs.count("reusing the loaded backend hf (eatlab/tiny-qwen2-smoke@local:") == 2
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert len(jobs) == 3 and all(json.loads((j / "metrics.json").read_text())["llm_calls"] > 0 for j in jobs)
