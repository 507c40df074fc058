"""`eatlab-finetune`: QLoRA-tune the translation LLM on EACL and save the adapter for `finetune=eacl_qlora`.

    eatlab-finetune finetune=eacl_qlora language=zh model=qwen2.5-7b finetune.eacl_root=/data/eacl
    eatlab-finetune -m language=zh,ja                       # one adapter per language
    eatlab-finetune finetune.languages=[zh,ja]              # one adapter for both
    eatlab-finetune finetune.report_only=true finetune.languages=[ar,ja,ko,ru,zh]   # the filter table only

Writes into the run dir: eacl_filter_report.json (+ the table on stdout), finetune_metrics.json, provenance,
csv/ and wandb/ logs; and the adapter to `<finetune.output_root>/<langs>-<hash>/` with the pointer
`<finetune.output_root>/<langs>` updated (see eatlab/finetune/adapter.py).
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from eatlab.cli.task import Task, entry_point
from eatlab.cli.trainer import build_trainer
from eatlab.errors import ConfigError

log = logging.getLogger("eatlab.finetune")
# in the adapter folder while training: the Lightning checkpoints that a re-run of the same training resumes from
CHECKPOINTS = "checkpoints"


# --- config pieces ------------------------------------------------------------------------------------------------
def base_model(cfg) -> tuple[str, str, bool]:
    """(what from_pretrained loads, the model key of the base weights, smoke?) for `cfg.model`, resolved exactly as
    the pipeline's LLM layer resolves it (`model.path` wins over `model.id`; the smoke model is built on first use).
    """
    from eatlab.llm.factory import is_smoke, model_source
    from eatlab.llm.identity import make_model_key

    source, local = model_source(cfg)
    m = cfg.model
    key = make_model_key(m.id, m.get("revision"), source if local else None, None,
                         hash_weights=bool(m.get("hash_weights", True)))  # fmt: skip
    return source, key, is_smoke(cfg)


def settings_from_config(cfg, source: str):
    from eatlab.finetune.module import QLoRASettings

    f = cfg.finetune
    quant_storage = f.get("quant_storage")
    if quant_storage is None and is_fsdp(cfg) and f.quantization == "nf4":
        quant_storage = "bfloat16" if f.compute_dtype == "auto" else f.compute_dtype
    return QLoRASettings(
        model_source=source,
        quantization=str(f.quantization),
        double_quant=bool(f.double_quant),
        compute_dtype=str(f.compute_dtype),
        quant_storage=quant_storage,
        lora_r=int(f.lora.r),
        lora_alpha=float(f.lora.alpha),
        lora_dropout=float(f.lora.dropout),
        target_modules=tuple(f.lora.target_modules),
        gradient_checkpointing=f.gradient_checkpointing,
        val_max_new_tokens=int(f.val_max_new_tokens),
        val_generate=None if f.get("val_generate") is None else int(f.val_generate),
        trust_remote_code=bool(cfg.model.get("trust_remote_code", False)),
    )


def is_fsdp(cfg) -> bool:
    strategy = cfg.trainer.get("strategy")
    if OmegaConf.is_dict(strategy):
        return str(strategy.get("_target_", "")).endswith("FSDPStrategy")
    return str(strategy) == "fsdp"


def decoder_layer_classes(source: str) -> set | None:
    """The model's transformer block classes (its `_no_split_modules`): what FSDP wraps and checkpoints."""
    import sys

    from transformers import AutoConfig, AutoModelForCausalLM

    mcfg = AutoConfig.from_pretrained(source)
    cls = AutoModelForCausalLM._model_mapping[type(mcfg)]
    mod = sys.modules[cls.__module__]
    return {getattr(mod, n) for n in (cls._no_split_modules or []) if hasattr(mod, n)} or None


def build_strategy(cfg, source: str):
    """`trainer.strategy`: a name for Lightning, or its node instantiated, where the policy `decoder_layers`
    (conf/trainer/fsdp.yaml) stands for the model's transformer block classes."""
    strategy = cfg.trainer.get("strategy", "auto")
    if not OmegaConf.is_dict(strategy):
        return strategy
    from hydra.utils import instantiate

    policies = {}
    for key in ("auto_wrap_policy", "activation_checkpointing_policy"):
        if strategy.get(key) == "decoder_layers":
            policies[key] = decoder_layer_classes(source)
    return instantiate(strategy, **policies)


