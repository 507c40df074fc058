"""Read an offline W&B run back from its transaction log (`run-<id>.wandb`), without a server.

Offline runs are what eatlab writes by default; this lets tests, the sweep summary and the analysis check what
a run logged (group, tags, config, summary metrics, artifacts, exit code) before anyone runs `wandb sync`.
The file is a LevelDB-style log: a 7-byte header (`:W&B`, magic, version), then 32 KiB blocks of records with
a 7-byte header (crc32, length, type: full/first/middle/last); each record is a protobuf `Record`.
The block reader is ours because wandb ships none: its Python `wandb.sdk.internal.datastore.DataStore` went with
the legacy `wandb sync` (absent from the installed 0.31), the Go `wandb-core` reads the log only to upload it, and
the public API reads runs from a server. Only wandb's protobuf `Record` is reused.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

_BLOCK = 32 * 1024
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    path: Path
    run_id: str = ""
    project: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    artifacts: list[dict] = field(default_factory=list)  # name, type, files
    exit_code: int | None = None


def _records(path: Path):
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B transaction log")
    pos, buf = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left
            continue
        if pos + _HEADER + length > len(data):  # a record still being written (a live run): stop before it
            return
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            buf = chunk
        elif kind == _MIDDLE:
            buf += chunk
        elif kind == _LAST:
            yield buf + chunk
            buf = b""


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def _value(item):
    try:
        return json.loads(item.value_json)
    except (ValueError, TypeError):
        return item.value_json


def read_offline_run(path: str | Path) -> OfflineRun:
    """Parse a `run-<id>.wandb` file, or the offline run dir holding it."""
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("run-*.wandb"))
        if not found:
            raise FileNotFoundError(f"{path}: no run-*.wandb file")
        path = found[0]
    out = OfflineRun(path=path)
    for raw in _records(path):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out.run_id, out.project, out.name = r.run_id, r.project, r.display_name
            out.group, out.job_type, out.tags = r.run_group, r.job_type, list(r.tags)
            for item in r.config.update:
                out.config[_key(item)] = _value(item)
        elif kind == "config":
            for item in rec.config.update:
                out.config[_key(item)] = _value(item)
        elif kind == "summary":
            for item in rec.summary.update:
                out.summary[_key(item)] = _value(item)
            for item in rec.summary.remove:
                out.summary.pop(_key(item), None)
        elif kind == "history":
            out.history.append({_key(i): _value(i) for i in rec.history.item})
        elif kind == "artifact":
            a = rec.artifact
            out.artifacts.append(
                {"name": a.name, "type": a.type, "files": [e.path for e in a.manifest.contents]}
            )
        elif kind == "exit":
            out.exit_code = rec.exit.exit_code
    return out


def find_offline_runs(root: str | Path) -> list[Path]:
    """Every offline run dir (`wandb/offline-run-*`) under `root`, sorted."""
    return sorted(p for p in Path(root).rglob("offline-run-*") if p.is_dir() and any(p.glob("run-*.wandb")))
