"""Where adapters live, and what is saved with them.

Layout (all under `finetune.output_root`, default `${paths.output_dir}/adapters/${model.id}`):

    <langs>-<hash>/          one trained adapter: peft files (adapter_config.json, adapter_model.safetensors)
                             and eatlab_adapter.json (config, data hash, metrics, provenance)
    <langs>  -> <langs>-<hash>   the stable pointer: a relative symlink to the newest training for those languages

`<langs>` is the training languages joined with '+' in the order given (`zh`, `zh+ja`); `<hash>` is the first 12
hex digits of the sha256 of (data hash, base model key, training config), so the same training lands in the same
folder. The pipeline's `finetune=eacl_qlora` reads `finetune.adapter_path`, by default the pointer for the
run's language (`<output_root>/<language.code>`); point it elsewhere for a mixed-language adapter.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from eatlab.utils.io import atomic_write_json, canonical_json, sha256_text

METADATA_FILE = "eatlab_adapter.json"


def languages_tag(languages: list[str]) -> str:
    return "+".join(languages)


def training_hash(data_sha256: str, model_key: str, config: dict) -> str:
    """First 12 hex digits naming one training: same data, base and settings -> same folder."""
    return sha256_text(canonical_json({"data": data_sha256, "model": model_key, "config": config}))[:12]


def version_dir(output_root: str | Path, languages: list[str], run_hash: str) -> Path:
    return Path(output_root) / f"{languages_tag(languages)}-{run_hash}"


def pointer_path(output_root: str | Path, languages: list[str]) -> Path:
    return Path(output_root) / languages_tag(languages)


def update_pointer(pointer: Path, target: Path) -> Path:
    """Point `pointer` at `target` atomically: a relative symlink, or a copy where symlinks are not allowed."""
    pointer = Path(pointer)
    target = Path(target)
    if pointer.exists() and not pointer.is_symlink() and pointer.is_dir():
        if (pointer / "adapter_config.json").is_file() or not any(pointer.iterdir()):
            shutil.rmtree(pointer)  # an earlier copy-pointer
        else:
            from eatlab.errors import ConfigError

            raise ConfigError(f"finetune.output_root: {pointer} exists and is not an adapter pointer")
    tmp = pointer.parent / f".{pointer.name}.{os.getpid()}.link"
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(os.path.relpath(target, pointer.parent), tmp, target_is_directory=True)
        os.replace(tmp, pointer)
    except OSError:  # no symlinks (some Windows setups): copy, then swap in
        tmp.unlink(missing_ok=True)
        staging = Path(tempfile.mkdtemp(dir=pointer.parent, prefix=f".{pointer.name}."))
        shutil.copytree(target, staging, dirs_exist_ok=True)
        if pointer.is_symlink():
            pointer.unlink()
        elif pointer.exists():
            shutil.rmtree(pointer)
        os.replace(staging, pointer)
    return pointer


def write_metadata(path: str | Path, meta: dict) -> None:
    atomic_write_json(Path(path) / METADATA_FILE, meta)


def adapter_provenance(adapter_path: str | Path | None) -> dict | None:
    """What a pipeline run should record about its adapter: where it is, what it was trained on, its metrics.

    None without an adapter; {"path": ...} alone for an adapter not made by eatlab-finetune.
    """
    if not adapter_path:
        return None
    path = Path(adapter_path)
    out: dict = {"path": str(path), "resolved": str(path.resolve())}
    meta_file = path / METADATA_FILE
    if meta_file.is_file():
        import json

        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        out |= {
            "hash": meta.get("hash"),
            "languages": meta.get("languages"),
            "directions": meta.get("directions"),
            "data_sha256": (meta.get("data") or {}).get("sha256"),
            "base_model_key": (meta.get("base_model") or {}).get("model_key"),
            "validation": (meta.get("metrics") or {}).get("validation"),
        }
    return out
