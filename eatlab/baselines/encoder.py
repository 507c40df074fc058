"""Zero-shot encoder transfer (the XTREME PAN-X setting): data and model for token classification.

A multilingual encoder (mBERT, XLM-R, or any hub id / local folder) is fine-tuned as a token classifier on
English WikiANN and applied unchanged to other languages. Label alignment follows XTREME: a word's label goes on
its first sub-token, the other sub-tokens get -100 (ignored by the loss), and a word's prediction is read from
its first sub-token. Words are always passed with `is_split_into_words=True`, so WikiANN's zh/ja characters
stay one word each. A word cut off by `max_length`, or left without any sub-token by the tokenizer, is
predicted `O` and counted (`n_words_truncated`, `n_words_without_subtokens`), never silently dropped.

`ensure_tiny_encoder` builds a random 2-layer BERT with a WordPiece vocabulary trained on the in-repo samples,
so that tests and smoke runs need no download.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from eatlab.data.loader import HUB_TAGS
from eatlab.data.record import Sentence
from eatlab.errors import ConfigError

LABELS: tuple[str, ...] = tuple(HUB_TAGS)  # WikiANN's ClassLabel order; "O" is id 0
LABEL2ID = {t: i for i, t in enumerate(LABELS)}
O_ID = LABEL2ID["O"]
IGNORE_INDEX = -100  # positions the loss ignores (special tokens, non-first sub-tokens, padding)


# ---------------------------------------------------------------------------------------------------------------
# encoding and label alignment


@dataclass
class EncodedSentence:
    """One sentence as the model sees it, plus what is needed to map sub-token predictions back to words."""

    index: int  # position of the sentence in its selection
    input_ids: list[int]
    labels: list[int]  # per sub-token: the word's label id on its first sub-token, else IGNORE_INDEX
    first_positions: list[int]  # per word: index of its first sub-token in input_ids, -1 when absent
    word_labels: list[int]  # per word: gold label id
    n_truncated: int  # words with sub-tokens that max_length cut off
    n_empty: int  # words the tokenizer turned into no sub-token at all


def load_tokenizer(name_or_path: str):
    """A fast tokenizer (word_ids() is needed for label alignment); ConfigError when there is none."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(name_or_path))
    except OSError as exc:
        raise ConfigError(
            f"encoder.id={name_or_path}: cannot load its tokenizer ({exc.__class__.__name__}); "
            "give a hub id (needs the network once) or a local folder"
        ) from None
    if not getattr(tok, "is_fast", False):
        raise ConfigError(f"encoder.id={name_or_path}: needs a fast tokenizer (word_ids) for label alignment")
    return tok


def encode_sentences(
    tokenizer, sentences: Sequence[Sentence], max_length: int, chunk_size: int = 1000
) -> list[EncodedSentence]:
    """Tokenize words with `is_split_into_words=True`, align labels to first sub-tokens, count cut-off words.

    Each chunk is tokenized twice: truncated (what the model sees) and without special tokens or truncation (to
    tell a word that `max_length` cut off from one that has no sub-token at all).
    """
    if max_length < 3:
        raise ConfigError(f"encoder.max_length={max_length}: must be at least 3")
    out: list[EncodedSentence] = []
    for start in range(0, len(sentences), chunk_size):
        batch = sentences[start : start + chunk_size]
        words = [list(s.tokens) for s in batch]
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
        full = tokenizer(words, is_split_into_words=True, add_special_tokens=False, truncation=False)
        for k, s in enumerate(batch):
            word_ids = enc.word_ids(k)
            has_subtokens = {w for w in full.word_ids(k) if w is not None}
            first = [-1] * len(s.tokens)
            labels = [IGNORE_INDEX] * len(word_ids)
            word_labels = [LABEL2ID[t] for t in s.tags]
            for pos, w in enumerate(word_ids):
                if w is not None and first[w] < 0:
                    first[w] = pos
                    labels[pos] = word_labels[w]
            missing = [w for w, p in enumerate(first) if p < 0]
            n_trunc = sum(1 for w in missing if w in has_subtokens)
            out.append(
                EncodedSentence(
                    index=start + k,
                    input_ids=list(enc["input_ids"][k]),
                    labels=labels,
                    first_positions=first,
                    word_labels=word_labels,
                    n_truncated=n_trunc,
                    n_empty=len(missing) - n_trunc,
                )
            )
    return out


