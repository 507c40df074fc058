"""The cache identity of what answers: weights (id, revision, local fingerprint), quantization, compute dtype,
adapter. Defined once, here: `LLMBackend.cache_identity` (from the config, before any backend exists) and every
backend's `model_key` return `make_model_key` of the same inputs, and the client keys each answer with it.

An answer may only be reused for the same weights run the same way, so the cache key carries a `model_key` string:
- hub weights: `<model id>` or `<model id>@<revision>`;
- local weights (`model.path=DIR`): `<model id>@local:<fingerprint of DIR>` (unless `model.hash_weights=false`,
  where the user vouches that `model.id` names the weights);
- a GGUF file (`model.path=FILE.gguf`, converted once to an HF folder by `eatlab.llm.gguf`):
  `<model id>@gguf:<sha256 of the GGUF file, 16 hex>`, read from the converted folder's `gguf_source.json`;
- quantized on load (bitsandbytes): `... +quant:4bit`;
- computed in another precision than float32: `... +dtype:bfloat16` (or float16). Greedy replies of bf16 and
  fp32 differ, so their answers never mix. float32 adds nothing: keys made before the dtype entered the key
  (fp32 runs on CPU, the shared transcripts) stay valid; half precision with the hf backend's batch-invariant
  decoding (`backend.batch_invariant`, eatlab.llm.hf_attention) adds `+batch_invariant`: those replies depend on
  the prompt alone, the others also on the batch they ran in;
- with an adapter: `... +adapter:<fingerprint of the adapter folder>`.

`dtype=auto` is resolved as the hf backend resolves it (`resolve_compute`): bf16 (fp16 without bf16 support) on
a CUDA device, fp32 on the CPU.

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
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}  # fmt: skip


def resolve_device(device: str = "auto") -> str:
    """`auto`: cuda when available, else cpu (imports torch only then)."""
    device = str(device or "auto")
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str = "auto", device: str = "auto") -> str:
    """The dtype name a local model computes in: `auto` is bfloat16 on CUDA (float16 without bf16 support) and
    float32 on the CPU, as the hf backend loads it."""
    dtype = str(dtype or "auto")
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ConfigError(f"backend.dtype={dtype}: expected auto, float32, bfloat16 or float16")
        return DTYPES[dtype]
    if not resolve_device(device).startswith("cuda"):
        return "float32"  # half precision on CPU is slow and inexact
    import torch

    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def warn_if_slow_bf16(dtype: str, device: str) -> str | None:
    """A bf16 model on a CPU without bf16 matrix units (no AVX512-BF16, no AMX) runs many times slower than fp32
    (eatlab.provenance.cpu_info); say so in the log at each such load, naming the CPU, and return the line
    (None: no warning)."""
    import logging

    from eatlab.provenance import cpu_info

    if not (str(device).startswith("cpu") and "bfloat16" in str(dtype)):
        return None
    cpu = cpu_info()
    if cpu["bf16_units"]:
        return None
    line = (f"bfloat16 on a CPU without bf16 matrix units ({cpu['model']}, torch capability {cpu['capability']}): "
            "bf16 matmuls take a slow path here, float32 is faster and exact")  # fmt: skip
    logging.getLogger("eatlab").warning(line)
    return line


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
    dtype: str | None = None,
    batch_invariant: bool = False,
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
    if dtype and DTYPES.get(str(dtype), str(dtype)) != "float32":
        key += f"+dtype:{DTYPES.get(str(dtype), str(dtype))}"
        if batch_invariant:
            key += "+batch_invariant"
    if adapter_path:
        key += f"+adapter:{folder_fingerprint(adapter_path)[:16]}"
    return key
