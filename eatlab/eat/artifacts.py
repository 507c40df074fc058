"""Per-sample JSONL artifacts of the stages, with hashes, so that any prediction can be traced and diffed.

Atomicity: during a run the records of each batch are appended (whole lines, flushed) to `<name>.jsonl.partial`;
`finalize_artifacts(run_dir)`, called once all batches are done and before metrics.json is written, renames every
partial file to its final name. So a final `forward.jsonl` is always complete, and a run killed at any point
leaves only `.partial` files (and no metrics.json) behind. `check_jsonl` / `repair_jsonl` find and drop a
truncated trailing line (a process killed in the middle of a write).

Data parallelism: while torch.distributed is initialised with several ranks, rank k appends to its own
`<stem>.rank<k>.jsonl.partial` (ranks sharing one file would clobber each other), and `finalize_artifacts` on
rank 0 merges a stage's files into one, in sentence order, so that the artifacts equal a one-process run's.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from eatlab.utils.io import atomic_write_text, canonical_json, sha256_text

PARTIAL = ".partial"
_RANK_PARTIAL = re.compile(r"^(?P<stem>.+)\.rank(?P<rank>\d+)(?P<suffix>\.[^.]*)?" + re.escape(PARTIAL) + "$")


def messages_hash(messages) -> str:
    return sha256_text(canonical_json(messages))


def dist_rank_world() -> tuple[int, int]:
    """torch.distributed's (rank, world size) once initialised, else (0, 1); never imports torch itself."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _is_launching_rank() -> bool:
    """Rank 0, also before torch.distributed is up (launchers set RANK, or NODE_RANK/LOCAL_RANK, in children)."""
    rank, world = dist_rank_world()
    if world > 1:
        return rank == 0
    if "RANK" in os.environ:
        return os.environ["RANK"] == "0"
    return os.environ.get("NODE_RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


def rank_partial(path: Path, rank: int) -> Path:
    """The partial file rank `rank` appends to, e.g. `forward.rank1.jsonl.partial`."""
    path = Path(path)
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}{PARTIAL}")


def _final_and_rank(partial: Path) -> tuple[Path, int]:
    """The final path a partial file belongs to, and its rank (-1 for the plain `<name>.partial`)."""
    m = _RANK_PARTIAL.match(partial.name)
    if m:
        return partial.with_name(m["stem"] + (m["suffix"] or "")), int(m["rank"])
    return partial.with_name(partial.name[: -len(PARTIAL)]), -1


class JsonlArtifact:
    """A JSONL file in the run dir, one record per sample, that appears under its name only when complete."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + PARTIAL)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Only rank 0 cleans up: the other ranks start later (or at least write only after every rank has
        # built its artifacts, at the process-group rendezvous), so nothing of this run is deleted.
        if _is_launching_rank():
            self.path.unlink(missing_ok=True)  # a rerun in the same run dir: the old file is not this run's
            for stale in self.path.parent.glob(f"{self.path.stem}.rank*{self.path.suffix}{PARTIAL}"):
                stale.unlink(missing_ok=True)
            self.partial.unlink(missing_ok=True)
            self.partial.write_text("", encoding="utf-8")  # marks the stage as present even with no records

    @property
    def target(self) -> Path:
        """Where this process appends: the plain partial file, or its rank's under data parallelism."""
        rank, world = dist_rank_world()
        return self.partial if world == 1 else rank_partial(self.path, rank)

    def write(self, records: list[dict]) -> None:
        """Append whole lines and flush them to the OS (they survive a killed process)."""
        if not records:
            return
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with self.target.open("a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()

    def finalize(self, order: Sequence[str] | None = None) -> None:
        """Give the partial file(s) the final name: renamed (atomic on POSIX), or merged from several ranks."""
        parts = [p for p in self.path.parent.glob("*" + PARTIAL) if _final_and_rank(p)[0] == self.path]
        if parts:
            _finalize_one(self.path, parts, order)


def _finalize_one(final: Path, parts: list[Path], order: Sequence[str] | None) -> None:
    parts = sorted(parts, key=lambda p: _final_and_rank(p)[1])
    if len(parts) == 1 and _final_and_rank(parts[0])[1] == -1:
        with parts[0].open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(parts[0], final)
        return
    pos = {sid: i for i, sid in enumerate(order or ())}
    # split on b"\n" only: JSON written with ensure_ascii=False may hold U+2028 and the like inside a record
    lines = [line for p in parts for line in p.read_bytes().split(b"\n") if line.strip()]
    lines.sort(key=lambda line: pos.get(_sentence_id(line), len(pos)))  # stable: a sentence keeps its order
    atomic_write_text(final, "".join(line.decode("utf-8") + "\n" for line in lines))
    for p in parts:
        p.unlink(missing_ok=True)


def _sentence_id(line: bytes) -> str | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record.get("sentence_id") if isinstance(record, dict) else None


def finalize_artifacts(run_dir: Path, order: Sequence[str] | None = None) -> list[Path]:
    """Give every `*.partial` under `<run_dir>/artifacts` its final name; returns the final paths.

    Several ranks' files of one stage are merged into one, sorted by the sentence ids' positions in `order`
    (records of ids not in it go last, in rank order).
    """
    groups: dict[Path, list[Path]] = {}
    art = Path(run_dir) / "artifacts"
    if art.is_dir():
        for partial in art.glob("*" + PARTIAL):
            groups.setdefault(_final_and_rank(partial)[0], []).append(partial)
    for final, parts in sorted(groups.items()):
        _finalize_one(final, parts, order)
    return sorted(groups)


@dataclass
class JsonlCheck:
    """What `check_jsonl` found: complete records, and the 1-based line numbers of bad ones."""

    path: Path
    records: int
    truncated_tail: bool  # the last line has no newline and is not valid JSON: an interrupted write
    bad_lines: list[int]  # other lines that are not valid JSON

    @property
    def ok(self) -> bool:
        return not self.truncated_tail and not self.bad_lines

    def message(self) -> str:
        if self.ok:
            return f"{self.path}: ok, {self.records} records"
        parts = []
        if self.truncated_tail:
            parts.append("truncated last line (an interrupted write)")
        if self.bad_lines:
            parts.append(f"{len(self.bad_lines)} invalid line(s) (first: line {self.bad_lines[0]})")
        return f"{self.path}: {', '.join(parts)}; {self.records} complete records"


def check_jsonl(path: Path) -> JsonlCheck:
    """Read a JSONL file line by line without trusting it."""
    path = Path(path)
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # text after the last newline ("" when the file ends with one)
    records, bad = 0, []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            json.loads(line)
            records += 1
        except ValueError:
            bad.append(n)
    truncated = False
    if tail.strip():
        try:
            json.loads(tail)
            records += 1  # a complete last record that merely lacks its newline
        except ValueError:
            truncated = True
    return JsonlCheck(path, records, truncated, bad)


def repair_jsonl(path: Path) -> JsonlCheck:
    """Keep the valid records only (atomically rewritten); returns what the file held before."""
    path = Path(path)
    found = check_jsonl(path)
    if found.ok:
        return found
    keep = []
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            keep.append(json.dumps(json.loads(line), ensure_ascii=False))
        except ValueError:
            continue
    atomic_write_text(path, "".join(k + "\n" for k in keep))
    return found
