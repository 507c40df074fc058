"""Evaluation as a Lightning module: batches of sentences go through the EAT stages; metrics go to the loggers.

Under data-parallel strategies each rank runs its shard of the sentences (every sentence on exactly one rank:
Lightning's own DistributedSampler would pad the last shard with repeats); at the end rank 0 gathers every
rank's results and counters into one `Gathered`, in the selection's order, and scores it once, so that the
run equals a one-process run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from eatlab.data.record import Sentence
from eatlab.eat.artifacts import dist_rank_world
from eatlab.eat.methods.base import Method
from eatlab.eat.stages import SentenceResult
from eatlab.llm.client import StageCounters, counters_as_dict, merge_counters
from eatlab.utils import signals

NOTHING = -1  # the sampler's index for "no sentence": an empty shard still runs one (empty) batch


class SentenceDataset(Dataset):
    """(index in the selection, sentence) pairs: the index puts gathered results back in order."""

    def __init__(self, sentences: list[Sentence]):
        self.sentences = sentences

    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, i: int) -> tuple[int, Sentence] | None:
        return None if i == NOTHING else (i, self.sentences[i])


class ShardSampler(DistributedSampler):
    """Rank r of W gets indices r, r+W, r+2W, ...: no padding, so no sentence is run (and paid for) twice.

    The rank is read when iterating, once torch.distributed is up (the loader is built before). Being a
    DistributedSampler keeps Lightning from swapping in its padding one. An empty shard yields `NOTHING`, so
    that its rank still reaches the end-of-epoch gather instead of skipping the loop.
    """

    def __init__(self, dataset: Dataset):
        super().__init__(dataset, num_replicas=1, rank=0, shuffle=False)

    def _indices(self) -> list[int]:
        rank, world = dist_rank_world()
        return list(range(rank, len(self.dataset), world)) or [NOTHING]

    def __iter__(self):
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())


def _collate(items: list) -> list[tuple[int, Sentence]]:
    return [x for x in items if x is not None]


def sentence_loader(sentences: list[Sentence], batch_size: int) -> DataLoader:
    dataset = SentenceDataset(sentences)
    return DataLoader(
        dataset, batch_size=max(1, batch_size), sampler=ShardSampler(dataset), collate_fn=_collate
    )


@dataclass
class Gathered:
    """Everything all ranks produced, merged: one result per sentence in selection order, counters summed."""

    results: list[SentenceResult]
    client_counters: dict[str, dict]  # LLMClient.counters_dict()'s form
    counts: Counter
    answer_faults: dict[str, Counter]
    seconds: Counter  # stage wall times (pipeline.timer.seconds), summed over ranks
    indices: list[int] = field(default_factory=list)  # of each result in the selection

    @property
    def sentence_ids(self) -> list[str]:
        return [r.sentence.id for r in self.results]


@dataclass
class _Part:
    """One rank's share, as sent to the gather."""

    indices: list[int]
    results: list[SentenceResult]
    client_counters: dict[str, StageCounters]
    counts: Counter
    answer_faults: dict[str, Counter]
    seconds: Counter


def merge_parts(parts: list[_Part]) -> Gathered:
    """The ranks' shares as one run: results by selection index (a repeated index counts once), sums."""
    by_index: dict[int, SentenceResult] = {}
    for part in parts:
        for i, r in zip(part.indices, part.results, strict=True):
            by_index.setdefault(i, r)
    counts, seconds, faults = Counter(), Counter(), {}
    for part in parts:
        counts.update(part.counts)  # update, not +: keeps the zero counts metrics.json always carries
        seconds.update(part.seconds)
        for stage, c in part.answer_faults.items():
            faults.setdefault(stage, Counter()).update(c)
    order = sorted(by_index)
    return Gathered(
        results=[by_index[i] for i in order],
        client_counters=counters_as_dict(merge_counters(p.client_counters for p in parts)),
        counts=counts,
        answer_faults=faults,
        seconds=seconds,
        indices=order,
    )


class EATEvaluationModule(pl.LightningModule):
    """Runs the method on each test batch; `on_test_epoch_end` calls `finish(gathered)` on rank 0 only."""

    def __init__(self, pipeline: Method, finish: Callable[[Gathered], dict], client=None):
        super().__init__()
        self.pipeline = pipeline
        self.finish = finish
        self.client = client  # its counters are gathered; None: the pipeline's own
        self.results: list[SentenceResult] = []  # this rank's; on rank 0, after the epoch: all, in order
        self.indices: list[int] = []
        self.gathered: Gathered | None = None
        self.summary: dict | None = None
        self._anchor = torch.nn.Parameter(
            torch.zeros(1), requires_grad=False
        )  # Lightning wants a device anchor

    def test_step(self, batch: list[tuple[int, Sentence]], batch_idx: int) -> None:
        signals.check()  # a signal whose `Stopped` got lost on the way ends the job here at the latest
        if not batch:
            return
        indices, sentences = zip(*batch, strict=True)
        self.results.extend(self.pipeline.run(list(sentences)))
        self.indices.extend(indices)

    def _part(self) -> _Part:
        client = self.client if self.client is not None else self.pipeline.ctx.client
        return _Part(
            indices=list(self.indices),
            results=list(self.results),
            client_counters=dict(getattr(client, "counters", {})),
            counts=Counter(self.pipeline.counts),
            answer_faults={k: Counter(v) for k, v in self.pipeline.answer_faults.items()},
            seconds=Counter(self.pipeline.timer.seconds),
        )

    def on_test_epoch_end(self) -> None:
        parts = [self._part()]
        _, world = dist_rank_world()
        if world > 1:
            parts = [None] * world
            torch.distributed.all_gather_object(parts, self._part())
        if self.trainer.is_global_zero:
            self.gathered = merge_parts(parts)
            self.results = self.gathered.results
            self.indices = self.gathered.indices
            self.summary = self.finish(self.gathered)
            flat = {
                k: float(v)
                for k, v in self.summary.items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            }
            self.log_dict(flat, rank_zero_only=True)
