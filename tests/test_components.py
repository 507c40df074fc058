"""Components from config: a backend, an extractor and a method defined outside eatlab (tests/plugins/mylab.py)
run the real pipeline, chosen by config only; every shipped option of the groups has a `_target_`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from eatlab.errors import ConfigError
from eatlab.paths import CONF_DIR

PLUGINS = Path(__file__).parent / "plugins"


@pytest.mark.parametrize("group", ["backend", "extractor", "method"])
def test_every_option_composes_to_a_target(compose, group):
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        cfg = compose([f"{group}={path.stem}"])
        assert str(cfg[group]["_target_"]).startswith("eatlab."), path


@pytest.mark.slow
def test_user_components_run_the_pipeline_by_config_only(tmp_path):
    exe = Path(sys.executable).with_name("eatlab")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from eatlab.cli.run import main; main()"]
    cmd += [
        f"hydra.searchpath=[file://{PLUGINS / 'conf'}]",
        "backend=echo",
        "extractor=capitalised",
        "method=exact_copy",
        "language=de",
        "data.limit=6",
        "tracking=none",
        f"paths.output_dir={tmp_path / 'outputs'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    env = {**os.environ, "PYTHONPATH": str(PLUGINS)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["run"]["method"] == "exact_copy" and metrics["run"]["extractor"] == "capitalised_words"
    # 6 sentences x 3 forward rounds, all answered by the echo backend; no backward LLM in this method
    assert metrics["llm_calls"] == 18 and metrics["llm_cache_hits"] == 0
    assert (metrics["n_gold_entities"], metrics["n_pred_entities"]) == (8, 22)
    prov = json.loads((run / "provenance.json").read_text(encoding="utf-8"))
    assert prov["model_key"] == "echo:eatlab/tiny-qwen2-smoke"
    assert prov["compute"] == {"dtype": None, "batch_invariant": False}  # a plugin without local weights
    assert prov["extractor"] == {"name": "capitalised_words"}
    conll = (run / "predictions.conll").read_text(encoding="utf-8")
    assert "Kipping\tI-PER\tB-PER" in conll and "Bernd\tB-PER\tB-PER" in conll


def test_a_method_builds_only_what_it_uses(compose, tmp_path):
    from eatlab.data.languages import get_language
    from eatlab.eat.methods import build_method

    cfg = compose(["method=direct_llm", "extractor=flan_t5"])  # flan_t5 without checkpoint cannot be built
    method = build_method(cfg, None, get_language("zh"), tmp_path)
    assert method.extractor is None and method.rounds == 1
    with pytest.raises(ConfigError, match="extractor.checkpoint"):
        build_method(compose(["method=eat", "extractor=flan_t5"]), None, get_language("zh"), tmp_path)


@pytest.mark.slow
def test_a_fixed_round_method_refuses_other_rounds_asked_on_the_command_line(tmp_path):
    exe = Path(sys.executable).with_name("eatlab")
    cmd = [str(exe), "method=translate_test", "prompt_rounds=r3", "data.limit=2", "tracking=none",
           f"hydra.run.dir={tmp_path / 'run'}", f"paths.output_dir={tmp_path / 'o'}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: prompt_rounds.forward=3: method=translate_test always runs 1 forward round(s); "
        "drop `prompt_rounds=r3` or choose another method"
    )
    err = json.loads((tmp_path / "run" / "error.json").read_text(encoding="utf-8"))
    assert err["error_type"] == "ConfigError" and err["traceback"] is None


def test_plugin_yaml_files_name_the_plugin_module():
    for path in [
        p for g in ("backend", "extractor", "method") for p in (PLUGINS / "conf" / g).glob("*.yaml")
    ]:
        assert yaml.safe_load(path.read_text())["_target_"].startswith("mylab."), path
