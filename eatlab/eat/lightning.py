"""Evaluation as a Lightning module: batches of sentences go through the EAT stages; metrics go to the loggers.

Under data-parallel strategies each rank runs its shard of the sentences; results are gathered on rank 0,
which scores them once over the whole set.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from eatlab.data.record import Sentence
from eatlab.eat.methods.base import Method
from eatlab.eat.stages import SentenceResult


class SentenceDataset(Dataset):
    def __init__(self, sentences: list[Sentence]):
        self.sentences = sentences

    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, i: int) -> Sentence:
        return self.sentences[i]


def sentence_loader(sentences: list[Sentence], batch_size: int) -> DataLoader:
    return DataLoader(
        SentenceDataset(sentences), batch_size=max(1, batch_size), shuffle=False, collate_fn=list
    )


class EATEvaluationModule(pl.LightningModule):
    """Runs the method on each test batch; `on_test_epoch_end` calls `finish(results)` on rank 0."""

    def __init__(self, pipeline: Method, finish):
        super().__init__()
        self.pipeline = pipeline
        self.finish = finish
        self.results: list[SentenceResult] = []
        self.summary: dict | None = None
        self._anchor = torch.nn.Parameter(
            torch.zeros(1), requires_grad=False
        )  # Lightning wants a device anchor

    def test_step(self, batch: list[Sentence], batch_idx: int) -> None:
        self.results.extend(self.pipeline.run(batch))

    def on_test_epoch_end(self) -> None:
        results = self.results
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, results)
            results = [r for part in gathered for r in part]
        if self.trainer.is_global_zero:
            order = {r.sentence.id: i for i, r in enumerate(results)}
            results = sorted(results, key=lambda r: order[r.sentence.id])
            self.summary = self.finish(results)
            flat = {
                k: float(v)
                for k, v in self.summary.items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            }
            self.log_dict(flat, rank_zero_only=True)
