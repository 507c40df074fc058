"""Tracking: real wandb in offline mode, read back from the run's transaction log; the local record; failures."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest


def _only_offline_run(run_dir: Path):
    from eatlab.tracking.offline import find_offline_runs, read_offline_run

    found = find_offline_runs(run_dir)
    assert len(found) == 1, found
    # wandb's service process writes the exit record after finish() returns: give it a few seconds
    deadline = time.monotonic() + 20
    run = read_offline_run(found[0])
    while run.exit_code is None and time.monotonic() < deadline:
        time.sleep(0.5)
        run = read_offline_run(found[0])
    return run


@pytest.mark.slow
def test_wandb_offline_run_holds_metrics_tables_and_artifacts(compose, tmp_path):
    from eatlab.cli.run import run_eat

    run_dir = tmp_path / "run"
    cfg = compose(
        [
            "tracking=wandb",
            "tracking.mode=offline",
            "tracking.group=g-test",
            "language=zh",
            "data.limit=3",
            "generation.max_new_tokens=8",
            "n_sample_predictions=2",
        ],
        run_dir=run_dir,
    )
    metrics = run_eat(cfg, run_dir)
    import wandb

    assert wandb.run is None  # finished by the entry point

    run = _only_offline_run(run_dir)
    assert run.group == "g-test"
    assert run.job_type == "eat"
    assert run.name == "eat-tiny-qwen2-smoke-zh-r3-none"
    assert {
        "language:zh",
        "rounds:3",
        "finetune:none",
        "model:eatlab/tiny-qwen2-smoke",
        "smoke-model",
    } <= set(run.tags)
    assert run.config["language"]["code"] == "zh"
    assert run.config["data"]["limit"] == 3
    assert run.exit_code == 0
    # the summary carries the metrics, cost, timings and token counts
    assert run.summary["entity_f1"] == pytest.approx(metrics["entity_f1"])
    assert run.summary["n_sentences"] == 3
    assert run.summary["llm_calls"] == metrics["llm_calls"] > 0
    assert run.summary["llm_cache_hits"] == metrics["llm_cache_hits"]
    assert run.summary["tokens/prompt"] == metrics["tokens"]["prompt"] > 0
    assert run.summary["seconds/forward"] > 0
    assert run.summary["stages/forward/llm_calls"] == metrics["stages"]["forward"]["llm_calls"]
    # tables were logged, and the run's files went into an artifact
    logged = {k.split("/")[0] for h in run.history for k in h if k.endswith("/_type")}
    assert {"per_type", "stages", "failures", "sample_predictions"} <= logged
    files = next(a["files"] for a in run.artifacts if a["name"].startswith("run-files-"))
    assert {"metrics.json", "predictions.conll", "artifacts/forward.jsonl", "resolved_config.yaml"} <= set(
        files
    )
    # the sample table has the forward conversation of each sampled sentence
    table_file = next((run.path.parent / "files" / "media" / "table").glob("sample_predictions_*.table.json"))
    table = json.loads(table_file.read_text(encoding="utf-8"))
    assert len(table["data"]) == 2
    conv = table["data"][0][table["columns"].index("forward_conversation")]
    assert conv.startswith("system: ") and "\n\nuser: " in conv and "\n\nassistant: " in conv
    # the local record is written whatever the tracker
    rec = json.loads((run_dir / "record.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    assert rec["entity_f1"] == metrics["entity_f1"] and rec["group"] == "g-test" and rec["language"] == "zh"
    assert (run_dir / "record.csv").read_text(encoding="utf-8").startswith("run_dir,")


@pytest.mark.slow
def test_tracking_none_writes_no_wandb_but_the_local_record(compose, tmp_path):
    from eatlab.cli.run import run_eat

    run_dir = tmp_path / "run"
    cfg = compose(
        ["tracking=none", "language=ja", "data.limit=2", "generation.max_new_tokens=4"], run_dir=run_dir
    )
    metrics = run_eat(cfg, run_dir)
    assert not (run_dir / "wandb").exists()
    rec = json.loads((run_dir / "record.jsonl").read_text(encoding="utf-8"))
    assert rec["n_sentences"] == 2 and rec["llm_calls"] == metrics["llm_calls"]
    header, row = (run_dir / "record.csv").read_text(encoding="utf-8").splitlines()[:2]
    assert "entity_f1" in header.split(",") and len(header.split(",")) == len(row.split(","))
    assert (run_dir / "csv" / "metrics.csv").is_file()


@pytest.mark.slow
def test_a_job_that_fails_inside_lightning_finishes_its_wandb_run_as_failed(compose, tmp_path):
    import pytorch_lightning as pl
    import torch
    import wandb

    from eatlab.tracking.loggers import build_loggers

    class Broken(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def test_step(self, batch, batch_idx):
            raise RuntimeError("model exploded")

    run_dir = tmp_path / "run"
    cfg = compose(["tracking=wandb", "tracking.mode=offline", "tracking.group=g-fail"], run_dir=run_dir)
    loggers = build_loggers(cfg, run_dir, job_type="eat")
    trainer = pl.Trainer(
        logger=loggers, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False
    )
    with pytest.raises(RuntimeError, match="model exploded"):
        trainer.test(Broken(), dataloaders=torch.utils.data.DataLoader([torch.zeros(1)]), verbose=False)
    assert wandb.run is None
    run = _only_offline_run(run_dir)
    assert run.exit_code == 1 and run.group == "g-fail"


@pytest.mark.slow
def test_offline_reader_follows_records_across_log_blocks(tmp_path):
    """3,000 history rows span many 32 KiB blocks, so records are split into first/middle/last fragments."""
    import wandb

    run = wandb.init(
        project="p", dir=str(tmp_path), mode="offline", group="blocks", tags=["t"], config={"a": {"b": 1}}
    )
    for i in range(3000):
        run.log({"x": i, "pad": "y" * 40})
    run.summary["long"] = "z" * 70_000  # one record longer than two blocks
    run.finish()
    read = _only_offline_run(tmp_path)
    xs = [h["x"] for h in read.history if "x" in h]
    assert xs == list(range(3000))
    assert read.summary["long"] == "z" * 70_000
    assert read.config["a"] == {"b": 1} and read.tags == ["t"] and read.exit_code == 0


def test_offline_reader_rejects_other_files(tmp_path):
    from eatlab.tracking.offline import read_offline_run

    bad = tmp_path / "run-x.wandb"
    bad.write_bytes(b"not a log")
    with pytest.raises(ValueError, match="not a W&B transaction log"):
        read_offline_run(bad)


def test_names_tags_and_group_outside_a_sweep(compose):
    from eatlab.tracking.loggers import run_name, run_tags, sweep_group

    cfg = compose(["language=ko", "prompt_rounds=r5"])
    assert run_name(cfg) == "eat-tiny-qwen2-smoke-ko-r5-none"
    assert run_tags(cfg)[:4] == ["model:eatlab/tiny-qwen2-smoke", "language:ko", "rounds:5", "finetune:none"]
    assert sweep_group(cfg) is None  # a single run has no group unless tracking.group is set
    assert sweep_group(compose(["tracking=wandb", "tracking.group=mine"])) == "mine"


def test_bad_tracking_mode_is_a_config_error(compose, tmp_path):
    from eatlab.errors import ConfigError
    from eatlab.tracking.loggers import build_loggers

    cfg = compose(["tracking=wandb", "tracking.mode=sometimes"])
    with pytest.raises(ConfigError, match="tracking.mode=sometimes"):
        build_loggers(cfg, tmp_path)


@pytest.mark.slow
def test_a_log_read_while_wandb_still_writes_it_stops_before_the_partial_record(compose, tmp_path):
    """wandb's service appends records after finish() returns; a reader that meets a half-written record
    (found as a CI failure: `Wire format was corrupt`) returns the complete ones instead of failing."""
    from eatlab.cli.run import run_eat
    from eatlab.tracking.offline import _records, find_offline_runs, read_offline_run

    run_dir = tmp_path / "run"
    cfg = compose(["tracking=wandb", "tracking.mode=offline", "data.limit=2", "generation.max_new_tokens=4"],
                  run_dir=run_dir)  # fmt: skip
    run_eat(cfg, run_dir)
    whole = _only_offline_run(run_dir)
    path = next(find_offline_runs(run_dir)[0].glob("run-*.wandb"))
    data = path.read_bytes()
    n = len(list(_records(path)))
    cut = tmp_path / "cut.wandb"
    cut.write_bytes(data[: len(data) - 3])  # the last record's bytes not all written yet
    assert len(list(_records(cut))) == n - 1
    partial = read_offline_run(cut)
    assert partial.run_id == whole.run_id and partial.config == whole.config
