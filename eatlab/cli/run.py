"""`eatlab`: the main job. Runs EAT (or a baseline `method=`) on one language and scores it.

eatlab language=ja model=qwen2.5-7b prompt_rounds=r3 extractor=spacy data.limit=100
eatlab -m language=zh,ja prompt_rounds=r1,r3,r5          # a sweep
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from eatlab.cli.task import Task, entry_point
from eatlab.errors import RequestsFailed

log = logging.getLogger("eatlab")

SMOKE_WARNING = "model={model}: a tiny random SMOKE model. It checks that the pipeline runs; its answers and scores mean nothing."


def run_eat(cfg: DictConfig, run_dir: Path | None = None) -> dict:
    """Run the configured method end to end and return metrics.json's content (also written to the run dir)."""
    with Task(cfg, str(cfg.method.name), run_dir) as task:
        return eat_task(cfg, task)


def eat_task(cfg: DictConfig, task: Task) -> dict:
    """The `eatlab` job in its Task (run dir, provenance, loggers owned by the task runner)."""
    from eatlab.data.languages import Language
    from eatlab.data.loader import select_from_config
    from eatlab.eat.artifacts import finalize_artifacts
    from eatlab.eat.evaluate import evaluate_results
    from eatlab.eat.methods import build_method
    from eatlab.eat.report import print_failures, print_summary
    from eatlab.finetune.adapter import adapter_provenance
    from eatlab.llm.factory import backend_compute, build_client, run_model
    from eatlab.rundir import build_metrics, write_metrics
    from eatlab.tracking.record import record_run

    t_start = time.perf_counter()
    run_dir = task.run_dir
    language = Language.from_config(cfg)  # the composed node: what runs is what the config says
    selection = select_from_config(cfg)  # bad data fails here, before the heavy imports below
    from eatlab.cli.trainer import build_trainer
    from eatlab.eat.lightning import EATEvaluationModule, sentence_loader

    model = run_model(cfg)  # `model.path` checked (or the smoke model built) before any work
    if model.smoke:
        log.warning(SMOKE_WARNING.format(model=model.id))
    client = build_client(cfg)
    client.cache.ensure_open()  # a damaged cache file fails now, in one line naming the repair command
    pipeline = build_method(cfg, client, language, run_dir)
    prov = task.provenance(
        {
            "data": selection.provenance(),
            "prompts": pipeline.prompts.provenance(),
            "model_key": client.model_key if hasattr(client, "model_key") else None,
            "compute": backend_compute(cfg),
            "extractor": pipeline.extractor.identity() if pipeline.extractor else None,
            "adapter": adapter_provenance(cfg.finetune.get("adapter_path")),
        },
    )

    def finish(gathered):  # all ranks' results and counters, merged (eatlab.eat.lightning.Gathered)
        t0 = time.perf_counter()
        ev = evaluate_results(gathered.results, language, run_dir, seed=int(cfg.seed))
        gathered.seconds["evaluation"] += time.perf_counter() - t0
        gathered.seconds["total"] = time.perf_counter() - t_start
        extra = {
            "run": {
                "method": cfg.method.name,
                "language": language.code,
                "model": model.id,
                "smoke_model": model.smoke,
                "prompts": pipeline.prompts.name,
                "prompt_rounds": {
                    "forward": len(pipeline.prompts.forward.rounds),
                    "backward": len(pipeline.prompts.backward.rounds),
                },
                "extractor": pipeline.extractor.name if pipeline.extractor else None,
                "finetune": cfg.finetune.name,
                "split": cfg.data.split,
                "seed": int(cfg.seed),
                "git_commit": prov["git"]["commit"],
            },
            "data": selection.provenance(),
            "counts": dict(gathered.counts),
            "answer_faults": {k: dict(v) for k, v in sorted(gathered.answer_faults.items())},
            "reference_recovery": ev["reference_recovery"],
        }
        metrics = build_metrics(
            ev["scores"],
            failures=ev["failures"],
            counters=gathered.client_counters,
            stage_seconds=dict(gathered.seconds),
            **extra,
        )
        # complete artifacts under their final names (the ranks' files merged in sentence order) before
        # metrics.json says "done"
        finalize_artifacts(run_dir, order=gathered.sentence_ids)
        write_metrics(run_dir, metrics)
        return metrics

    module = EATEvaluationModule(pipeline, finish, client)
    loggers = task.loggers()
    # the shared builder (eatlab/cli/trainer.py): the evaluation's devices are `eval.*`; fp32 (no autocast), the
    # backends choose their own dtype
    trainer = build_trainer(
        cfg,
        task,
        accelerator=cfg.eval.accelerator,
        devices=cfg.eval.devices,
        strategy=cfg.eval.strategy,
        precision="32-true",
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=True,
    )
    try:
        trainer.test(
            module, dataloaders=sentence_loader(selection.sentences, int(cfg.eval.batch_size)), verbose=False
        )
    finally:
        client.close()
    metrics = module.summary
    if metrics is None:  # not rank 0
        return {}
    record_run(cfg, run_dir, metrics, loggers, module.results)
    print_summary(metrics, run_dir)
    print_failures(metrics)
    check_failed_requests(metrics, pipeline.ctx.last_error, float(cfg.eval.get("max_failed_share", 0.5)))
    return metrics


def check_failed_requests(metrics: dict, last_error: str | None, max_share: float) -> None:
    """Most model requests failed after their retries: the job failed, whatever its score says.

    Raised after metrics.json is written, so the failed job's answers stay in the cache for the re-run and
    its partial numbers stay readable; error.json names the count and the last error.
    """
    requests = int(metrics.get("llm_calls", 0))
    failed = int(metrics.get("llm_errors", 0))
    if requests and failed / requests > max_share:
        raise RequestsFailed(
            f"{failed} of {requests} model requests failed after their retries (more than "
            f"eval.max_failed_share={max_share:g}); last error: {last_error or 'unknown'}; "
            f"fix the backend and re-run the same command (answers so far are cached)",
            {"failed_requests": failed, "requests": requests, "last_error": last_error},
        )


@entry_point("config", job_type=lambda cfg: str(cfg.method.name))
def main(cfg: DictConfig, task: Task) -> dict:
    return eat_task(cfg, task)
