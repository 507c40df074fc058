"""Training pieces shared by every Lightning task (QLoRA, Flan-T5 extractor, encoder baseline).

- `configure_optimizers`: the optimizer and the learning-rate schedule from `_partial_` config nodes
  (`optimizer`, `scheduler`), with one weight-decay rule (`decay_groups`).
- `warmup_schedule`: transformers' warm-up schedules (`get_scheduler`), sized from the trainer's step count.
- `adamw_auto`: paged 8-bit AdamW (bitsandbytes) on CUDA, torch AdamW elsewhere.
- `PretrainedCheckpoint`: Lightning's ModelCheckpoint that keeps Hugging Face folders (`save_pretrained`), not .ckpt.
- `EpochSampler`: a shuffle that is a function of (seed, epoch) and resumes mid-epoch after a checkpoint.
- `SignalSafeSteps`: SIGTERM/SIGINT stop training between two batches, never inside an optimizer step.
- `StepProgress`: a log line every few seconds with the optimizer step, elapsed time and ETA (the progress bar
  shows nothing in a log file under nohup or a scheduler).

The Trainer itself is built from its config node by `eatlab.cli.trainer.build_trainer`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from eatlab.errors import ConfigError

TRAINER_TARGET = "pytorch_lightning.Trainer"  # what a `trainer` node builds unless it names another class


def decay_groups(model, weight_decay: float) -> list[dict]:
    """The trainable parameters in two AdamW groups: decayed (matrices) and not decayed (every 1-D parameter:
    biases and norm weights, the parameters transformers' Trainer exempts for BERT and T5)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": float(weight_decay)}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def warmup_schedule(
    optimizer,
    *,
    total_steps: int,
    name: str = "linear",
    warmup_ratio: float = 0.0,
    warmup_steps: int | None = None,
    min_lr_ratio: float = 0.0,
):
    """transformers' schedule `name` (linear, cosine, constant_with_warmup, ...) over `total_steps` optimizer steps,
    warming up over `warmup_steps` (or `warmup_ratio` of the steps, rounded); `min_lr_ratio` > 0 with cosine
    decays to lr x that ratio (`cosine_with_min_lr`)."""
    from transformers import get_scheduler

    if not 0 <= float(warmup_ratio) < 1:
        raise ConfigError(f"scheduler.warmup_ratio={warmup_ratio}: expected a fraction in [0, 1)")
    total = max(1, int(total_steps))
    warmup = int(warmup_steps) if warmup_steps is not None else int(round(float(warmup_ratio) * total))
    extra = {}
    if min_lr_ratio:
        if name != "cosine":
            raise ConfigError(f"scheduler.min_lr_ratio={min_lr_ratio}: only with scheduler.name=cosine")
        name, extra = "cosine_with_min_lr", {"min_lr_rate": float(min_lr_ratio)}
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=total,
        scheduler_specific_kwargs=extra,
    )


def adamw_auto(params, **kwargs):
    """Paged 8-bit AdamW (bitsandbytes; optimizer states paged to CPU on memory spikes) when the parameters are on
    CUDA, torch AdamW elsewhere (bitsandbytes' paged optimizers need CUDA)."""
    import torch

    params = list(params)
    first = params[0]["params"][0] if isinstance(params[0], dict) else params[0]
    if first.device.type == "cuda":
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def configure_optimizers(module, model, optimizer, scheduler=None) -> dict:
    """What `LightningModule.configure_optimizers` returns: `optimizer(decay groups of model)` with the partial's
    `weight_decay` on matrices only, and `scheduler(opt, total_steps=...)` stepped after every optimizer step."""
    if optimizer is None:
        raise ConfigError("optimizer: none given (the entry config's `optimizer` node, e.g. optimizer=adamw)")
    wd = float(getattr(optimizer, "keywords", {}).get("weight_decay", 0.0))
    opt = optimizer(decay_groups(model, wd))
    module.optimizer_name = type(opt).__name__
    if scheduler is None:
        return {"optimizer": opt}
    sched = scheduler(opt, total_steps=int(module.trainer.estimated_stepping_batches))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


class PretrainedCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose checkpoints are Hugging Face folders written by `pl_module.save_pretrained(dir, info)`.

    Lightning decides what to keep and when (monitor, mode, save_top_k, NaN last, no save in the sanity check);
    only the writing and removing differ. A folder is written to `<dir>.tmp` and swapped in, so a crash never
    leaves a half-written one. The version counter is off: `filename=best` always names `<dirpath>/best`.
    """

    FILE_EXTENSION = ""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("enable_version_counter", False)
        kwargs.setdefault("auto_insert_metric_name", False)
        super().__init__(*args, **kwargs)

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        if trainer.is_global_zero:
            target = Path(filepath)
            tmp = target.with_name(target.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
            trainer.lightning_module.save_pretrained(tmp, {"monitor": self.monitor, "metrics": metrics})
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
        trainer.strategy.barrier("PretrainedCheckpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath

    def _remove_checkpoint(self, trainer, filepath: str) -> None:
        if trainer.is_global_zero and os.path.isdir(filepath):
            shutil.rmtree(filepath)


class SignalSafeSteps(Callback):
    """Runs each training batch inside `eatlab.utils.signals.deferred()`: a SIGTERM or SIGINT during a batch is
    raised when the batch ends, so the checkpoint that ModelCheckpoint(save_on_exception=True) writes on the way
    out is a consistent resume point (weights, optimizer, schedule and data position of the same step). Without
    eatlab's handlers installed (tests, notebooks) Lightning's own SIGTERM flag already stops between batches."""

    def __init__(self):
        self._block = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        try:
            from eatlab.utils import signals
        except ImportError:  # pragma: no cover - older trees without eatlab's signal handling
            return
        self._block = signals.deferred()
        self._block.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        block, self._block = self._block, None
        if block is not None:
            block.__exit__(None, None, None)  # raises Stopped here when a signal came during the batch

    def on_exception(self, trainer, pl_module, exception) -> None:
        block, self._block = self._block, None
        if block is not None:
            block.__exit__(type(exception), exception, exception.__traceback__)


class StepProgress(Callback):
    """`training: step/total steps (elapsed, eta)` through eatlab.utils.progress at most every `every_s` seconds
    and at the last step: a run writing to a file (nohup, Slurm) says how far it is. A resumed run counts from
    the step it resumed at, so the ETA is that of the steps still to run."""

    def __init__(self, every_s: float = 60.0):
        self.every_s = float(every_s)
        self._report = None
        self._start = self._last = 0

    def on_train_start(self, trainer, pl_module) -> None:
        import logging

        from eatlab.utils.progress import progress_logger

        if not trainer.is_global_zero:
            return
        self._start = trainer.global_step
        total = int(trainer.estimated_stepping_batches)
        what = f"training (resumed at step {self._start})" if self._start else "training"
        self._report = progress_logger(total - self._start, what, unit="steps", every_s=self.every_s,
                                       logger=logging.getLogger("eatlab.training"))  # fmt: skip

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        done = trainer.global_step - self._start
        if self._report is not None and done != self._last:  # with accumulation a step spans several batches
            self._last = done
            self._report(done)


class EpochSampler:
    """Shuffled indices whose order is a function of (seed, epoch), so that a run resumed mid-epoch sees the rest
    of the very order it was interrupted in: `resume(epoch, batches)` (called from the module's checkpoint) starts
    the next pass after that many batches of `batch_size` of that epoch's order. Epoch 0's order is
    `torch.randperm(n, Generator(seed))`, the one a `RandomSampler` with that generator draws first; Lightning
    calls `set_epoch` before every later epoch."""

    def __init__(self, n: int, seed: int, batch_size: int):
        self.n, self.seed, self.batch_size = int(n), int(seed), int(batch_size)
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume(self, epoch: int, batches: int) -> None:
        self.epoch, self._skip = int(epoch), int(batches) * self.batch_size
        if self._skip >= self.n:  # saved at the end of an epoch: the next one starts from its beginning
            self.epoch, self._skip = self.epoch + 1, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        import torch

        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=gen).tolist()
        skip, self._skip = self._skip, 0
        return iter(order[skip:])
