"""Shared fixtures: the ../shared data folder (skip without it, fail under CI) and composed configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


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
