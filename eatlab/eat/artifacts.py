"""Per-sample JSONL artifacts of the stages, with hashes, so that any prediction can be traced and diffed."""

from __future__ import annotations

import json
from pathlib import Path

from eatlab.utils.io import canonical_json, sha256_text


def messages_hash(messages) -> str:
    return sha256_text(canonical_json(messages))


class JsonlArtifact:
    """A JSONL file in the run dir, one record per sample; whole lines are written and flushed at once."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("", encoding="utf-8")

    def write(self, records: list[dict]) -> None:
        if not records:
            return
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