def training_config(cfg) -> dict:
    """What names a training (enters the adapter's hash): the finetune, trainer, optimizer and scheduler settings,
    paths excluded, and settings that change no weight (val_generate: how many validation answers are generated;
    callbacks)."""
    f = OmegaConf.to_container(cfg.finetune, resolve=True)
    for k in ("adapter_path", "output_root", "eacl_root", "update_pointer", "report_only", "num_workers"):
        f.pop(k, None)
    f.pop("val_generate", None)
    t = OmegaConf.to_container(cfg.trainer, resolve=True)
    for k in ("enable_progress_bar", "log_every_n_steps", "enable_model_summary"):
        t.pop(k, None)
    out = {"finetune": f, "trainer": t, "seed": int(cfg.seed)}
    for node in ("optimizer", "scheduler"):
        if cfg.get(node) is not None:
            out[node] = OmegaConf.to_container(cfg[node], resolve=True)
    return out


# --- the job ------------------------------------------------------------------------------------------------------
def prepare_data(cfg, run_dir: Path):
    """Filter, split and mix the EACL pairs of `finetune.languages`; print and save the keep report."""
    from eatlab.finetune.eacl import FilterOptions, filter_report, format_report, mix, prepare_language
    from eatlab.utils.io import atomic_write_json

    f = cfg.finetune
    languages = [str(x) for x in f.languages]
    if not languages:
        raise ConfigError("finetune.languages: name at least one language")
    opts = FilterOptions.from_config(f.filters)
    seed = int(cfg.seed)
    splits = [
        prepare_language(
            f.eacl_root,
            lang,
            opts,
            float(f.val_fraction),
            f.get("val_max"),
            seed,
            float(f.get("test_fraction", 0.05)),
            f.get("test_max", 200),
        )
        for lang in languages
    ]
    report = filter_report(splits)
    report["source"] = str(f.eacl_root) if f.eacl_root else "in-repo sample (eatlab/resources/samples/eacl)"
    atomic_write_json(run_dir / "eacl_filter_report.json", report)
    print("EACL pairs kept by each filter step (match steps are cumulative):")
    print(format_report(report))
    train, val = mix(splits, seed)
    return languages, splits, report, train, val


def run_finetune(cfg: DictConfig, run_dir: Path | None = None) -> dict:
    """Train the adapter (or only report the filters); return the summary written to finetune_metrics.json."""
    with Task(cfg, "finetune", run_dir) as task:
        return finetune_task(cfg, task)


