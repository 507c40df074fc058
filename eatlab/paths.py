"""Where the package finds its own files: the Hydra config tree and shipped resources (samples, prompt sets)."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
CONF_DIR = REPO_DIR / "conf"  # the top-level conf/ (the project is installed editable)
RESOURCES_DIR = PACKAGE_DIR / "resources"
SAMPLES_DIR = RESOURCES_DIR / "samples" / "wikiann"
PROMPTS_DIR = RESOURCES_DIR / "prompts"
