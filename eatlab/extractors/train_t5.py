"""Train a text-to-text English NER extractor of the T5 family with Lightning.

Input = the loader's INSTRUCTION + the English sentence (the same text `FlanT5Extractor` feeds at inference);
target = `(PER, John Smith) (LOC, London)` in sentence order, empty when the sentence has no entity.
Validation generates on dev, parses with the pipeline's parser, places the entity strings on the English tokens
and scores them with the project's scorer; the best dev F1 is kept as a Hugging Face folder that
`extractor=flan_t5 extractor.checkpoint=DIR` loads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from eatlab.data.bio import VALID_TAGS, tags_to_spans
from eatlab.data.record import Sentence
from eatlab.errors import ConfigError, DataError
from eatlab.extractors.evaluate import entity_tags
from eatlab.extractors.flan_t5 import INSTRUCTION
from eatlab.llm.parse import parse_entity_list

log = logging.getLogger(__name__)
CHECKPOINT_INFO = "eatlab_checkpoint.json"
DEV_OUTPUTS = "dev_outputs.jsonl"  # the best model's generated text for each dev sentence


# ------------------------------------------------------------------------------------------------ data
def _to_iob2(tags: list[str]) -> list[str]:
    """IOB1 (CoNLL-2003: `I-` starts an entity, `B-` only between two of the same type) -> IOB2; IOB2 unchanged."""
    out = []
    for i, tag in enumerate(tags):
        if tag.startswith("I-") and (i == 0 or tags[i - 1][2:] != tag[2:] or tags[i - 1] == "O"):
            tag = "B-" + tag[2:]
        out.append(tag)
    return out


def read_english_ner(
    path: str | Path, split: str = "train", drop_types: tuple[str, ...] = ("MISC",)
) -> list[Sentence]:
    """Sentences of any English CoNLL NER file: WikiANN (`token tag`) or CoNLL-2003 (`token POS chunk tag`).

    `-DOCSTART-` lines are skipped, IOB1 is converted to IOB2, tags of `drop_types` become O; any other tag
    outside PER/ORG/LOC raises DataError with file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file does not exist")
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []

    def flush() -> None:
        if tokens:
            sentences.append(Sentence(f"en-{split}-{len(sentences)}", "en", list(tokens), _to_iob2(tags)))
            tokens.clear()
            tags.clear()

    with path.open(encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            cols = raw.split()
            if not cols or cols[0] == "-DOCSTART-":
                flush()
                continue
            if len(cols) < 2:
                raise DataError(
                    path, f"expected 'token ... tag', got a single column: {raw.strip()[:40]!r}", lineno
                )
            token, tag = cols[0], cols[-1]
            if token.startswith("en:") and len(token) > 3:
                token = token[3:]
            if tag != "O" and tag[2:] in drop_types:
                tag = "O"
            if tag not in VALID_TAGS:
                raise DataError(path, f"unknown tag {tag!r} (expected O, B-/I-PER, ORG, LOC)", lineno)
            tokens.append(token)
            tags.append(tag)
    flush()
    if not sentences:
        raise DataError(path, "file is empty (no sentences)")
    return sentences


def target_text(sentence: Sentence) -> str:
    """`(TYPE, entity) (TYPE, entity)` in sentence order; entity text = its tokens joined by single spaces."""
    spans = tags_to_spans(sentence.tags, "conlleval")
    return " ".join(f"({sp.type}, {' '.join(sentence.tokens[sp.start : sp.end])})" for sp in spans)


def source_text(sentence: Sentence) -> str:
    return INSTRUCTION + sentence.text


@dataclass
class EncodedSplit:
    sentences: list[Sentence]
    input_ids: list[list[int]]
    labels: list[list[int]]
    stats: dict = field(default_factory=dict)


def encode_split(
    tokenizer, sentences: list[Sentence], max_source_len: int, max_target_len: int, name: str
) -> EncodedSplit:
    """Tokenize sources and targets, cut them at the length limits and count (and warn about) what was cut."""
    src = tokenizer([source_text(s) for s in sentences], truncation=False)["input_ids"]
    tgt = tokenizer(text_target=[target_text(s) for s in sentences], truncation=False)["input_ids"]
    eos = tokenizer.eos_token_id
    n_src = sum(len(x) > max_source_len for x in src)
    n_tgt = sum(len(y) > max_target_len for y in tgt)

    def cut(ids: list[int], limit: int) -> list[int]:
        return ids if len(ids) <= limit else ids[: limit - 1] + [eos]

    stats = {
        "n_examples": len(sentences),
        "n_source_truncated": n_src,
        "n_target_truncated": n_tgt,
        "max_source_tokens": max((len(x) for x in src), default=0),
        "max_target_tokens": max((len(y) for y in tgt), default=0),
        "max_source_len": max_source_len,
        "max_target_len": max_target_len,
    }
    if n_src or n_tgt:
        log.warning(
            "%s: %d of %d sources longer than %d tokens and %d targets longer than %d tokens were truncated",
            name,
            n_src,
            len(sentences),
            max_source_len,
            n_tgt,
            max_target_len,
        )
    return EncodedSplit(
        sentences,
        [cut(x, max_source_len) for x in src],
        [cut(y, max_target_len) for y in tgt],
        stats,
    )


class _SplitDataset(Dataset):
    def __init__(self, enc: EncodedSplit):
        self.enc = enc

    def __len__(self) -> int:
        return len(self.enc.sentences)

    def __getitem__(self, i: int) -> int:
        return i


class NERTextDataModule(pl.LightningDataModule):
    """English NER as text-to-text examples over train/dev(/test) CoNLL files (WikiANN or CoNLL-2003 style)."""

    def __init__(
        self,
        tokenizer,
        train_file: str | Path,
        dev_file: str | Path,
        test_file: str | Path | None = None,
        *,
        max_source_len: int = 256,
        max_target_len: int = 128,
        batch_size: int = 16,
        eval_batch_size: int = 32,
        train_limit: int | None = None,
        dev_limit: int | None = None,
        num_workers: int = 0,
        drop_types: tuple[str, ...] = ("MISC",),
    ):
        super().__init__()
        self.tokenizer = tokenizer
        self.files = {"train": train_file, "dev": dev_file, "test": test_file}
        self.limits = {"train": train_limit, "dev": dev_limit, "test": None}
        self.max_source_len = int(max_source_len)
        self.max_target_len = int(max_target_len)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.drop_types = tuple(drop_types)
        self.splits: dict[str, EncodedSplit] = {}

    def setup(self, stage: str | None = None) -> None:
        for name, path in self.files.items():
            if path is None or name in self.splits:
                continue
            sentences = read_english_ner(path, name, self.drop_types)
            if self.limits[name]:
                sentences = sentences[: int(self.limits[name])]
            self.splits[name] = encode_split(
                self.tokenizer, sentences, self.max_source_len, self.max_target_len, name
            )

    def stats(self) -> dict:
        """Per split: examples, truncated sources/targets and the longest lengths seen (in model tokens)."""
        return {name: enc.stats for name, enc in self.splits.items()}

    def _collate(self, enc: EncodedSplit):
        pad = self.tokenizer.pad_token_id

        def collate(indices: list[int]) -> dict:
            src = [enc.input_ids[i] for i in indices]
            tgt = [enc.labels[i] for i in indices]
            n_src, n_tgt = max(map(len, src)), max(map(len, tgt))
            input_ids = torch.full((len(src), n_src), pad, dtype=torch.long)
            attention = torch.zeros((len(src), n_src), dtype=torch.long)
            labels = torch.full((len(tgt), n_tgt), -100, dtype=torch.long)
            for k, (x, y) in enumerate(zip(src, tgt)):
                input_ids[k, : len(x)] = torch.tensor(x)
                attention[k, : len(x)] = 1
                labels[k, : len(y)] = torch.tensor(y)
            return {
                "input_ids": input_ids,
                "attention_mask": attention,
                "labels": labels,
                "index": list(indices),
            }

        return collate

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        if name not in self.splits:
            raise ConfigError(f"extractor.train.{name}_file: no {name} split configured")
        enc = self.splits[name]
        return DataLoader(
            _SplitDataset(enc),
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle,
            collate_fn=self._collate(enc),
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("dev", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)


# ----------------------------------------------------------------------------------------------- model
def load_seq2seq(model_name_or_path: str):
    """Tokenizer and model from a local folder or a hub id (ConfigError with the reason when neither works)."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
        model = AutoModelForSeq2SeqLM.from_pretrained(model_name_or_path)
    except OSError as exc:
        raise ConfigError(f"extractor.train.model={model_name_or_path}: cannot load ({exc})") from None
    return tokenizer, model


class Seq2SeqNERModule(pl.LightningModule):
    """A T5-family model trained on `(TYPE, entity)` targets; validation = generate, parse, place, score."""

    def __init__(
        self,
        model_name_or_path: str,
        *,
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        lora: dict | None = None,
        max_new_tokens: int = 128,
        num_beams: int = 1,
        scorer_seed: int = 0,
    ):
        """`optimizer(param_groups)` and `scheduler(opt, total_steps=...)` are the `_partial_` config nodes."""
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.tokenizer, model = load_seq2seq(model_name_or_path)
        if lora and lora.get("enabled", True):
            from peft import LoraConfig, TaskType, get_peft_model

            model = get_peft_model(
                model,
                LoraConfig(
                    task_type=TaskType.SEQ_2_SEQ_LM,
                    r=int(lora.get("r", 16)),
                    lora_alpha=int(lora.get("alpha", 32)),
                    lora_dropout=float(lora.get("dropout", 0.05)),
                    target_modules=list(lora.get("target_modules", ["q", "v"])),
                ),
            )
        self.model = model.train()  # from_pretrained returns eval mode; dropout belongs to training
        self._val: list[tuple[int, list[str], str]] = []
        self.val_sentences: list[Sentence] = []
        self.last_val_texts: dict[str, str] = {}  # sentence id -> generated text of the latest validation

    @property
    def is_lora(self) -> bool:
        return hasattr(self.model, "merge_and_unload")

    def forward(self, batch: dict):
        return self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )

    def training_step(self, batch: dict, batch_idx: int):
        loss = self(batch).loss
        self.log(
            "train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["index"])
        )
        return loss

    def generate_texts(self, input_ids, attention_mask) -> list[str]:
        from eatlab.utils.generation import greedy_texts

        return greedy_texts(
            self.model,
            self.tokenizer,
            input_ids,
            attention_mask,
            max_new_tokens=int(self.hparams.max_new_tokens),
            num_beams=int(self.hparams.num_beams),
        )

    def on_validation_epoch_start(self) -> None:
        self._val = []
        self.val_sentences = self.trainer.datamodule.splits["dev"].sentences

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        n = len(batch["index"])
        self.log("val_loss", self(batch).loss, on_epoch=True, batch_size=n, sync_dist=True)
        texts = self.generate_texts(batch["input_ids"], batch["attention_mask"])
        for i, text in zip(batch["index"], texts):
            tags, _ = entity_tags(self.val_sentences[i].tokens, parse_entity_list(text))
            self._val.append((i, tags, text))

    def on_validation_epoch_end(self) -> None:
        from eatlab.eval.scores import score

        rows = self._val
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in part]
        by_index = {i: tags for i, tags, _ in rows}
        idx = sorted(by_index)
        self.last_val_texts = {self.val_sentences[i].id: text for i, _, text in rows}
        sents = [self.val_sentences[i] for i in idx]
        result = score(
            [s.tags for s in sents],
            [by_index[i] for i in idx],
            [s.tokens for s in sents],
            "en",
            seed=int(self.hparams.scorer_seed),
            n_boot=200,
            char_tokenized=False,
        )
        metrics = {
            "val_precision": result["entity_precision"],
            "val_recall": result["entity_recall"],
            "val_n_sentences": float(len(idx)),
        }
        for typ, m in result["per_type"].items():
            metrics[f"val_f1_{typ}"] = m["f1"]
        # every rank holds the same gathered numbers, so no further reduction is needed
        self.log_dict(metrics)
        self.log("val_f1", result["entity_f1"], prog_bar=True)
        self.last_val_scores = result

    def configure_optimizers(self):
        from eatlab.utils.lightning import configure_optimizers

        return configure_optimizers(self, self.model, self.optimizer_factory, self.scheduler_factory)

    def save_pretrained(self, directory: str | Path, info: dict | None = None) -> None:
        """A plain Hugging Face folder (LoRA merged into a copy), its tokenizer, eatlab_checkpoint.json and the
        dev outputs of the validation that selected it."""
        import copy

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        model = copy.deepcopy(self.model).merge_and_unload() if self.is_lora else self.model
        model.save_pretrained(str(directory))
        self.tokenizer.save_pretrained(str(directory))
        meta = {
            "instruction": INSTRUCTION,
            "base_model": self.hparams.model_name_or_path,
            "lora": self.hparams.lora,
            "global_step": int(self.global_step),
            "epoch": int(self.current_epoch),
            **(info or {}),
        }
        (directory / CHECKPOINT_INFO).write_text(
            json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        lines = [
            json.dumps({"sentence_id": k, "output": v}, ensure_ascii=False)
            for k, v in self.last_val_texts.items()
        ]
        (directory / DEV_OUTPUTS).write_text("".join(x + "\n" for x in lines), encoding="utf-8")