def finetune_task(cfg: DictConfig, task: Task) -> dict:
    """The `eatlab-finetune` job in its Task."""
    from eatlab.utils.io import atomic_write_json

    t_start = time.perf_counter()
    run_dir = task.run_dir
    f = cfg.finetune
    if f.name == "none":
        raise ConfigError("finetune=none: nothing to train; use finetune=eacl_qlora")
    languages, splits, report, train_pairs, val_pairs = prepare_data(cfg, run_dir)
    if f.get("report_only"):
        summary = {"report_only": True, "filter_report": report}
        atomic_write_json(run_dir / "finetune_metrics.json", summary)
        return summary

    import pytorch_lightning as pl
    import torch
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer

    from eatlab.data.languages import Language
    from eatlab.finetune import adapter as ad
    from eatlab.finetune.module import QLoRAModule
    from eatlab.finetune.tasks import Collator, Templates, build_examples, encode_examples, examples_sha256
    from eatlab.utils.lightning import EpochSampler

    pl.seed_everything(int(cfg.seed), workers=True)
    source, model_key, smoke = base_model(cfg)
    if smoke:
        log.warning(
            "model=%s: a tiny random SMOKE model; the adapter checks the code path and means nothing",
            cfg.model.id,
        )
    templates = Templates.from_config(f.templates, languages=(Language.from_config(cfg),))
    directions = [str(d) for d in f.directions]
    train_ex = build_examples(train_pairs, directions, templates)
    val_ex = build_examples(val_pairs, directions, templates)
    data_sha = examples_sha256(train_ex, val_ex)
    try:
        tok = AutoTokenizer.from_pretrained(
            source, trust_remote_code=bool(cfg.model.get("trust_remote_code", False))
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model: cannot load the tokenizer of {source!r} ({type(exc).__name__})") from None
    if not tok.chat_template:
        raise ConfigError(f"model: {source!r} has no chat template (tune an -Instruct model)")
    train_enc, long_train = encode_examples(tok, train_ex, int(f.max_length))
    val_enc, long_val = encode_examples(tok, val_ex, int(f.max_length))
    if not train_enc:
        raise ConfigError(
            "finetune: no training example left after filtering (check languages, filters, max_length)"
        )
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eos_ids = sorted(
        {
            i
            for i in [tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")]
            if isinstance(i, int) and i >= 0
        }
    )

    # the order is the sampler's (seed, epoch); the loader's own generator keeps its per-iteration seed draw off
    # the global RNG, which LoRA dropout uses and a checkpoint restores
    sampler = EpochSampler(len(train_enc), int(cfg.seed), int(f.batch_size))
    train_loader = DataLoader(
        train_enc, batch_size=int(f.batch_size), sampler=sampler, collate_fn=Collator(pad_id),
        num_workers=int(f.num_workers), generator=torch.Generator().manual_seed(int(cfg.seed)),
    )  # fmt: skip
    val_loader = (
        DataLoader(val_enc, batch_size=int(f.eval_batch_size), shuffle=False,
                   collate_fn=Collator(pad_id, with_prompts=True), num_workers=int(f.num_workers))
        if val_enc else None
    )  # fmt: skip

    module = QLoRAModule(
        settings_from_config(cfg, source), pad_id, eos_ids, optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None, train_sampler=sampler,
    )  # fmt: skip
    module.tokenizer = tok
    run_hash = ad.training_hash(data_sha, model_key, training_config(cfg))
    out_dir = ad.version_dir(f.output_root, languages, run_hash)
    prov = task.provenance(
        {"base_model": {"source": source, "model_key": model_key, "smoke": smoke},
                       "data_sha256": data_sha, "adapter_dir": str(out_dir)},
    )  # fmt: skip

    ckpt_node = (cfg.get("callbacks") or {}).get("model_checkpoint") or {}
    ckpt_dir = Path(ckpt_node.get("dirpath") or out_dir / CHECKPOINTS)
    trainer = build_trainer(
        cfg, task, strategy=build_strategy(cfg, source),
        callback_defaults={"model_checkpoint": {"dirpath": str(ckpt_dir)}},
    )  # fmt: skip
    ckpt_path = resume_checkpoint(cfg.get("ckpt_path"), ckpt_dir)
    t_fit = time.perf_counter()
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=ckpt_path)
    fit_seconds = time.perf_counter() - t_fit
    last_val = module.val_history[-1]["step"] if module.val_history else None
    if val_loader is not None and last_val != trainer.global_step:  # stopped by max_steps mid-epoch
        trainer.validate(module, dataloaders=val_loader, verbose=False)
    _save_adapter(trainer, module, out_dir)
    if not trainer.is_global_zero:
        return {}
    if ckpt_dir.is_dir() and not cfg.get("keep_checkpoints", False):
        shutil.rmtree(ckpt_dir)  # the adapter is saved: nothing left to resume

    losses = module.optimizer_step_losses()
    k = min(3, len(losses))
    trainable, total = module.trainable_parameters()
    val_last = {
        key: v
        for key, v in (module.val_history[-1] if module.val_history else {}).items()
        if key != "samples"
    }
    metrics = {
        "optimizer_steps": int(trainer.global_step),
        "epochs": int(trainer.current_epoch),
        "train_loss_per_step": losses,
        "train_loss_first3_mean": sum(losses[:k]) / k if k else None,
        "train_loss_last3_mean": sum(losses[-k:]) / k if k else None,
        "validation": val_last,
        "validation_history": module.val_history,
        "fit_seconds": round(fit_seconds, 3),
        "total_seconds": round(time.perf_counter() - t_start, 3),
    }
    meta = {
        "format": "peft LoRA adapter (PeftModel.from_pretrained); eatlab finetune=eacl_qlora",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "base_model": {"id": cfg.model.id, "source": source, "model_key": model_key, "smoke": smoke},
        "languages": languages,
        "directions": directions,
        "hash": run_hash,
        "data": {
            "sha256": data_sha,
            "source": report["source"],
            "files_sha256": {s.language: s.sha256 for s in splits},
            "train_pairs": len(train_pairs),
            "val_pairs": len(val_pairs),
            "train_examples": len(train_enc),
            "val_examples": len(val_enc),
            "dropped_too_long": {"train": long_train, "val": long_val},
            "filter_counts": {lang: r["counts"] for lang, r in report["languages"].items()},
        },
        "config": training_config(cfg),
        "training": {
            "resumed_from": ckpt_path,
            "resumed_at_step": module.resumed_at_step,
            "device": str(module.device),
            "precision": str(trainer.precision),
            "strategy": type(trainer.strategy).__name__,
            "world_size": int(trainer.world_size),
            "optimizer": getattr(module, "optimizer_name", None),
            "quantized_linear_layers": int(module.quantized_layers),
            "trainable_parameters": int(trainable),
            "total_parameters": int(total),
        },
        "metrics": metrics,
        "run_dir": str(run_dir),
        "git_commit": prov["git"]["commit"],
    }
    ad.write_metadata(out_dir, meta)
    pointer = None
    if f.get("update_pointer", True):
        pointer = ad.update_pointer(ad.pointer_path(f.output_root, languages), out_dir)
    summary = {**meta, "adapter_dir": str(out_dir), "pointer": str(pointer) if pointer else None}
    atomic_write_json(run_dir / "finetune_metrics.json", summary)
    _print_summary(summary)
    return summary


def resume_checkpoint(setting, ckpt_dir: Path) -> str | None:
    """`ckpt_path`: auto -> `<ckpt_dir>/last.ckpt` when an interrupted run of this training left one; null -> none;
    anything else -> that file (ConfigError when missing)."""
    if setting is None or str(setting).lower() in ("null", "none", "false"):
        return None
    if str(setting) == "auto":
        last = ckpt_dir / "last.ckpt"
        if last.exists():
            log.warning("resuming the interrupted training from %s (ckpt_path=null starts afresh)", last)
            return str(last)
        return None
    if not Path(str(setting)).is_file():
        raise ConfigError(f"ckpt_path={setting}: no such checkpoint file")
    return str(setting)


def _save_adapter(trainer, module, out_dir: Path) -> None:
    """Rank 0 writes the peft files; under FSDP the LoRA weights are gathered first."""
    from pytorch_lightning.strategies import FSDPStrategy

    if isinstance(trainer.strategy, FSDPStrategy):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with FSDP.summon_full_params(
            trainer.strategy.model, writeback=False, rank0_only=True, offload_to_cpu=True
        ):
            if trainer.is_global_zero:
                module.save_adapter(out_dir)
    elif trainer.is_global_zero:
        module.save_adapter(out_dir)


def _print_summary(s: dict) -> None:
    m = s["metrics"]
    v = m.get("validation") or {}
    first, last = m["train_loss_first3_mean"], m["train_loss_last3_mean"]
    print(f"adapter: {s['adapter_dir']}" + (f"  (pointer: {s['pointer']})" if s.get("pointer") else ""))
    print(
        f"steps {m['optimizer_steps']}, train loss {first:.4f} (first 3) -> {last:.4f} (last 3), "
        f"{m['fit_seconds']:.1f}s; val loss {v.get('val_loss', float('nan')):.4f} on {v.get('val_examples', 0)} "
        "examples, "
        + (
            f"val exact match {v['val_exact_match']:.3f} on {v.get('val_generated', 0)} generated answers"
            if v.get("val_exact_match") is not None
            else "no validation answer generated"
        )
    )
    print(
        f"data sha256 {s['data']['sha256']}; use it with: eatlab finetune=eacl_qlora finetune.adapter_path={s['adapter_dir']}"
    )


@entry_point("finetune", job_type="finetune")
def main(cfg: DictConfig, task: Task) -> dict:
    return finetune_task(cfg, task)


if __name__ == "__main__":
    main()
