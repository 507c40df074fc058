"""`eatlab-train-baseline`: fine-tune a multilingual encoder on English WikiANN, test it on every target language.

    eatlab-train-baseline encoder=xlmr_large data.root=/path/to/wikiann
    eatlab-train-baseline encoder=tiny languages=[zh,ar] data.limit=16      # CPU smoke run

Writes, under the run dir: `<lang>/metrics.json` (the `eatlab.eval.scores.score` dict, `schema_version` and
`run{method: encoder_zero_shot, ...}`, the same family as the EAT pipeline's) and `<lang>/predictions.conll`
(token gold pred) for every language, `summary.json|csv|md` (one row per language), provenance and the
Lightning CSV log (`csv/metrics.csv`; W&B offline too unless `tracking=none`).
"""

from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from eatlab.cli.task import Task, entry_point
from eatlab.cli.trainer import build_trainer
from eatlab.data.languages import LSL_CODES, NSL_CODES, get_language
from eatlab.errors import ConfigError, DataError
from eatlab.eval.scores import SCORE_KEYS
from eatlab.rundir import METRICS_SCHEMA_VERSION, build_metrics, write_metrics

log = logging.getLogger("eatlab")

METHOD = "encoder_zero_shot"
SMOKE_WARNING = (
    "encoder={name}: a tiny random SMOKE model. It checks that the baseline runs; its scores mean nothing."
)
SUMMARY_KEYS = SCORE_KEYS


def target_languages(cfg) -> list[str]:
    """`languages` as a list of known codes (a single string is accepted); ConfigError otherwise."""
    langs = cfg.languages
    if isinstance(langs, str):
        langs = [langs]
    if not isinstance(langs, ListConfig | list | tuple) or not langs:
        raise ConfigError(f"languages={langs}: expected a non-empty list such as [zh,ja]")
    out = [str(x) for x in langs]
    for code in [*out, str(cfg.source_language)]:
        get_language(code)  # ConfigError naming the unknown code
    if len(set(out)) != len(out):
        raise ConfigError(f"languages={out}: a language is listed twice")
    return out


def tracking_view(cfg) -> DictConfig:
    """The config as the shared logger helpers read it: they name runs from `model.id` and `language.code`."""
    view = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    view.model = {"id": str(cfg.encoder.id), "smoke": bool(cfg.encoder.get("smoke", False))}
    view.language = {"code": str(cfg.source_language)}
    return view


def select_all(cfg, languages: list[str]):
    """Source train/dev and every target test selection, read up front so a missing file fails before training."""
    from eatlab.data.loader import select_sentences

    d, t, src = cfg.data, cfg.train, str(cfg.source_language)
    common = {"root": d.root, "source": d.source}
    train = select_sentences(src, t.split, limit=t.limit, **common)
    dev = select_sentences(src, t.dev_split, limit=t.dev_limit, **common)
    tests = {
        lang: select_sentences(
            lang,
            d.split,
            limit=d.limit,
            sample=d.sample,
            seed=d.seed,
            drop_redirects=d.drop_redirects,
            **common,
        )
        for lang in languages
    }
    for name, sel in [(f"{src}/{t.split}", train), (f"{src}/{t.dev_split}", dev)] + [
        (f"{lang}/{d.split}", sel) for lang, sel in tests.items()
    ]:
        if not sel.sentences:
            raise DataError(name, "no sentences selected (check the limit/sample options)")
    return train, dev, tests


def language_metrics(
    sentences, pred_tags, encoded, language: str, seed: int, run_info: dict, extra: dict
) -> dict:
    """metrics.json of one language: the score() dict, schema_version, run{...}, counts and failures."""
    from eatlab.data.bio import tags_to_spans
    from eatlab.eat.attribution import PRED_CLASSES, attribute_sentence
    from eatlab.eval.scores import score

    scores = score([s.tags for s in sentences], pred_tags, [s.tokens for s in sentences], language, seed=seed)
    pred_classes: dict[str, int] = dict.fromkeys(PRED_CLASSES, 0)
    for s, p in zip(sentences, pred_tags):
        _, classes = attribute_sentence(tags_to_spans(s.tags), tags_to_spans(p), "", [], 0)
        for c in classes:
            pred_classes[c] += 1
    n_trunc_sent = sum(1 for e in encoded if e.n_truncated)
    return build_metrics(
        scores,
        failures={"predicted": pred_classes},
        counts={
            "n_words": sum(len(s.tokens) for s in sentences),
            "n_words_truncated": sum(e.n_truncated for e in encoded),
            "n_sentences_truncated": n_trunc_sent,
            "n_words_without_subtokens": sum(e.n_empty for e in encoded),
        },
        run={**run_info, "language": language},
        **extra,
    )


