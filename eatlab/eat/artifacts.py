"""Per-sample JSONL artifacts of the stages, with hashes, so that any prediction can be traced and diffed.

Atomicity: during a run the records of each batch are appended (whole lines, flushed) to `<name>.jsonl.partial`;
`finalize_artifacts(run_dir)`, called once all batches are done and before metrics.json is written, renames every
partial file to its final name. So a final `forward.jsonl` is always complete, and a run killed at any point
leaves only `.partial` files (and no metrics.json) behind. `check_jsonl` / `repair_jsonl` find and drop a
truncated trailing line (a process killed in the middle of a write).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from eatlab.errors import DataError
from eatlab.utils.io import atomic_write_text, canonical_json, sha256_text

PARTIAL = ".partial"


def messages_hash(messages) -> str:
    return sha256_text(canonical_json(messages))


class JsonlArtifact:
    """A JSONL file in the run dir, one record per sample, that appears under its name only when complete."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + PARTIAL)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)  # a rerun in the same run dir: the old file is not this run's
        self.partial.unlink(missing_ok=True)
        self.partial.write_text("", encoding="utf-8")

    def write(self, records: list[dict]) -> None:
        """Append whole lines and flush them to the OS (they survive a killed process)."""
        if not records:
            return
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with self.partial.open("a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()

    def finalize(self) -> None:
        """fsync the partial file and rename it to the final name (atomic on POSIX)."""
        if not self.partial.exists():
            return
        with self.partial.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(self.partial, self.path)


def finalize_artifacts(run_dir: Path) -> list[Path]:
    """Rename every `*.jsonl.partial` under `<run_dir>/artifacts` to its final name; returns the final paths."""
    done = []
    art = Path(run_dir) / "artifacts"
    if art.is_dir():
        for partial in sorted(art.glob("*" + PARTIAL)):
            final = partial.with_name(partial.name[: -len(PARTIAL)])
            with partial.open("rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(partial, final)
            done.append(final)
    return done


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


def read_jsonl(path: Path) -> list[dict]:
    """All records; a damaged file fails with one line naming the file, the line and the repair command."""
    path = Path(path)
    out = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                what = (
                    "truncated record (an interrupted write)" if not line.endswith("\n") else "not valid JSON"
                )
                raise DataError(
                    path,
                    f"{what}; `eatlab-cache repair --run-dir {path.parent.parent}` keeps the valid records",
                    line=n,
                ) from None
    return out
