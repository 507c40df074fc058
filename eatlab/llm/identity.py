"""The identity of a model's weights for the response cache: id, revision, local-weights fingerprint, adapter.

An answer may only be reused for the same weights, so the cache key carries a `model_key` string:
- hub weights: `<model id>` or `<model id>@<revision>`;
- local weights (`model.path=DIR`): `<model id>@local:<fingerprint of DIR>` (unless `model.hash_weights=false`,
  where the user vouches that `model.id` names the weights);
- a GGUF file (`model.path=FILE.gguf`, converted once to an HF folder by `eatlab.llm.gguf`):
  `<model id>@gguf:<sha256 of the GGUF file, 16 hex>`, read from the converted folder's `gguf_source.json`;
- quantized on load (bitsandbytes): `... +quant:4bit`;
- with an adapter: `... +adapter:<fingerprint of the adapter folder>`.

The dtype (bf16 on GPU, fp32 on CPU) is deliberately not part of the key: runs of the same weights share answers
although a few greedy choices can differ between precisions; give the runs distinct `model.id`s to keep them
apart.

The fingerprint reads every file's name, size and three 1 MiB slices (start, middle, end), so hashing a 140 GB
checkpoint takes milliseconds; any retraining changes all slices, so a different checkpoint never collides in
practice. It does not depend on file times or absolute paths: a copied folder keeps its key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from eatlab.errors import ConfigError

_SLICE = 1 << 20
_SKIP = {"README.md", "SMOKE_MODEL", ".gitattributes"}
GGUF_SOURCE = "gguf_source.json"  # in a folder converted from a GGUF file (eatlab.llm.gguf)


def gguf_sha256(path: str | Path) -> str | None:
    """The sha256 of the GGUF file that the folder `path` was converted from, or None (not a converted folder)."""
    source = Path(path) / GGUF_SOURCE
    if not source.is_file():
        return None
    try:
        sha = json.loads(source.read_text(encoding="utf-8")).get("sha256")
    except (OSError, ValueError, AttributeError):
        return None
    return sha if isinstance(sha, str) and len(sha) == 64 else None


def folder_fingerprint(path: str | Path) -> str:
    """sha256 (hex) over the sorted relative names, sizes and start/middle/end slices of the files in `path`."""
    root = Path(path)
    if root.is_file():
        files = [root]
        root = root.parent
    elif root.is_dir():
        files = sorted(
            p for p in root.rglob("*") if p.is_file() and p.name not in _SKIP and ".cache" not in p.parts
        )
    else:
        raise ConfigError(f"model.path={path}: no such file or folder")
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.relative_to(root).as_posix()}\0{size}\0".encode())
        with f.open("rb") as fh:
            for start in sorted({0, max(0, size // 2 - _SLICE // 2), max(0, size - _SLICE)}):
                fh.seek(start)
                h.update(fh.read(_SLICE))
    return h.hexdigest()


def make_model_key(
    model_id: str,
    revision: str | None = None,
    local_path: str | Path | None = None,
    adapter_path: str | Path | None = None,
    hash_weights: bool = True,
    quantization: str | None = None,
) -> str:
    """The cache's name for a set of weights (see the module docstring)."""
    if not model_id:
        raise ConfigError("model.id: must name the model (it keys the response cache)")
    key = str(model_id)
    if local_path is not None and hash_weights:
        sha = gguf_sha256(local_path)
        key += f"@gguf:{sha[:16]}" if sha else f"@local:{folder_fingerprint(local_path)[:16]}"
    elif revision:
        key += f"@{revision}"
    if quantization:
        key += f"+quant:{quantization}"
    if adapter_path:
        key += f"+adapter:{folder_fingerprint(adapter_path)[:16]}"
    return key
