"""The one Lightning builder (eatlab/cli/trainer.py) and the shared training pieces (eatlab/utils/lightning.py):
trainer, callbacks and optimizer come from config nodes, a bad node is one line naming it, epochs live in one key."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf


def _compose(config_name: str, tmp_path, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from eatlab.paths import CONF_DIR

    base = [f"paths.output_dir={tmp_path / 'outputs'}", f"paths.run_dir={tmp_path / 'run'}", "tracking=none"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=base + overrides)
    OmegaConf.resolve(cfg)
    return cfg


@pytest.fixture(scope="module")
def baseline_cfg(tmp_path_factory):
    """train_baseline with the tiny encoder on CPU, composed once for the tests below (each edits a copy)."""
    return _compose(
        "train_baseline", tmp_path_factory.mktemp("b"), ["encoder=tiny", "trainer.accelerator=cpu"]
    )


def _keys(node, prefix=""):
    for k, v in node.items():
        yield f"{prefix}{k}"
        if OmegaConf.is_dict(v):
            yield from _keys(v, f"{prefix}{k}.")


@pytest.mark.parametrize(
    ("config_name", "overrides", "epochs"),
    [("finetune", [], 2), ("train_extractor", [], 5), ("train_baseline", ["encoder=tiny"], 10)],
)
def test_epochs_live_in_trainer_max_epochs_only(tmp_path, config_name, overrides, epochs):
    cfg = _compose(config_name, tmp_path, overrides)
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer" and cfg.trainer.max_epochs == epochs
    assert [k for k in _keys(cfg) if k.endswith("epochs")] == ["trainer.max_epochs"]
    assert cfg.optimizer._partial_ and cfg.scheduler._partial_ and cfg.callbacks


def test_build_trainer_from_the_nodes(tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint

    from eatlab.cli.task import Task
    from eatlab.cli.trainer import build_trainer

    cfg = _compose(
        "train_baseline", tmp_path, ["encoder=tiny", "trainer.max_epochs=3", "trainer.accelerator=cpu"]
    )
    with Task(cfg, "t", tmp_path / "run") as task:
        trainer = build_trainer(
            cfg, task, callback_defaults={"model_checkpoint": {"dirpath": str(tmp_path / "c")}}
        )
        assert trainer.max_epochs == 3 and trainer.precision == "32-true"  # precision: auto on CPU
        assert trainer.default_root_dir == str(tmp_path / "run") and trainer.loggers == task.loggers()
        (ckpt,) = trainer.checkpoint_callbacks
        assert type(ckpt) is ModelCheckpoint and ckpt.dirpath == str(tmp_path / "c")
        assert (ckpt.monitor, ckpt.mode, ckpt.save_weights_only) == ("dev/entity_f1", "max", True)
        # a keyword of the task wins over the node
        assert (
            build_trainer(cfg, task, max_epochs=1, enable_checkpointing=False, callbacks=[]).max_epochs == 1
        )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            {"trainer": {"max_epoch": 3}},
            "trainer: Trainer.__init__() got an unexpected keyword argument 'max_epoch'",
        ),
        (
            {"callbacks": {"extra": {"_target_": "no.such.Callback"}}},
            "callbacks.extra: cannot build no.such.Callback (",
        ),
        (
            {"callbacks": {"extra": 3}},
            "callbacks.extra: expected a node with _target_ (a Lightning callback) or null",
        ),
    ],
)
def test_a_bad_node_is_one_line_naming_it(tmp_path, baseline_cfg, edit, message):
    from eatlab.cli.task import Task
    from eatlab.cli.trainer import build_trainer
    from eatlab.errors import ConfigError

    cfg = baseline_cfg.copy()
    OmegaConf.set_struct(cfg, False)
    cfg = OmegaConf.merge(cfg, edit)  # what `+trainer.max_epoch=3` etc. compose to
    with Task(cfg, "t", tmp_path / "run") as task, pytest.raises(ConfigError) as info:
        build_trainer(cfg, task)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_one_weight_decay_rule_and_the_optimizer_partial(baseline_cfg):
    """Matrices decay, every 1-D parameter (biases, norm weights) does not; the node's weight_decay goes to the
    decayed group only."""
    import torch
    from hydra.utils import instantiate

    from eatlab.utils.lightning import configure_optimizers, decay_groups

    model = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2, bias=False)
    )
    groups = decay_groups(model, 0.01)
    assert [len(g["params"]) for g in groups] == [2, 3] and [g["weight_decay"] for g in groups] == [0.01, 0.0]
    cfg = baseline_cfg
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.optimizer.eps) == (
        1e-3,
        0.01,
        1e-8,
    )  # encoder.*

    class Holder:
        trainer = None

    holder = Holder()
    conf = configure_optimizers(holder, model, instantiate(cfg.optimizer))
    opt = conf["optimizer"]
    assert type(opt) is torch.optim.AdamW and holder.optimizer_name == "AdamW" and "lr_scheduler" not in conf
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in opt.param_groups] == [
        (1e-3, 0.01, 2),
        (1e-3, 0.0, 3),
    ]


def test_epoch_sampler_resumes_mid_epoch():
    from eatlab.utils.lightning import EpochSampler

    s = EpochSampler(10, seed=0, batch_size=3)
    epoch0, again = list(s), list(s)
    assert sorted(epoch0) == list(range(10)) and again == epoch0  # a function of (seed, epoch)
    s.set_epoch(1)
    epoch1 = list(s)
    assert epoch1 != epoch0 and sorted(epoch1) == list(range(10))
    s.resume(1, batches=2)  # what a checkpoint after 2 batches of epoch 1 restores
    assert list(s) == epoch1[6:] and list(s) == epoch1  # the skip applies to one pass only
    s.resume(0, batches=4)  # a checkpoint at the end of epoch 0 (4 batches of 3 cover 10)
    assert list(s) == epoch1


def test_step_progress_logs_each_optimizer_step_once_and_counts_from_a_resume(tmp_path, caplog):
    """A real Trainer (Lightning's BoringModel, 8 batches, accumulation 2: 4 optimizer steps): one line per step
    with every_s=0, none repeated for the batches inside a step; a run resumed from its step-2 checkpoint counts
    the 2 steps still to run. Every training entry point's callbacks carry it."""
    import logging

    import pytorch_lightning as pl
    from pytorch_lightning.demos.boring_classes import BoringModel

    from eatlab.paths import CONF_DIR
    from eatlab.utils.lightning import StepProgress

    def fit(max_steps, ckpt=None):
        trainer = pl.Trainer(max_steps=max_steps, accumulate_grad_batches=2, limit_train_batches=8, logger=False,
                             enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                             callbacks=[StepProgress(every_s=0)], limit_val_batches=0)  # fmt: skip
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="eatlab.training"):
            trainer.fit(BoringModel(), ckpt_path=ckpt)
        return trainer, [
            r.getMessage().rsplit(" (", 1)[0] for r in caplog.records if r.name == "eatlab.training"
        ]

    _, lines = fit(4)
    assert lines == [f"training: {k}/4 steps" for k in (1, 2, 3, 4)]
    two, _ = fit(2)
    ckpt = tmp_path / "two.ckpt"
    two.save_checkpoint(ckpt)
    _, resumed = fit(4, str(ckpt))
    assert resumed == ["training (resumed at step 2): 1/2 steps", "training (resumed at step 2): 2/2 steps"]
    for name in ("finetune", "extractor", "baseline"):
        node = OmegaConf.load(CONF_DIR / "callbacks" / f"{name}.yaml").step_progress
        assert node._target_ == "eatlab.utils.lightning.StepProgress"