def summary_rows(per_language: dict[str, dict]) -> list[dict]:
    """One row per language plus the means over the NSL, Latin-script and all languages present."""
    rows = []
    for lang, m in per_language.items():
        row = {"language": lang, "n_sentences": m["n_sentences"]}
        row.update({k: m[k] for k in SUMMARY_KEYS})
        row["entity_f1_ci95_low"], row["entity_f1_ci95_high"] = m["entity_f1_ci95"]
        row["n_words_truncated"] = m["counts"]["n_words_truncated"]
        rows.append(row)
    for name, codes in (
        ("mean_nsl", NSL_CODES),
        ("mean_latin", LSL_CODES),
        ("mean_all", tuple(per_language)),
    ):
        group = [r for r in rows if r["language"] in codes]
        if group:
            mean = {"language": name, "n_sentences": sum(r["n_sentences"] for r in group)}
            mean.update({k: sum(r[k] for r in group) / len(group) for k in SUMMARY_KEYS})
            rows.append(mean)
    return rows


def write_summary(run_dir: Path, run_info: dict, rows: list[dict]) -> None:
    from eatlab.utils.io import atomic_write_json, atomic_write_text

    atomic_write_json(
        run_dir / "summary.json", {"schema_version": METRICS_SCHEMA_VERSION, "run": run_info, "rows": rows}
    )
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(run_dir / "summary.csv", buf.getvalue())
    md = [
        f"{METHOD} | {run_info['model']} | dev entity F1 {100 * (run_info['best_dev_entity_f1'] or 0):.2f}",
        "",
        "| language | sentences | entity P | entity R | entity F1 | ref. token micro F1 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        md.append(
            f"| {r['language']} | {r['n_sentences']} | {100 * r['entity_precision']:.2f} | "
            f"{100 * r['entity_recall']:.2f} | {100 * r['entity_f1']:.2f} | {100 * r['reference_token_micro_f1']:.2f} |"
        )
    atomic_write_text(run_dir / "summary.md", "\n".join(md) + "\n")


def log_summary(loggers: list, rows: list[dict], step: int) -> None:
    """Per-language test scores to every logger (CSV row; W&B metrics and a summary table)."""
    from eatlab.tracking.loggers import wandb_logger

    flat = {f"test/{r['language']}/{k}": float(r[k]) for r in rows for k in SUMMARY_KEYS}
    for lg in loggers:
        lg.log_metrics(flat, step=step)
        lg.save()
    wb = wandb_logger(loggers)
    if wb is not None:
        import wandb

        cols = ["language", "n_sentences", *SUMMARY_KEYS]
        wb.experiment.log(
            {"test/summary": wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in rows])}
        )


