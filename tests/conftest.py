"""Shared fixtures: the ../shared data folder (skip without it, fail under CI) and composed configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Tiny models on 2 cores: one thread per process is several times faster than oversubscribed threads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass
SHARED = REPO.parent / "shared"

# Property tests: CI replays the same examples every time (a pass or a failure is reproducible); a developer's
# runs keep exploring new ones (the nukta-only Hindi token in tests/test_recovery.py was found that way).
if os.environ.get("CI", "").lower() == "true":
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("ci", derandomize=True)
    _hypothesis_settings.load_profile("ci")


def _need_shared(sub: str = "") -> Path:
    path = SHARED / sub
    if not path.exists():
        msg = f"{path} is absent (../shared from the repo root holds the real data)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + "; CI=true requires it")
        pytest.skip(msg)
    return SHARED


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """Path of ../shared; skips the test when absent, fails when CI=true."""
    return _need_shared("data")


@pytest.fixture(scope="session")
def wikiann_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "wikiann"


@pytest.fixture(scope="session")
def transcripts_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "llm_transcripts"


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch, tmp_path_factory):
    """Tests never reach a hub and never write to the user's W&B or outputs folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def compose(tmp_path):
    """Compose the real config tree with overrides, shrunk for tests: outputs, cache and run dir under tmp.

    Usage: `cfg = compose(["language=zh", "data.limit=4"])`. W&B is off unless the test asks for it.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from eatlab.paths import CONF_DIR

    models_dir = os.environ.get("EATLAB_TEST_MODELS", str(REPO / "outputs" / "test-models"))

    def _compose(overrides: list[str] | None = None, run_dir: Path | None = None):
        base = [
            f"paths.output_dir={tmp_path / 'outputs'}",
            f"paths.run_dir={run_dir or tmp_path / 'run'}",
            f"paths.models_dir={models_dir}",
            "tracking=none",
            "data.limit=4",
        ]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=base + list(overrides or []))
        OmegaConf.resolve(cfg)
        return cfg

    return _compose
