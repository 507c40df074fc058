"""Every node of every entry point is typed and checked before any work (issue 23 item 2): a typo and a wrong type
in each node are one line naming the key (exit 2 through the task runner), in-process on the composed configs."""

from __future__ import annotations

import copy
import dataclasses

import pytest
from omegaconf import OmegaConf, open_dict

from eatlab.cli.config_check import plain_config, validate_for
from eatlab.errors import ConfigError
from eatlab.utils import schemas

ENTRY_POINTS = {  # console script -> its config (conf/<name>.yaml)
    "eatlab": "config",
    "eatlab-eval-extractor": "eval_extractor",
    "eatlab-align-eval": "align_eval",
    "eatlab-finetune": "finetune",
    "eatlab-train-extractor": "train_extractor",
    "eatlab-train-baseline": "train_baseline",
}

# (entry point, key, a wrong value, the one line). The typo test adds `<key>x` next to each key.
WRONG = [
    ("eatlab", "seed", "abc", "seed=abc: expected a whole number"),
    ("eatlab", "max_sentence_chars", 0, "max_sentence_chars=0: expected a whole number >= 1"),
    ("eatlab", "n_sample_predictions", -1, "n_sample_predictions=-1: expected a whole number >= 0"),
    ("eatlab", "data.limit", "abc", "data.limit=abc: expected a whole number >= 0 or null"),
    ("eatlab", "eval.max_failed_share", 2, "eval.max_failed_share=2: expected a number in [0, 1]"),
    ("eatlab", "generation.top_p", "x", "generation.top_p=x: expected a number in [0, 1]"),
    ("eatlab", "prompt_rounds.forward", 9, "prompt_rounds.forward=9: expected a whole number from 1 to 5"),
    ("eatlab", "prompts.max_new_tokens", [0],
     "prompts.max_new_tokens=[0]: expected null or a list of whole numbers >= 1, one per round"),
    ("eatlab", "alignment.select", "beam", "alignment.select=beam: expected one of generate, rank"),
    ("eatlab", "cache.mode", "rw", "cache.mode=rw: expected one of readwrite, readonly, off"),
    ("eatlab", "model.hash_weights", "yes", "model.hash_weights=yes: expected true or false"),
    ("eatlab", "language.nsl", "maybe", "language.nsl=maybe: expected true or false"),
    ("eatlab", "tracking.mode", "loud", "tracking.mode=loud: expected one of offline, online, disabled"),
    ("eatlab", "finetune.adapter_path", 3, "finetune.adapter_path=3: expected a string or null"),
    ("eatlab", "backend.batch_size", "abc", "backend.batch_size=abc: expected a whole number"),
    ("eatlab", "extractor.batch_size", "abc", "extractor.batch_size=abc: expected a whole number"),
    ("eatlab-eval-extractor", "data.split", "", "data.split=: expected a non-empty string"),
    ("eatlab-align-eval", "align_eval.n_boot", 0, "align_eval.n_boot=0: expected a whole number >= 1"),
    ("eatlab-align-eval", "heldout.test_fraction", 1, "heldout.test_fraction=1: expected a number in [0, 1)"),
    ("eatlab-align-eval", "heldout.test_max", -1, "heldout.test_max=-1: expected a whole number >= 0 or null"),
    ("eatlab-align-eval", "model.id", "", "model.id=: expected the model's name"),
    ("eatlab-finetune", "finetune.lora.r", 0, "finetune.lora.r=0: expected a whole number >= 1"),
    ("eatlab-finetune", "finetune.optim.lr", 0, "finetune.optim.lr=0: expected a number > 0"),
    ("eatlab-finetune", "finetune.test_max", "many", "finetune.test_max=many: expected a whole number >= 0 or null"),
    ("eatlab-finetune", "finetune.filters.dedup", "yes", "finetune.filters.dedup=yes: expected true or false"),
    ("eatlab-finetune", "trainer.max_epochs", "abc", "trainer.max_epochs=abc: expected a whole number or null"),
    ("eatlab-finetune", "keep_checkpoints", "no", "keep_checkpoints=no: expected true or false"),
    ("eatlab-finetune", "callbacks.lr_monitor.logging_interval", 3,
     "callbacks.lr_monitor.logging_interval=3: expected one of step, epoch or null"),
    ("eatlab-train-extractor", "extractor.train.lr", 0, "extractor.train.lr=0: expected a number > 0"),
    ("eatlab-train-extractor", "extractor.train.lora.r", 0, "extractor.train.lora.r=0: expected a whole number >= 1"),
    ("eatlab-train-extractor", "trainer.accumulate_grad_batches", "x",
     "trainer.accumulate_grad_batches=x: expected a whole number"),
    ("eatlab-train-baseline", "encoder.warmup_ratio", 2, "encoder.warmup_ratio=2: expected a number in [0, 1]"),
    ("eatlab-train-baseline", "train.limit", 0, "train.limit=0: expected a whole number >= 1 or null"),
    ("eatlab-train-baseline", "data.limit", "abc", "data.limit=abc: expected a whole number >= 0 or null"),
    ("eatlab-train-baseline", "languages", [], "languages=[]: expected a language code or a non-empty list of them"),
]  # fmt: skip


