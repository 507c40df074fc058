"""notebooks/analysis.ipynb executes headless (nbclient) on a tiny real sweep and shows tables and plots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "analysis.ipynb"


def _tiny_sweep(root: Path) -> Path:
    """Two real runs of the tiny model (zh, ja; 2 sentences) laid out as a sweep, with its summary."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from eatlab.cli.run import run_eat
    from eatlab.paths import CONF_DIR
    from eatlab.sweep.summary import write_sweep_summary

    models = os.environ.get("EATLAB_TEST_MODELS", str(REPO / "outputs" / "test-models"))
    for i, lang in enumerate(("zh", "ja")):
        run_dir = root / f"{i}_language={lang}"
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "overrides.yaml").write_text(f"- language={lang}\n", encoding="utf-8")
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(
                config_name="config",
                overrides=[
                    f"paths.output_dir={root / 'outputs'}",
                    f"paths.run_dir='{run_dir}'",
                    f"paths.models_dir={models}",
                    "tracking=none",
                    "data.limit=2",
                    "generation.max_new_tokens=4",
                    f"language={lang}",
                ],
            )
        OmegaConf.resolve(cfg)
        run_eat(cfg, run_dir)
    write_sweep_summary(root)
    return root


@pytest.mark.slow
def test_analysis_notebook_executes_on_a_tiny_sweep(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")

    sweep = _tiny_sweep(tmp_path / "sweep")
    monkeypatch.setenv("EATLAB_SWEEP_DIR", str(sweep))
    monkeypatch.setenv("EATLAB_ROUNDTRIP", "0")  # the round trip is covered by test_analysis; keep this fast
    monkeypatch.setenv("EATLAB_N_BOOT", "50")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError on any failing cell

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    mimes = [m for o in outputs for m in o.get("data", {})]
    assert mimes.count("image/png") >= 2  # the plots
    assert mimes.count("text/html") >= 4  # the summary, runs and ablation tables
    text = "\n".join(o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "0_language=zh" in text and "1_language=ja" in text
    assert (sweep / "analysis" / "report.html").is_file()