class EncodedDataset(Dataset):
    def __init__(self, items: list[EncodedSentence]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> EncodedSentence:
        return self.items[i]


def collate(items: list[EncodedSentence], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch: sub-token tensors to the longest sequence, word tensors to the longest sentence."""
    n_tok = max(len(x.input_ids) for x in items)
    n_word = max(max(len(x.first_positions) for x in items), 1)
    input_ids = torch.full((len(items), n_tok), pad_id, dtype=torch.long)
    attention = torch.zeros((len(items), n_tok), dtype=torch.long)
    labels = torch.full((len(items), n_tok), IGNORE_INDEX, dtype=torch.long)
    first = torch.full((len(items), n_word), -1, dtype=torch.long)
    word_labels = torch.full((len(items), n_word), IGNORE_INDEX, dtype=torch.long)
    for i, x in enumerate(items):
        n, w = len(x.input_ids), len(x.first_positions)
        input_ids[i, :n] = torch.tensor(x.input_ids)
        attention[i, :n] = 1
        labels[i, :n] = torch.tensor(x.labels)
        if w:
            first[i, :w] = torch.tensor(x.first_positions)
            word_labels[i, :w] = torch.tensor(x.word_labels)
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "labels": labels,
        "first_positions": first,
        "word_labels": word_labels,
        "n_words": torch.tensor([len(x.first_positions) for x in items], dtype=torch.long),
        "index": torch.tensor([x.index for x in items], dtype=torch.long),
    }


def ids_to_tags(ids: Sequence[int]) -> list[str]:
    return [LABELS[i] for i in ids]


# ---------------------------------------------------------------------------------------------------------------
# Lightning data module


class WikiannTransferDataModule(pl.LightningDataModule):
    """English train/dev for fine-tuning and model selection; `predict_loader` serves any language's test split.

    The sentences are selected by the caller (`eatlab.data.loader.select_sentences`); this module only encodes
    and batches them. Evaluation loaders sort by length (less padding) and carry each sentence's index.
    """

    def __init__(
        self,
        tokenizer,
        train_sentences: list[Sentence],
        dev_sentences: list[Sentence],
        max_length: int = 128,
        eval_max_length: int | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.tokenizer = tokenizer
        self.train_sentences = train_sentences
        self.dev_sentences = dev_sentences
        self.max_length = int(max_length)
        self.eval_max_length = int(eval_max_length or max_length)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.train_encoded: list[EncodedSentence] | None = None
        self.dev_encoded: list[EncodedSentence] | None = None
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else 0

    def setup(self, stage: str | None = None) -> None:
        if self.train_encoded is None:
            self.train_encoded = encode_sentences(self.tokenizer, self.train_sentences, self.max_length)
            self.dev_encoded = encode_sentences(self.tokenizer, self.dev_sentences, self.max_length)

    def _collate(self, items: list[EncodedSentence]) -> dict[str, torch.Tensor]:
        return collate(items, self.pad_id)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            EncodedDataset(self.train_encoded),
            batch_size=self.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(self.seed),
            collate_fn=self._collate,
            num_workers=self.num_workers,
        )

    def _eval_loader(self, items: list[EncodedSentence]) -> DataLoader:
        ordered = sorted(items, key=lambda x: len(x.input_ids), reverse=True)
        return DataLoader(
            EncodedDataset(ordered),
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=self._collate,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.dev_encoded)

    def predict_loader(self, sentences: list[Sentence]) -> tuple[DataLoader, list[EncodedSentence]]:
        """A loader over a test selection (encoded with `eval_max_length`) and its encodings (for counts)."""
        encoded = encode_sentences(self.tokenizer, sentences, self.eval_max_length)
        return self._eval_loader(encoded), encoded


# ---------------------------------------------------------------------------------------------------------------
# Lightning module


def _gather_objects(obj):
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        parts: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, obj)
        return [x for part in parts for x in part]
    return obj


class EncoderTagger(pl.LightningModule):
    """Token classifier over a pretrained encoder; logs `dev/entity_f1` (seqeval default mode) every validation.

    The optimizer and schedule are `_partial_` config nodes (eatlab-train-baseline's `optimizer`, `scheduler`:
    AdamW without decay on biases and LayerNorm weights, linear warm-up then linear decay to zero).
    """

    def __init__(
        self, model_name_or_path: str, optimizer: Callable | None = None, scheduler: Callable | None = None
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        from transformers import AutoModelForTokenClassification

        try:
            self.model = AutoModelForTokenClassification.from_pretrained(
                str(model_name_or_path),
                num_labels=len(LABELS),
                id2label=dict(enumerate(LABELS)),
                label2id=dict(LABEL2ID),
            )
        except OSError as exc:
            raise ConfigError(
                f"encoder.id={model_name_or_path}: cannot load the model ({exc.__class__.__name__}); "
                "give a hub id (needs the network once) or a local folder"
            ) from None
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps it, which would disable dropout
        self._dev: list[tuple[list[str], list[str]]] = []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
        self.log(
            "train/loss", out.loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["index"])
        )
        return out.loss

    def word_predictions(self, batch: dict, logits: torch.Tensor | None = None) -> list[list[int]]:
        """Per sentence, the label id predicted at each word's first sub-token (O where the word is absent)."""
        if logits is None:
            logits = self(batch["input_ids"], batch["attention_mask"])
        pred = logits.argmax(-1)
        pos = batch["first_positions"]
        words = pred.gather(1, pos.clamp(min=0))
        words = torch.where(pos >= 0, words, torch.full_like(words, O_ID))
        words = words.cpu().tolist()
        return [row[:n] for row, n in zip(words, batch["n_words"].cpu().tolist())]

    def on_validation_epoch_start(self) -> None:
        self._dev = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
        self.log("dev/loss", out.loss, on_epoch=True, batch_size=len(batch["index"]), sync_dist=True)
        preds = self.word_predictions(batch, out.logits)
        golds = batch["word_labels"].cpu().tolist()
        for p, g in zip(preds, golds):
            self._dev.append((ids_to_tags(g[: len(p)]), ids_to_tags(p)))

    def on_validation_epoch_end(self) -> None:
        from eatlab.eval.entity import entity_counts, entity_scores

        pairs = _gather_objects(self._dev)
        if not pairs:
            return
        scores = entity_scores(entity_counts([g for g, _ in pairs], [p for _, p in pairs]))
        self.log("dev/entity_f1", scores["entity_f1"], prog_bar=True)
        self.log("dev/entity_precision", scores["entity_precision"])
        self.log("dev/entity_recall", scores["entity_recall"])
        self._dev = []

    def predict_step(
        self, batch: dict, batch_idx: int, dataloader_idx: int = 0
    ) -> list[tuple[int, list[int]]]:
        return list(zip(batch["index"].cpu().tolist(), self.word_predictions(batch)))

    def configure_optimizers(self):
        from eatlab.utils.lightning import configure_optimizers

        return configure_optimizers(self, self.model, self.optimizer_factory, self.scheduler_factory)


def predict_tags(
    trainer: pl.Trainer, module: EncoderTagger, loader: DataLoader, n_sentences: int
) -> list[list[str]]:
    """Word-level predicted tags for every sentence of a predict loader, in selection order."""
    outputs = trainer.predict(module, dataloaders=loader, return_predictions=True) or []
    tags: list[list[str] | None] = [None] * n_sentences
    for batch_out in outputs:
        for index, ids in batch_out:
            tags[index] = ids_to_tags(ids)
    missing = [i for i, t in enumerate(tags) if t is None]
    if missing:
        raise RuntimeError(f"{len(missing)} sentences got no prediction (first: {missing[0]})")
    return tags  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------------------
# tiny smoke encoder

TINY_ENCODER_ID = "eatlab/tiny-bert-smoke"
SMOKE_MARKER = "SMOKE_MODEL"  # the same marker file as eatlab.llm.tiny
TINY_SEED = 1234
TINY_README = f"""# {TINY_ENCODER_ID}: SMOKE MODEL, its outputs mean nothing

A randomly initialised BERT encoder (2 layers, hidden size 64, 4 attention heads, seed {TINY_SEED}) with a
WordPiece vocabulary trained on the tokens of eatlab's in-repo WikiANN samples (13 languages), built locally by
`eatlab.baselines.encoder.ensure_tiny_encoder`. It exists to run the encoder baseline end to end on a CPU without
downloading anything. Never report a number produced with it.
"""


def _sample_words() -> list[str]:
    from eatlab.data.conll import read_conll
    from eatlab.paths import SAMPLES_DIR

    words: list[str] = []
    for path in sorted(SAMPLES_DIR.glob("*/*.txt")):
        for s in read_conll(path, path.parent.name, path.stem, char_tokenized=False):
            words.extend(s.tokens)
    return words


def ensure_tiny_encoder(path: str | Path, vocab_size: int = 4000) -> Path:
    """Build the tiny smoke encoder and its tokenizer at `path` unless already there; return the folder.

    Built in a temporary sibling folder and renamed into place, so concurrent callers never see half a model.
    """
    path = Path(path)
    if (path / SMOKE_MARKER).is_file() and (path / "config.json").is_file():
        return path
    if path.is_dir() and any(path.iterdir()) and not (path / SMOKE_MARKER).is_file():
        raise ConfigError(f"encoder.id={path}: exists and is not a smoke model; refusing to overwrite it")
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.build."))
    try:
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.train_from_iterator(
            _sample_words(), trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials)
        )
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
        tok.decoder = decoders.WordPiece()
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
            model_max_length=512,
        )
        fast.save_pretrained(str(tmp))
        config = BertConfig(
            vocab_size=tok.get_vocab_size(),
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=512,
            pad_token_id=tok.token_to_id("[PAD]"),
        )
        torch.manual_seed(TINY_SEED)
        BertModel(config).save_pretrained(str(tmp))
        (tmp / "README.md").write_text(TINY_README, encoding="utf-8")
        (tmp / SMOKE_MARKER).write_text("random weights: outputs mean nothing\n", encoding="utf-8")
        try:
            os.replace(tmp, path)  # an empty target dir is replaced atomically
        except OSError:
            if not (path / SMOKE_MARKER).is_file():  # lost a race only if someone else finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