@pytest.fixture(scope="module")
def composed():
    """Each entry point's shipped config, composed once (a case edits a copy)."""
    from hydra import compose, initialize_config_dir

    from eatlab.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return {name: compose(config_name=name) for name in ENTRY_POINTS.values()}


def _with(composed, entry: str, key: str, value):
    cfg = copy.deepcopy(composed[ENTRY_POINTS[entry]])
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def _line(config_name: str, cfg) -> str:
    with pytest.raises(ConfigError) as info:
        validate_for(config_name, cfg)
    line = str(info.value)
    assert "\n" not in line
    return line


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_the_shipped_config_of_every_entry_point_passes(composed, entry):
    validate_for(ENTRY_POINTS[entry], composed[ENTRY_POINTS[entry]])


@pytest.mark.parametrize(("entry", "key", "value", "message"), WRONG, ids=[f"{e}:{k}" for e, k, *_ in WRONG])
def test_a_wrong_type_or_range_in_any_node_is_one_line_naming_the_key(composed, entry, key, value, message):
    assert _line(ENTRY_POINTS[entry], _with(composed, entry, key, value)) == message


@pytest.mark.parametrize(
    ("entry", "key"), [(e, k) for e, k, *_ in WRONG], ids=[f"{e}:{k}" for e, k, *_ in WRONG]
)
def test_a_typo_in_any_node_is_one_line_naming_the_key(composed, entry, key):
    parent, _, leaf = key.rpartition(".")
    typo = f"{parent}.{leaf}x" if parent else f"{leaf}x"
    line = _line(ENTRY_POINTS[entry], _with(composed, entry, typo, 1))
    assert line.startswith(f"{typo}=1: unknown key (")
    takes = line.split(" takes: ", 1)[1]
    assert leaf in takes.rstrip(")").split(", ")  # the right spelling is among what the node takes
    if not parent:
        assert line.startswith(f"{typo}=1: unknown key (the config takes: ")
    elif (
        parent.split(".")[0] not in ("backend", "extractor", "trainer", "callbacks")
        or parent == "extractor.train"
    ):
        assert f"({parent} takes: " in line  # a plain node names itself; a component node names its class


def test_the_task_runner_exits_2_with_the_line_before_any_work(composed, tmp_path, capsys):
    from eatlab.cli.task import run_task

    cfg = _with(composed, "eatlab-finetune", "finetune.lora.rr", 8)
    with open_dict(cfg):
        cfg.paths.run_dir = str(tmp_path / "run")
    ran = []
    with pytest.raises(SystemExit) as exit_:
        run_task(lambda cfg, task: ran.append(1), cfg, "finetune", "finetune")
    assert exit_.value.code == 2 and not ran
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .startswith(
            "error: finetune.lora.rr=8: unknown key (finetune.lora takes: r, alpha, dropout, target_modules)"
        )
    )


