"""Bad configuration fails at start in one line naming the key; over-long sentences are truncated and counted."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from eatlab.cli.config_check import precheck_overrides, validate_config
from eatlab.cli.run import run_eat
from eatlab.data.loader import select_sentences
from eatlab.errors import ConfigError
from eatlab.testing.fault_server import FaultServer, OracleModel

EATLAB = Path(sys.executable).with_name("eatlab")

BAD = {  # command line -> what the last line of stderr must say
    "language=xx": "language=xx: no config 'language/xx' (available: ar, de, en,",
    "data.limit=abc": "data.limit=abc: expected a whole number >= 0 or null",
    "data.root=/nonexistent": "data.root=/nonexistent: no such folder",
    "prompts.file=/nope.yaml": "prompts.file=/nope.yaml: no such file",
    "data.limt=3": "data.limt=3: no such key 'data.limt'",
    "prompt_rounds=r9": "prompt_rounds=r9: no config 'prompt_rounds/r9'",
    "backend=openai backend.max_retries=many": "backend.max_retries=many: expected a whole number >= 0",
    "-m language=zh,xx": "language=xx: no config 'language/xx'",
    "+data.limti=3": "data.limti=3: unknown key (data takes: source, root, split, limit, sample, seed, drop_redirects)",
    "generation.top_k=1.5": "generation.top_k=1.5: expected a whole number",
}


@pytest.mark.slow
def test_bad_configuration_fails_at_start_with_one_line_naming_the_key(tmp_path):
    """Each command runs as a real `eatlab` process (all at once): exit 2, one `error:` line, no traceback."""
    procs = {
        cmd: subprocess.Popen(
            [str(EATLAB), *cmd.split(), "tracking=none", f"paths.output_dir={tmp_path / 'out'}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )  # fmt: skip
        for cmd in BAD
    }
    for cmd, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert proc.returncode == 2, (cmd, proc.returncode, err)
        assert lines and lines[-1].startswith("error: ") and BAD[cmd] in lines[-1], (cmd, err)
        assert "Traceback" not in err + out, cmd
        assert not list((tmp_path / "out").rglob("metrics.json"))


@pytest.mark.slow
def test_checks_accept_every_shipped_option(compose):
    """No false alarm: the default config and each language, model and backend option pass both checks."""
    from eatlab.paths import CONF_DIR

    assert (
        precheck_overrides(
            ["-m", "language=" + ",".join(p.stem for p in (CONF_DIR / "language").glob("*.yaml"))]
        )
        is None
    )
    for group in ("model", "backend", "prompts", "prompt_rounds", "extractor", "method", "generation"):
        for option in sorted((CONF_DIR / group).glob("*.yaml")):
            validate_config(compose([f"{group}={option.stem}"]))
    with pytest.raises(ConfigError, match=r"^generation.top_p=1.5: expected a number in \[0, 1\]$"):
        validate_config(compose(["generation.top_p=1.5"]))


def test_extremely_long_sentences_are_truncated_with_a_counted_warning(compose, tmp_path, caplog, capsys):
    sentences = select_sentences("zh", "test", limit=8).sentences
    limit = 40
    long_ones = [s for s in sentences if len(s.text) > limit]
    assert 0 < len(long_ones) < len(sentences)
    with FaultServer(OracleModel.from_sentences(sentences)) as srv, caplog.at_level(logging.WARNING):
        m = run_eat(
            compose(["language=zh", "data.limit=8", "extractor=llm", "backend=openai", f"backend.base_url={srv.base_url}",
                     f"max_sentence_chars={limit}", f"cache.path={tmp_path / 'c.sqlite'}"]),
            tmp_path / "run",
        )  # fmt: skip
    assert m["counts"]["truncated_sentences"] == len(long_ones)
    warned = [
        r for r in caplog.records if "truncated" in r.getMessage() and f"{limit} characters" in r.getMessage()
    ]
    assert {r.getMessage().split(":")[0] for r in warned} == {s.id for s in long_ones}
    assert f"sentences truncated to max_sentence_chars: {len(long_ones)}" in capsys.readouterr().out
    fwd = {r["sentence_id"]: r for r in map(json.loads, (tmp_path / "run/artifacts/forward.jsonl").open())}
    for s in sentences:
        assert fwd[s.id]["truncated"] == (s in long_ones) and fwd[s.id]["text"] == s.text[:limit]
    # the model never saw more than the limit; predictions still cover the whole sentence
    sent = {r.sentence for r in srv.requests if r.stage == "forward"}
    assert sent and all(len(t) <= limit for t in sent)
    assert m["n_sentences"] == 8 and 0 <= m["entity_f1"] <= 1


def test_a_key_of_another_group_option_is_named_with_its_override():
    """`tracking.mode=offline tracking=none`: none has no `mode`; the line names the key that cannot be set."""
    assert precheck_overrides(["tracking.mode=offline", "tracking=none"]) == (
        "tracking.mode: tracking=none has no key 'mode' (drop the `tracking.mode=...` override, "
        "it belongs to another tracking option)"
    )
    assert precheck_overrides(["nosuch.key=1"]) == (
        "nosuch.key=1: no such key 'nosuch.key' in the config (to add a new key use +nosuch.key=1)"
    )
    assert precheck_overrides(["tracking=none", "data.limit=2"]) is None


@pytest.mark.parametrize(
    "config_name,override,message",
    [
        (
            "finetune",
            "finetune.optim.warmup_ratio=2",
            "finetune.optim.warmup_ratio=2: expected a number in [0, 1]",
        ),
        ("train_baseline", "encoder.batch_size=0", "encoder.batch_size=0: expected a whole number >= 1"),
        (
            "train_extractor",
            "extractor._target_=x.Y",
            "extractor._target_=x.Y: cannot import (No module named 'x')",
        ),
    ],
)
def test_every_entry_point_checks_its_config(config_name, override, message):
    """The task runner validates the config of all five entry points, one line naming the key."""
    from hydra import compose, initialize_config_dir

    from eatlab.cli.config_check import validate_for
    from eatlab.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        validate_for(config_name, compose(config_name=config_name))  # the shipped defaults pass
        bad = compose(config_name=config_name, overrides=[override])
    with pytest.raises(ConfigError) as info:
        validate_for(config_name, bad)
    assert str(info.value) == message
