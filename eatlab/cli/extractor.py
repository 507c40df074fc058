"""`eatlab-train-extractor` and `eatlab-eval-extractor`: train the English NER extractor, score any extractor.

eatlab-train-extractor                                  # Flan-T5-base on English WikiANN (GPU)
eatlab-train-extractor extractor=spacy_wikiann          # spaCy NER on English WikiANN (CPU)
eatlab-eval-extractor extractor=spacy data.root=/path/to/wikiann
eatlab-eval-extractor extractor=flan_t5 extractor.checkpoint=outputs/extractors/flan_t5_base/best
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from eatlab.cli.task import Task, entry_point
from eatlab.cli.trainer import build_trainer
from eatlab.errors import ConfigError
from eatlab.rundir import EXTRACTOR_METRICS, build_metrics, write_metrics
from eatlab.utils.io import atomic_write_json

log = logging.getLogger("eatlab")


def _split_file(cfg, key: str, split: str) -> str:
    """`extractor.train.<key>`, or `<data.root or the in-repo samples>/en/<split>.txt`."""
    from eatlab.data.loader import split_path

    value = cfg.extractor.train.get(key)
    path = Path(value) if value else split_path(cfg.data.get("root"), "en", split)
    if not path.is_file():
        raise ConfigError(
            f"extractor.train.{key}={path}: file not found (set data.root or extractor.train.{key})"
        )
    if not value and not cfg.data.get("root"):
        log.warning("%s: the in-repo sample (100 sentences); set data.root=DIR for the full WikiANN", path)
    return str(path)


def train_t5(cfg, task: Task) -> dict:
    """Fit a T5-family extractor; the best dev-F1 model is `<extractor.train.output_dir>/best`."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from eatlab.extractors.train_t5 import NERTextDataModule, Seq2SeqNERModule
    from eatlab.utils.lightning import PretrainedCheckpoint

    run_dir = task.run_dir
    t = cfg.extractor.train
    pl.seed_everything(int(cfg.seed), workers=True)
    files = {
        "train_file": _split_file(cfg, "train_file", "train"),
        "dev_file": _split_file(cfg, "dev_file", "dev"),
    }
    lora = OmegaConf.to_container(t.lora, resolve=True) if t.get("lora") else None
    module = Seq2SeqNERModule(
        str(t.model),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        lora=lora if lora and lora.get("enabled") else None,
        max_new_tokens=int(t.max_new_tokens),
        num_beams=int(t.num_beams),
        scorer_seed=int(cfg.seed),
    )
    dm = NERTextDataModule(
        module.tokenizer,
        files["train_file"],
        files["dev_file"],
        max_source_len=int(t.max_source_len),
        max_target_len=int(t.max_target_len),
        batch_size=int(t.batch_size),
        eval_batch_size=int(t.eval_batch_size),
        train_limit=t.get("train_limit"),
        dev_limit=t.get("dev_limit"),
        num_workers=int(t.get("num_workers", 0)),
        drop_types=tuple(t.get("drop_types", ["MISC"])),
    )
    dm.setup("fit")
    data_stats = dm.stats()
    out_dir = Path(t.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for lg in task.loggers():
        lg.log_hyperparams({"data_stats": data_stats, "files": files})
    trainer = build_trainer(
        cfg, task, fp16_safe=False, callback_defaults={"model_checkpoint": {"dirpath": str(out_dir)}}
    )  # T5 overflows in fp16
    trainer.fit(module, datamodule=dm)
    checkpoint = next((c for c in trainer.checkpoint_callbacks if isinstance(c, PretrainedCheckpoint)), None)
    best_path = checkpoint.best_model_path if checkpoint else ""
    best = checkpoint.best_model_score if checkpoint else None
    summary = {
        "extractor": "flan_t5",
        "base_model": str(t.model),
        "checkpoint": best_path or None,
        "best_val_f1": float(best) if best is not None else None,
        "global_step": int(trainer.global_step),
        "epochs": int(trainer.current_epoch),
        "data": {"files": files, **data_stats},
        "run_dir": str(run_dir),
        "use_with": f"extractor=flan_t5 extractor.checkpoint={best_path}",
    }
    atomic_write_json(run_dir / "train_summary.json", summary)
    if best_path:
        atomic_write_json(Path(best_path) / "train_summary.json", summary)
    return summary


def train_spacy(cfg, task: Task) -> dict:
    """spaCy's trainer on English WikiANN (or any English CoNLL files); model-best = best dev entity F1."""
    from dataclasses import asdict

    from eatlab.extractors.train_spacy import train_spacy_ner

    run_dir = task.run_dir
    t = cfg.extractor.train
    result = train_spacy_ner(
        _split_file(cfg, "train_file", "train"),
        _split_file(cfg, "dev_file", "dev"),
        t.output_dir,
        init=str(t.init),
        max_steps=int(t.max_steps),
        eval_frequency=int(t.eval_frequency),
        patience=int(t.patience),
        max_minutes=t.get("max_minutes"),
        seed=int(cfg.seed),
        train_limit=t.get("train_limit"),
        dev_limit=t.get("dev_limit"),
        dropout=float(t.dropout),
        learn_rate=float(t.learn_rate),
        architecture=OmegaConf.to_container(t.architecture) if t.get("architecture") else None,
    )
    summary = {"extractor": "spacy_wikiann", **asdict(result), "run_dir": str(run_dir)}
    atomic_write_json(run_dir / "train_summary.json", summary)
    return summary


def train_extractor(cfg: DictConfig, run_dir: Path | None = None) -> dict:
    """Train the configured extractor (`extractor.name` flan_t5 or spacy_wikiann) and return its summary."""
    with Task(cfg, "train_extractor", run_dir) as task:
        return train_task(cfg, task)


def train_task(cfg: DictConfig, task: Task) -> dict:
    """The `eatlab-train-extractor` job in its Task."""
    name = cfg.extractor.name
    if "train" not in cfg.extractor:
        raise ConfigError(
            f"extractor={name}: nothing to train (choose flan_t5_small, flan_t5_base, flan_t5_large, "
            "flan_t5_conll2003 or spacy_wikiann)"
        )
    task.provenance({"extractor": {"name": name, "train": OmegaConf.to_container(cfg.extractor.train)}})
    if name == "flan_t5":
        summary = train_t5(cfg, task)
        where = summary["checkpoint"]
    elif name == "spacy_wikiann":
        summary = train_spacy(cfg, task)
        where = summary["model_best"]
    else:
        raise ConfigError(f"extractor.name={name}: only flan_t5 and spacy_wikiann can be trained")
    f1 = summary.get("best_val_f1", summary.get("dev_ents_f"))
    print(f"best dev entity F1: {f1 if f1 is None else f'{100 * f1:.2f}'}   model: {where}")
    return summary


def evaluate_from_config(cfg: DictConfig, run_dir: Path | None = None) -> dict:
    """Score `cfg.extractor` on English WikiANN (`data.split`, default test); writes JSON and predictions."""
    with Task(cfg, "eval_extractor", run_dir) as task:
        return eval_task(cfg, task)


def eval_task(cfg: DictConfig, task: Task) -> dict:
    """The `eatlab-eval-extractor` job in its Task."""
    from eatlab.data.conll import write_conll
    from eatlab.data.loader import select_from_config
    from eatlab.eval.table import format_scores
    from eatlab.extractors.base import build_extractor
    from eatlab.extractors.evaluate import evaluate_extractor

    run_dir = task.run_dir
    selection = select_from_config(cfg, language="en")
    client = None
    if cfg.extractor.name == "llm":
        from eatlab.llm.factory import build_client

        client = build_client(cfg)
    try:
        extractor = build_extractor(cfg, client, allow_fallback=False)
        task.provenance({"data": selection.provenance(), "extractor": extractor.identity()})
        result = evaluate_extractor(extractor, selection.sentences, seed=int(cfg.seed))
    finally:
        if client is not None:
            client.close()
    write_conll(run_dir / "predictions.conll", selection.sentences, result["pred_tags"])
    metrics = build_metrics(
        result["scores"],
        counters=client.counters_dict() if client is not None else None,
        stage_seconds={"extraction": result["seconds"]},
        run={
            "method": "extractor_eval",
            "extractor": str(cfg.extractor.name),
            "language": "en",
            "split": str(cfg.data.split),
            "seed": int(cfg.seed),
        },
        data=selection.provenance(),
        counts=result["counts"],
        extractor=result["extractor"],
        split=str(cfg.data.split),
        **({"llm": client.counters_dict()} if client is not None else {}),
    )
    write_metrics(run_dir, metrics, EXTRACTOR_METRICS)
    title = f"extractor={cfg.extractor.name} on English WikiANN {cfg.data.split} ({len(selection.sentences)} sentences)"
    print(format_scores(result["scores"], title))
    c = result["counts"]
    print(
        f"\nentities listed: {c['n_listed_entities']}, not found in the sentence: {c['n_unplaced_entities']}; "
        f"{result['seconds']:.1f} s\nwritten: {run_dir / 'extractor_metrics.json'}"
    )
    return metrics


@entry_point("train_extractor", job_type="train_extractor")
def train_main(cfg: DictConfig, task: Task) -> dict:
    return train_task(cfg, task)


@entry_point("eval_extractor", job_type="eval_extractor")
def eval_main(cfg: DictConfig, task: Task) -> dict:
    return eval_task(cfg, task)