def test_each_value_of_a_sweep_of_another_entry_point_is_checked_before_job_0():
    from eatlab.cli.sweep_check import check_sweep

    with pytest.raises(ConfigError) as info:
        check_sweep(["finetune.lora.r=8,0"], "finetune")
    assert str(info.value) == "finetune.lora.r=0: expected a whole number >= 1"
    with pytest.raises(ConfigError, match=r"^encoder.batch_size=0: expected a whole number >= 1$"):
        check_sweep(["encoder=tiny", "encoder.batch_size=4,0"], "train_baseline")


def test_the_training_presets_pass(composed):
    """trainer=fsdp's strategy is a node of its own (its class must import); a spaCy recipe has its own schema."""
    from hydra import compose, initialize_config_dir

    from eatlab.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for name, overrides in [
            ("finetune", ["trainer=fsdp"]),
            ("finetune", ["trainer=ddp", "optimizer=adamw"]),
            ("train_extractor", ["extractor=spacy_wikiann"]),
            ("train_extractor", ["extractor=flan_t5_large"]),
            ("train_baseline", ["encoder=xlmr_large"]),
        ]:
            validate_for(name, compose(config_name=name, overrides=overrides))
        bad = compose(
            config_name="train_extractor", overrides=["extractor=spacy_wikiann", "extractor.train.dropout=1"]
        )
        assert _line("train_extractor", bad) == "extractor.train.dropout=1: expected a number in [0, 1)"
        fsdp = compose(config_name="finetune", overrides=["trainer=fsdp", "trainer.strategy._target_=x.Y"])
        assert _line("finetune", fsdp).startswith("trainer.strategy._target_=x.Y: cannot import")


def test_a_value_left_unset_is_named():
    cfg = OmegaConf.create({"data": {"limit": "???"}, "seed": "${nowhere}"})
    with pytest.raises(ConfigError, match=r"^data.limit: no value \(\?\?\? in the config; set it"):
        plain_config(cfg)
    with pytest.raises(ConfigError, match=r"^seed: "):
        plain_config(OmegaConf.create({"seed": "${nowhere}"}))
    # outside a Hydra job the run dir is not known yet: it stays as written
    assert plain_config(OmegaConf.create({"paths": {"run_dir": "${hydra:runtime.output_dir}"}})) == {
        "paths": {"run_dir": "${hydra:runtime.output_dir}"}
    }


def test_one_rule_in_one_place():
    """The direct users of a node's rules check them through the same schema, with the same words."""
    from eatlab.data.languages import Language
    from eatlab.finetune.eacl import FilterOptions
    from eatlab.finetune.module import QLoRASettings
    from eatlab.llm.base import GenerationSettings
    from eatlab.llm.cache import MODES

    assert schemas.SELECT_MODES == GenerationSettings.SELECT_MODES and schemas.CACHE_MODES == MODES
    assert set(schemas.Language.model_fields) == {f.name for f in dataclasses.fields(Language)}
    assert set(schemas.Filters.model_fields) == {f.name for f in dataclasses.fields(FilterOptions)}
    with pytest.raises(ConfigError) as info:
        GenerationSettings(substring_of="a", substring_select="beam")
    assert str(info.value) == "alignment.select=beam: expected one of generate, rank"
    for kwargs, message in [
        ({"lora_r": 0}, "finetune.lora.r=0: expected a whole number >= 1"),
        ({"lora_dropout": 1.0}, "finetune.lora.dropout=1.0: expected a number in [0, 1)"),
        ({"quantization": "int3"}, "finetune.quantization=int3: expected one of nf4, none"),
        (
            {"target_modules": ()},
            "finetune.lora.target_modules=[]: expected a non-empty list of module names",
        ),
    ]:
        with pytest.raises(ConfigError) as info:
            QLoRASettings(model_source="x", **kwargs).validate()
        assert str(info.value) == message
    QLoRASettings(model_source="x").validate()


def test_types_are_said_in_words():
    from typing import Literal

    assert schemas.describe(int | None) == "a whole number or null"
    assert schemas.describe(schemas.Int(ge=1, le=5)) == "a whole number from 1 to 5"
    assert schemas.describe(schemas.Share) == "a number in [0, 1)"
    assert schemas.describe(Literal["a", "b"]) == "one of a, b"
    assert schemas.describe(list[schemas.Positive]) == "a list of whole numbers >= 1"
