"""QLoRA as a LightningModule: a 4-bit NF4 base (double quantisation), LoRA adapters, AdamW, warm-up + cosine
(the optimizer and schedule are config nodes: eatlab-finetune's `optimizer` and `scheduler`).

Why these choices (the recipe of Dettmers et al., 2023, which the paper's "QLoRA" names):
- NF4 with double quantisation stores the frozen base in about 0.5 byte per parameter, so a 7B/14B model fits
  one GPU; the matmuls run in the compute dtype (bf16 on GPU, fp32 on CPU).
- `peft.prepare_model_for_kbit_training` casts norms and the output layer to fp32 and enables input gradients
  (and gradient checkpointing on GPU), so the tiny LoRA updates are stable.
- LoRA on every attention and MLP projection: QLoRA's finding is that all linear layers are needed to match full
  fine-tuning; attention-only LoRA underfits.
- Paged 8-bit AdamW on CUDA (optimizer states paged to CPU on memory spikes); plain torch AdamW on CPU, where
  bitsandbytes' paged optimizers do not run (`optimizer=adamw_auto`, eatlab.utils.lightning.adamw_auto).
- Checkpoints hold the trainable (LoRA) weights only, the step losses, the validation history, the data position
  and the torch RNG state, so a run resumed from one continues exactly where it stopped (the frozen base is
  loaded from its weights, as at the start).
- Validation: loss on the held-out slice, and exact match of greedy answers (per direction) on all of it or on its
  first `val_generate` examples; the generation logs its progress (`validation: generated 48/200 answers ...`),
  and a loss-only validation counts its examples (`validation loss: 96/284 examples ...`).
The weights load in `configure_model`, on the device Lightning chose for this process (so DDP puts one copy on
each GPU).
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import pytorch_lightning as pl

from eatlab.errors import ConfigError
from eatlab.finetune.tasks import DIRECTIONS
from eatlab.utils.progress import progress_logger
from eatlab.utils.schemas import Finetune, check_node

log = logging.getLogger(__name__)

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class QLoRASettings:
    """Everything the module needs, read from `finetune.*` (see conf/finetune/eacl_qlora.yaml)."""

    model_source: str
    quantization: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "auto"  # auto: bf16 on a GPU that has it, fp16 on other GPUs, fp32 on CPU
    quant_storage: str | None = None  # FSDP needs the 4-bit weights stored in the compute dtype
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    gradient_checkpointing: str | bool = "auto"  # auto: on for CUDA, off on CPU
    val_max_new_tokens: int = 32
    val_generate: int | None = None  # greedy answers for the first N validation examples; None: all, 0: none
    trust_remote_code: bool = False
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        """The `finetune` node's schema (eatlab.utils.schemas.Finetune, what `eatlab-finetune` checks before any
        work) applied to these settings: one line naming the key, also for a module built without a config."""
        check_node(
            "finetune",
            Finetune,
            {
                "quantization": self.quantization,
                "double_quant": self.double_quant,
                "compute_dtype": self.compute_dtype,
                "quant_storage": self.quant_storage,
                "gradient_checkpointing": self.gradient_checkpointing,
                "val_max_new_tokens": self.val_max_new_tokens,
                "val_generate": self.val_generate,
                "lora": {"r": self.lora_r, "alpha": self.lora_alpha, "dropout": self.lora_dropout,
                         "target_modules": list(self.target_modules)},
            },
        )  # fmt: skip


def _torch_dtype(name: str, device_type: str):
    import torch

    if name == "auto":
        if device_type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise ConfigError(f"finetune.compute_dtype={name}: expected auto, float32, bfloat16 or float16")
    return table[name]


def load_base_model(s: QLoRASettings, device):
    """The base causal LM, 4-bit NF4 (double quantisation) unless `quantization=none`, on `device`."""
    import torch
    from transformers import AutoModelForCausalLM

    from eatlab.llm.hf_load import PRETRAINED_KWARGS
    from eatlab.llm.identity import warn_if_slow_bf16

    dtype = _torch_dtype(s.compute_dtype, device.type)
    warn_if_slow_bf16(str(dtype), device.type)
    kwargs: dict = {"dtype": dtype, "trust_remote_code": s.trust_remote_code, **PRETRAINED_KWARGS}
    if s.quantization == "nf4":
        from transformers import BitsAndBytesConfig

        qkw = {}
        if s.quant_storage:
            qkw["bnb_4bit_quant_storage"] = _torch_dtype(s.quant_storage, device.type)
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=s.double_quant,
            bnb_4bit_compute_dtype=dtype,
            **qkw,
        )
        kwargs["device_map"] = {
            "": device.index if device.type == "cuda" and device.index is not None else str(device)
        }
    try:
        model = AutoModelForCausalLM.from_pretrained(s.model_source, **kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"model: cannot load {s.model_source!r} for fine-tuning ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}); offline, point model.path at a local folder"
        ) from None
    if s.quantization == "none":
        model = model.to(device)
    model.config.use_cache = False
    return model, torch.device(device)


class QLoRAModule(pl.LightningModule):
    """Trains LoRA adapters on a frozen (4-bit) causal LM; `save_adapter` writes them in peft format."""

    progress_every_s = 10.0  # at most one validation progress line per this many seconds, plus the final one

    strict_loading = False  # checkpoints hold the trainable weights only (see on_save_checkpoint)

    def __init__(
        self,
        settings: QLoRASettings,
        pad_id: int,
        eos_ids: list[int],
        optimizer: Callable,
        scheduler: Callable | None = None,
        train_sampler=None,
    ):
        """`optimizer(param_groups)` and `scheduler(opt, total_steps=...)` are the `_partial_` config nodes;
        `train_sampler` (an EpochSampler) is told where to restart when a checkpoint is loaded."""
        super().__init__()
        settings.validate()
        self.settings = settings
        self.pad_id = int(pad_id)
        self.eos_ids = list(eos_ids)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.train_sampler = train_sampler
        self.optimizer_name: str | None = None
        self.epoch_batches = 0  # training batches done in the current epoch (the resume position)
        self.resumed_at_step: int | None = None  # the global step of the checkpoint this run resumed from
        self.model = None
        self.quantized_layers = 0  # bitsandbytes Linear4bit layers of the loaded base
        self.tokenizer = None  # set by the caller, for decoding validation answers
        self.step_losses: dict[int, list[float]] = defaultdict(list)
        self.val_history: list[dict] = []
        self._val: dict = {}

    # -- model -------------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.model is not None:
            return
        import torch
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        s = self.settings
        device = self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
        base, _ = load_base_model(s, device)
        use_gc = (
            device.type == "cuda" if s.gradient_checkpointing == "auto" else bool(s.gradient_checkpointing)
        )
        if s.quantization == "nf4":
            # non-reentrant checkpointing: the reentrant kind breaks DDP's gradient hooks
            base = prepare_model_for_kbit_training(
                base,
                use_gradient_checkpointing=use_gc,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        elif use_gc:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            base.enable_input_require_grads()
        present = {name.rsplit(".", 1)[-1] for name, _ in base.named_modules()}
        missing = [m for m in s.target_modules if m not in present]
        if missing:
            raise ConfigError(
                f"finetune.lora.target_modules: {missing} not in the model (it has e.g. {sorted(present)[:12]})"
            )
        lora = LoraConfig(
            r=s.lora_r,
            lora_alpha=s.lora_alpha,
            lora_dropout=s.lora_dropout,
            target_modules=list(s.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        self.quantized_layers = sum(type(m).__name__ == "Linear4bit" for m in base.modules())
        self.model = get_peft_model(base, lora)
        self.model.train()  # from_pretrained leaves eval mode, which would switch LoRA dropout off
        trainable, total = self.model.get_nb_trainable_parameters()
        log.info(
            "LoRA: %d trainable of %d parameters (%.3f%%)", trainable, total, 100 * trainable / max(1, total)
        )

    def trainable_parameters(self) -> tuple[int, int]:
        return self.model.get_nb_trainable_parameters()

    # -- training ----------------------------------------------------------------------------------------------
    def forward(self, batch) -> tuple:
        """(mean loss over answer tokens, number of answer tokens) of a left-padded batch (see tasks.Collator)."""
        import torch.nn.functional as F

        keep = int(batch["keep"])
        logits = self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            logits_to_keep=keep,
        ).logits
        labels = batch["labels"][:, -(keep - 1) :]
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100
        )
        return loss, int((labels != -100).sum())

    def on_train_epoch_start(self) -> None:
        self.epoch_batches = 0
        if self.train_sampler is not None:  # also when DDP wraps it (Lightning then sets the wrapper's epoch)
            self.train_sampler.set_epoch(self.current_epoch)

    def training_step(self, batch, batch_idx):
        loss, _ = self(batch)
        self.step_losses[int(self.global_step)].append(float(loss.detach()))
        self.epoch_batches += 1
        self.log(
            "train_loss",
            loss,
            on_step=True,
            on_epoch=False,
            prog_bar=True,
            batch_size=len(batch["input_ids"]),
        )
        return loss

    def optimizer_step_losses(self) -> list[float]:
        """Mean training loss of each optimizer step (micro-batches of one accumulation window averaged)."""
        return [sum(v) / len(v) for _, v in sorted(self.step_losses.items())]

    def configure_optimizers(self):
        from eatlab.utils.lightning import configure_optimizers

        return configure_optimizers(self, self.model, self.optimizer_factory, self.scheduler_factory)

    # -- checkpoints -------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep the trainable weights only (the frozen base is reloaded from its files), plus what the summary and
        an exact resume need: step losses, validation history, the position in the epoch and the RNG state (LoRA
        dropout draws from it)."""
        import torch

        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["eatlab"] = {
            "step_losses": {int(k): list(v) for k, v in self.step_losses.items()},
            "val_history": list(self.val_history),
            "epoch": int(self.current_epoch),
            "epoch_batches": int(self.epoch_batches),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        import torch

        state = checkpoint.get("eatlab")
        if not state:
            return
        self.step_losses = defaultdict(list, {int(k): list(v) for k, v in state["step_losses"].items()})
        self.val_history = list(state["val_history"])
        self.epoch_batches = int(state["epoch_batches"])
        self.resumed_at_step = int(checkpoint["global_step"])
        if self.train_sampler is not None and self.trainer.world_size == 1:  # DDP: the epoch restarts
            self.train_sampler.resume(state["epoch"], self.epoch_batches)
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    # -- validation --------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val = {
            "loss_sum": 0.0,
            "tokens": 0,
            "examples": 0,
            "hits": defaultdict(int),
            "n": defaultdict(int),
            "samples": [],
            "to_generate": self._answers_to_generate(),
            "t0": time.perf_counter(),
            "last_log": time.perf_counter(),
        }
        # no answer to generate: the loss alone says how far it is (`validation loss: 96/284 examples (...)`)
        quiet = self._val["to_generate"] or self.global_rank != 0 or self.trainer.sanity_checking
        self._val["loss_progress"] = None if quiet else progress_logger(
            self._examples_this_loop(), "validation loss", unit="examples", every_s=self.progress_every_s, logger=log
        )  # fmt: skip

    def _examples_this_loop(self) -> int:
        """This process's validation examples in this loop: all, or as many as the loop's batches hold."""
        trainer = self.trainer
        loader = trainer.val_dataloaders
        if isinstance(loader, list | tuple):
            loader = loader[0]
        batches = (trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches)[0]
        n = len(loader.sampler)
        return min(n, int(batches) * loader.batch_size) if math.isfinite(batches) else n

    def _answers_to_generate(self) -> int:
        """How many greedy answers this process generates in this validation loop: its examples (all, or the
        sanity check's batches), capped by its share of `val_generate` (the first N examples in loader order;
        under DDP the sampler deals example i to process i % world_size)."""
        n = self._examples_this_loop()
        cap = self.settings.val_generate
        if cap is not None:
            n = min(n, len(range(self.global_rank, cap, self.trainer.world_size)))
        return n

    def validation_step(self, batch, batch_idx):
        v = self._val
        loss, n_tok = self(batch)
        v["loss_sum"] += float(loss) * n_tok
        v["tokens"] += n_tok
        v["examples"] += len(batch["answers"])
        k = min(len(batch["answers"]), v["to_generate"] - sum(v["n"].values()))
        if k <= 0:  # the loss alone (finetune.val_generate reached)
            if v["loss_progress"] is not None:
                v["loss_progress"](v["examples"])
            return
        ids, mask = batch["prompt_ids"][:k], batch["prompt_mask"][:k]
        width = int(mask.sum(1).max())  # drop the padding columns that only the rows left out needed
        answers = self.generate_greedy(ids[:, -width:], mask[:, -width:], self.settings.val_max_new_tokens)
        for pred, gold, direction in zip(answers, batch["answers"], batch["directions"]):
            hit = pred.strip() == gold.strip()
            v["hits"][direction] += hit
            v["n"][direction] += 1
            if len(v["samples"]) < 10:
                v["samples"].append({"direction": direction, "gold": gold, "pred": pred})
        done = sum(v["n"].values())
        if done < v["to_generate"] and time.perf_counter() - v["last_log"] >= self.progress_every_s:
            self._log_progress(done, v["to_generate"])

    def _log_progress(self, done: int, total: int, final: bool = False) -> None:
        """`validation: generated 48/200 answers (12.3 s, 3.9 answers/s, eta 39 s)`, from the first process."""
        v = self._val
        v["last_log"] = now = time.perf_counter()
        if self.global_rank != 0:
            return
        elapsed = now - v["t0"]
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = "" if final or rate <= 0 else f", eta {(total - done) / rate:.0f} s"
        share = "" if final or self.trainer.world_size == 1 else " (this process's share)"
        log.info(
            "validation: generated %d/%d answers%s (%.1f s, %.1f answers/s%s)",
            done, total, share, elapsed, rate, eta,
        )  # fmt: skip

    def generate_greedy(self, prompt_ids, prompt_mask, max_new_tokens: int) -> list[str]:
        """Greedy answers for left-padded prompts (what the pipeline's greedy decoding would answer)."""
        from eatlab.utils.generation import greedy_texts

        return greedy_texts(
            self.model, self.tokenizer, prompt_ids, prompt_mask,
            max_new_tokens=max_new_tokens, eos_token_id=self.eos_ids, pad_token_id=self.pad_id,
        )  # fmt: skip

    def on_validation_epoch_end(self) -> None:
        """Log the loss over every validation example and exact match over the generated ones.

        The counts are summed over processes first, so every process logs the same keys and values (a key logged
        by some processes only would hang DDP's reduction) and the metrics weigh every example alike.
        """
        v = self._val
        summed = [v["loss_sum"], v["tokens"], v["examples"], v["to_generate"]]
        for d in DIRECTIONS:
            summed += [v["hits"][d], v["n"][d]]
        if self.trainer.world_size > 1:
            import torch

            summed = self.trainer.strategy.reduce(
                torch.tensor(summed, dtype=torch.float64, device=self.device), reduce_op="sum"
            ).tolist()
        loss_sum, tokens, examples, to_generate = summed[:4]
        hits = {d: summed[4 + 2 * i] for i, d in enumerate(DIRECTIONS)}
        n = {d: int(summed[5 + 2 * i]) for i, d in enumerate(DIRECTIONS)}
        generated = sum(n.values())
        if generated:
            self._log_progress(generated, int(to_generate), final=True)
        metrics = {
            "val_loss": loss_sum / tokens if tokens else float("nan"),
            "val_generated": generated,  # the examples that exact match is computed over
        }
        if generated:
            metrics["val_exact_match"] = sum(hits.values()) / generated
        for d in DIRECTIONS:
            if n[d]:
                metrics[f"val_exact_match_{d}"] = hits[d] / n[d]
        for k, val in metrics.items():
            self.log(k, float(val), prog_bar=k in ("val_loss", "val_exact_match"), sync_dist=True)
        metrics.setdefault("val_exact_match", None)  # null in the summary: no answer generated
        metrics["val_examples"] = int(examples)  # the examples that the loss is computed over
        self.val_history.append({"step": int(self.global_step), **metrics, "samples": v["samples"]})

    # -- saving ------------------------------------------------------------------------------------------------
    def save_adapter(self, path) -> None:
        """The LoRA weights and adapter_config.json in peft format (`PeftModel.from_pretrained` reads them)."""
        self.model.save_pretrained(str(path))