def print_summary(rows: list[dict], run_info: dict, run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{METHOD} | {run_info['model']} | scores in %")
    for col in ("language", "sentences", "entity P", "entity R", "entity F1", "ref. token micro F1"):
        table.add_column(col, justify="left" if col == "language" else "right")
    for r in rows:
        table.add_row(
            r["language"],
            str(r["n_sentences"]),
            *(
                f"{100 * r[k]:.2f}"
                for k in ("entity_precision", "entity_recall", "entity_f1", "reference_token_micro_f1")
            ),
        )
    console = Console()
    console.print(table)
    if run_info.get("smoke_model"):
        console.print("[bold yellow]smoke model: these scores mean nothing[/]")
    console.print(f"run dir: {run_dir}")


def test_languages(cfg, task: Task, module, dm, test_sels: dict, run_info: dict) -> dict:
    """Tag every language's test selection with the selected model; write its metrics.json and predictions."""
    from eatlab.baselines.encoder import predict_tags
    from eatlab.data.conll import write_conll

    run_dir = task.run_dir
    # the training trainer's settings on a single device: every sentence is predicted once, on this process
    tester = build_trainer(
        cfg, task, devices=1, strategy="auto", logger=False, callbacks=[], enable_checkpointing=False
    )
    per_language: dict[str, dict] = {}
    for lang, sel in test_sels.items():
        t0 = time.perf_counter()
        loader, encoded = dm.predict_loader(sel.sentences)
        preds = predict_tags(tester, module, loader, len(sel.sentences))
        t_pred = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_conll(run_dir / lang / "predictions.conll", sel.sentences, preds)
        metrics = language_metrics(
            sel.sentences, preds, encoded, lang, int(cfg.seed), run_info, {"data": sel.provenance()}
        )
        metrics["seconds"] = {
            "train": run_info["seconds_train"],
            "predict": round(t_pred, 4),
            "evaluation": round(time.perf_counter() - t0, 4),
        }
        write_metrics(run_dir / lang, metrics)
        per_language[lang] = metrics
    return per_language


def run_baseline(cfg: DictConfig, run_dir: Path | None = None) -> dict:
    """Fine-tune, select on dev, test every language; returns summary.json's content ({} on non-zero ranks)."""
    with Task(cfg, METHOD, run_dir) as task:
        return baseline_task(cfg, task)


def baseline_task(cfg: DictConfig, task: Task) -> dict:
    """The `eatlab-train-baseline` job in its Task."""
    import pytorch_lightning as pl
    import torch
    from hydra.utils import instantiate
    from pytorch_lightning.callbacks import ModelCheckpoint

    from eatlab.baselines.encoder import (
        EncoderTagger,
        WikiannTransferDataModule,
        ensure_tiny_encoder,
        load_tokenizer,
    )

    t_start = time.perf_counter()
    run_dir = task.run_dir
    languages = target_languages(cfg)
    enc, tr = cfg.encoder, cfg.train
    smoke = bool(enc.get("smoke", False))
    if smoke:
        log.warning(SMOKE_WARNING.format(name=enc.name))
        ensure_tiny_encoder(enc.id)
    if cfg.data.root is None and cfg.data.source == "local":
        log.warning(
            "data.root is not set: using the in-repo samples (100 sentences per split), not full WikiANN"
        )
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    train_sel, dev_sel, test_sels = select_all(cfg, languages)
    tokenizer = load_tokenizer(enc.id)
    prov = task.provenance(
        {
            "data": {
                "train": train_sel.provenance(),
                "dev": dev_sel.provenance(),
                "test": {lang: sel.provenance() for lang, sel in test_sels.items()},
            },
            "model_key": str(enc.id),
        },
    )
    dm = WikiannTransferDataModule(
        tokenizer,
        train_sel.sentences,
        dev_sel.sentences,
        max_length=enc.max_length,
        eval_max_length=enc.get("eval_max_length"),
        batch_size=enc.batch_size,
        eval_batch_size=enc.eval_batch_size,
        num_workers=tr.num_workers,
        seed=int(cfg.seed),
    )
    module = EncoderTagger(
        str(enc.id),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
    )
    loggers = task.loggers(tracking_view(cfg))  # named from the encoder (built once; the trainer reuses them)
    trainer = build_trainer(
        cfg, task, callback_defaults={"model_checkpoint": {"dirpath": str(run_dir / "checkpoints")}}
    )
    ckpt = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), None)
    precision = trainer.precision
    result: dict = {}
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    t_train = time.perf_counter() - t0
    if trainer.is_global_zero:
        best_path = ckpt.best_model_path if ckpt is not None else ""
        best_epoch = best_step = None
        if best_path:  # the checkpoint with the best English dev entity F1
            state = torch.load(best_path, map_location="cpu", weights_only=False)
            module.load_state_dict(state["state_dict"])
            best_epoch, best_step = int(state["epoch"]), int(state["global_step"])
        run_info = {
            "method": METHOD,
            "model": str(enc.id),
            "encoder": str(enc.name),
            "smoke_model": smoke,
            "source_language": str(cfg.source_language),
            "train_split": str(tr.split),
            "split": str(cfg.data.split),
            "seed": int(cfg.seed),
            "git_commit": prov["git"]["commit"],
            "max_length": int(enc.max_length),
            "eval_max_length": int(enc.get("eval_max_length") or enc.max_length),
            "precision": precision,
            "best_dev_entity_f1": None
            if ckpt is None or ckpt.best_model_score is None
            else float(ckpt.best_model_score),
            "best_epoch": best_epoch,  # 0-based epoch of the selected checkpoint
            "best_step": best_step,
            "epochs": int(trainer.current_epoch),
            "optimizer_steps": int(trainer.global_step),
            "n_train_sentences": len(train_sel.sentences),
            "n_dev_sentences": len(dev_sel.sentences),
            "seconds_train": round(t_train, 4),
        }
        per_language = test_languages(cfg, task, module, dm, test_sels, run_info)
        rows = summary_rows(per_language)
        run_info["seconds_total"] = round(time.perf_counter() - t_start, 4)
        write_summary(run_dir, run_info, rows)
        log_summary(loggers, rows, trainer.global_step)
        if bool(tr.save_model):
            module.model.save_pretrained(str(run_dir / "model"))
            tokenizer.save_pretrained(str(run_dir / "model"))
        if best_path and not bool(tr.keep_checkpoint):
            Path(best_path).unlink(missing_ok=True)
            if not any(Path(best_path).parent.iterdir()):
                Path(best_path).parent.rmdir()
        print_summary(rows, run_info, run_dir)
        result = {"schema_version": METRICS_SCHEMA_VERSION, "run": run_info, "rows": rows}
    return result


@entry_point("train_baseline", job_type=METHOD)
def main(cfg: DictConfig, task: Task) -> dict:
    return baseline_task(cfg, task)
