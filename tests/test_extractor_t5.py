"""The Flan-T5 extractor's training loop on CPU: a tiny random T5 with a byte tokenizer on real English WikiANN.

One training run (module scope) feeds several tests: the loss falls, dev F1 is computed and logged to CSV, the
best model is a Hugging Face folder that reloads and reproduces its dev outputs, and the pipeline uses it.
"""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import pytest

from eatlab.extractors.train_t5 import (
    CHECKPOINT_INFO,
    DEV_OUTPUTS,
    encode_split,
    read_english_ner,
    source_text,
    target_text,
)

N_TRAIN, N_DEV, MAX_SOURCE, MAX_NEW, EPOCHS = 256, 32, 320, 40, 2
# Training floats are bit-identical run to run here (one torch thread, seeded); across CPUs the float32 kernels
# may reduce in another order, so losses are pinned to 1e-4 relative: far below what any change of data, order,
# schedule or loss masking moves them (more than 1e-2).
TRAIN_REL = 1e-4


def make_tiny_t5(path: Path) -> Path:
    """A random 2-layer T5 with ByT5's byte tokenizer, built locally (no download)."""
    import torch
    from transformers import ByT5Tokenizer, T5Config, T5ForConditionalGeneration

    tok = ByT5Tokenizer()
    config = T5Config(
        vocab_size=len(tok),
        d_model=64,
        d_ff=128,
        d_kv=16,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        decoder_start_token_id=tok.pad_token_id,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def compose_train(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from eatlab.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train_extractor", overrides=overrides)
    OmegaConf.resolve(cfg)
    return cfg


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: on a few shared cores, more threads than cores slow a tiny model down ten times."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, request):
    """Train the tiny T5 once: 256 train sentences, 32 dev sentences, 2 epochs of 16 steps, CPU."""
    wikiann = request.getfixturevalue("wikiann_dir")
    from eatlab.cli.extractor import train_extractor

    tmp = tmp_path_factory.mktemp("t5")
    model_dir = make_tiny_t5(tmp / "tiny-t5")
    cfg = compose_train(
        [
            f"paths.output_dir={tmp / 'outputs'}",
            f"paths.run_dir={tmp / 'run'}",
            "tracking=none",
            "extractor=flan_t5_base",
            f"extractor.train.model={model_dir}",
            f"extractor.train.train_file={wikiann / 'en' / 'train.txt'}",
            f"extractor.train.dev_file={wikiann / 'en' / 'dev.txt'}",
            f"extractor.train.train_limit={N_TRAIN}",
            f"extractor.train.dev_limit={N_DEV}",
            f"extractor.train.max_source_len={MAX_SOURCE}",
            "extractor.train.max_target_len=96",
            "extractor.train.batch_size=16",
            "extractor.train.eval_batch_size=32",
            "extractor.train.lr=3e-3",
            "extractor.train.warmup_steps=4",
            f"trainer.max_epochs={EPOCHS}",
            f"extractor.train.max_new_tokens={MAX_NEW}",
            "trainer.accelerator=cpu",
            "trainer.num_sanity_val_steps=0",
            "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false",
        ]
    )
    summary = train_extractor(cfg, tmp / "run")
    return {"summary": summary, "run_dir": tmp / "run", "cfg": cfg, "wikiann": wikiann}


def _csv_rows(run_dir: Path) -> list[dict]:
    with (run_dir / "csv" / "metrics.csv").open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_targets_are_entity_lists_in_sentence_order(wikiann_dir):
    sents = read_english_ner(wikiann_dir / "en" / "train.txt")[:3]
    # R.H. Saunders ( St. Lawrence River ) ( 968 MW ): two ORG entities in order
    assert target_text(sents[0]) == "(ORG, R.H. Saunders) (ORG, St. Lawrence River)"
    assert target_text(sents[1]) == "(PER, Anders Lindström)"
    assert source_text(sents[0]).endswith(
        "Here is the sentence:\nR.H. Saunders ( St. Lawrence River ) ( 968 MW )"
    )


def test_conll2003_iob1_and_misc(tmp_path):
    path = tmp_path / "eng.train"
    path.write_text(
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP I-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP I-MISC\n"
        "Peter NNP B-NP I-PER\nBlackburn NNP I-NP I-PER\nMary NNP I-NP B-PER\n\n",
        encoding="utf-8",
    )
    (s,) = read_english_ner(path)
    assert s.tags == ["B-ORG", "O", "O", "B-PER", "I-PER", "B-PER"]
    assert target_text(s) == "(ORG, EU) (PER, Peter Blackburn) (PER, Mary)"


def test_truncation_is_counted(wikiann_dir):
    from transformers import ByT5Tokenizer

    sents = read_english_ner(wikiann_dir / "en" / "dev.txt")[:50]
    enc = encode_split(ByT5Tokenizer(), sents, max_source_len=200, max_target_len=20, name="dev")
    longest = max(len(source_text(s).encode()) + 1 for s in sents)
    assert enc.stats["max_source_tokens"] == longest
    assert enc.stats["n_source_truncated"] == sum(len(source_text(s).encode()) + 1 > 200 for s in sents) > 0
    assert enc.stats["n_target_truncated"] == sum(len(target_text(s).encode()) + 1 > 20 for s in sents) > 0
    assert max(map(len, enc.input_ids)) == 200 and all(x[-1] == 1 for x in enc.input_ids)


@pytest.mark.slow
def test_training_loss_falls_and_dev_f1_is_logged(trained):
    rows = _csv_rows(trained["run_dir"])
    losses = [float(r["train_loss_step"]) for r in rows if r.get("train_loss_step")]
    assert len(losses) == EPOCHS * N_TRAIN // 16
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert (first, last) == (
        pytest.approx(6.146430778503418, rel=TRAIN_REL),
        pytest.approx(3.9501872062683105, rel=TRAIN_REL),
    )
    val = [r for r in rows if r.get("val_f1")]
    assert len(val) == EPOCHS  # one validation per epoch
    for r in val:
        assert float(r["val_n_sentences"]) == N_DEV
    # 32 steps teach the random tiny T5 the loss, not yet one correct entity
    assert [float(r["val_f1"]) for r in val] == [0.0, 0.0]
    assert [float(r["val_loss"]) for r in val] == pytest.approx(
        [4.142544269561768, 3.6639938354492188], rel=TRAIN_REL
    )
    assert trained["summary"]["best_val_f1"] == 0.0
    stats = trained["summary"]["data"]
    assert stats["train"]["n_examples"] == N_TRAIN and stats["dev"]["n_examples"] == N_DEV
    assert (stats["train"]["n_source_truncated"], stats["train"]["n_target_truncated"]) == (6, 5)
    assert stats["train"]["max_source_len"] == MAX_SOURCE


@pytest.mark.slow
def test_best_checkpoint_reloads_and_reproduces_its_dev_outputs(trained):
    from eatlab.extractors.flan_t5 import FlanT5Extractor
    from eatlab.llm.parse import parse_entity_list

    best = Path(trained["summary"]["checkpoint"])
    assert (best / "config.json").is_file() and (best / CHECKPOINT_INFO).is_file()
    info = json.loads((best / CHECKPOINT_INFO).read_text())
    assert info["metrics"]["val_f1"] == pytest.approx(trained["summary"]["best_val_f1"])
    saved = [json.loads(line) for line in (best / DEV_OUTPUTS).read_text().splitlines()]
    assert len(saved) == N_DEV
    dev = read_english_ner(trained["wikiann"] / "en" / "dev.txt", "dev")[:N_DEV]
    ext = FlanT5Extractor(str(best), batch_size=32, max_new_tokens=MAX_NEW, max_source_len=MAX_SOURCE)
    got = ext.extract([s.text for s in dev])
    by_id = {r["sentence_id"]: r["output"] for r in saved}
    assert got == [parse_entity_list(by_id[s.id]) for s in dev]
    # the raw generations match too (the same greedy decoding as at validation)
    import torch

    enc = ext._tok(
        [source_text(s) for s in dev],
        return_tensors="pt",
        padding=True,
        truncation=True,
        max_length=MAX_SOURCE,
    )
    with torch.no_grad():
        ids = ext._model.generate(**enc, max_new_tokens=MAX_NEW, do_sample=False, num_beams=1)
    assert ext._tok.batch_decode(ids, skip_special_tokens=True) == [by_id[s.id] for s in dev]


@pytest.mark.slow
def test_eval_extractor_scores_the_checkpoint(trained, tmp_path, compose):
    from eatlab.cli.extractor import evaluate_from_config

    pytest.importorskip("eatlab.llm.factory", reason="the main config composes once the LLM layer has landed")
    best = trained["summary"]["checkpoint"]
    cfg = compose(["language=en", "extractor=flan_t5", f"extractor.checkpoint={best}", "data.limit=8"])
    metrics = evaluate_from_config(cfg, tmp_path / "eval")
    assert metrics["n_sentences"] == 8 and metrics["entity_f1"] == 0.0  # the tiny checkpoint finds no entity
    assert metrics["extractor"] == {"name": "flan_t5", "checkpoint": best}
    assert (tmp_path / "eval" / "extractor_metrics.json").is_file()


@pytest.mark.slow
def test_pipeline_runs_with_the_trained_checkpoint(trained, tmp_path, compose):
    pytest.importorskip("eatlab.llm.factory", reason="the pipeline needs the LLM layer")
    from eatlab.cli.run import run_eat

    best = trained["summary"]["checkpoint"]
    cfg = compose(
        [
            "extractor=flan_t5",
            f"extractor.checkpoint={best}",
            "data.limit=2",
            "model=tiny",
            "prompts.max_new_tokens=[8,8,8]",
        ],
        run_dir=tmp_path / "run",
    )
    metrics = run_eat(cfg, tmp_path / "run")
    assert metrics["run"]["extractor"] == "flan_t5" and metrics["n_sentences"] == 2
    ner = [json.loads(x) for x in (tmp_path / "run" / "artifacts" / "ner.jsonl").read_text().splitlines()]
    assert len(ner) == 2 and all(r["extractor"] == "flan_t5" for r in ner)


@pytest.mark.slow
def test_lora_checkpoint_is_a_plain_merged_folder(tmp_path):
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from eatlab.extractors.train_t5 import Seq2SeqNERModule

    tiny = make_tiny_t5(tmp_path / "tiny")
    module = Seq2SeqNERModule(
        str(tiny),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
        lora={"enabled": True, "r": 4, "alpha": 8, "target_modules": ["q", "v"]},
    )
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    assert module.is_lora and (trainable, total) == (6144, 195584)  # r=4 on q and v of 6 attention blocks
    with torch.no_grad():  # move the adapters off zero so that merging changes the weights
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.05)
    module.save_pretrained(tmp_path / "merged")
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    merged = AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path / "merged")).eval()
    module.model.eval()
    ids = module.tokenizer(["John lives in London ."], return_tensors="pt")
    labels = module.tokenizer(text_target=["(PER, John)"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a = module.model(**ids, labels=labels).logits
        b = merged(**ids, labels=labels).logits
        base = AutoModelForSeq2SeqLM.from_pretrained(str(tiny))(**ids, labels=labels).logits
    assert torch.allclose(a, b, atol=1e-4) and not torch.allclose(a, base, atol=1e-3)


def _scripted_fit(tmp_path, scores, mode, with_lightning_checkpoint, val_check_interval=1.0):
    """Fit a 2-step-per-epoch toy module whose validation `k` logs `val_f1 = scores[k]`; PretrainedCheckpoint
    (optionally beside Lightning's own ModelCheckpoint with the same rules) watches it."""
    import math

    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader, TensorDataset

    from eatlab.utils.lightning import PretrainedCheckpoint

    class Scripted(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)
            self.validations = 0

        def train_dataloader(self):
            return DataLoader(TensorDataset(torch.ones(4, 2)), batch_size=2)

        val_dataloader = train_dataloader

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def validation_step(self, batch, batch_idx):
            pass

        def on_validation_epoch_end(self):
            self.log("val_f1", scores[min(self.validations, len(scores) - 1)])
            self.validations += not self.trainer.sanity_checking

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def save_pretrained(self, directory, info):
            directory.mkdir(parents=True)
            (directory / "info.json").write_text(json.dumps({"global_step": self.global_step, **info}))

    ours = PretrainedCheckpoint(dirpath=tmp_path / "hf", filename="best", monitor="val_f1", mode=mode)
    callbacks = [ours]
    if with_lightning_checkpoint:  # plain Lightning, the same rules, writing .ckpt files
        callbacks.append(
            ModelCheckpoint(
                dirpath=str(tmp_path / "lightning"),
                filename="best",
                monitor="val_f1",
                mode=mode,
                save_top_k=1,
                save_weights_only=True,
                auto_insert_metric_name=False,
                enable_version_counter=False,
            )
        )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=math.ceil(len(scores) * val_check_interval),
        val_check_interval=val_check_interval,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path / "root"),
        callbacks=callbacks,
    )
    trainer.fit(Scripted())
    return trainer, ours, callbacks[1:]


@pytest.mark.parametrize(
    ("scores", "mode", "interval", "best_step", "best_score"),
    [
        ([0.2, 0.1, 0.5, float("nan"), 0.5], "max", 1.0, 6, 0.5),  # a tie or a NaN never replaces the best
        (
            [float("nan"), 0.0, float("nan")],
            "max",
            1.0,
            4,
            0.0,
        ),  # a first NaN is kept, as -inf, until a number
        ([0.3, 0.3, 0.1, 0.2], "min", 1.0, 6, 0.1),
        ([0.1, 0.4, 0.4, 0.2], "max", 0.5, 2, 0.4),  # two validations per epoch: ModelCheckpoint's other path
    ],
)
def test_hf_checkpoint_keeps_what_lightning_model_checkpoint_keeps(
    tmp_path, scores, mode, interval, best_step, best_score
):
    import torch

    trainer, ours, (lightning,) = _scripted_fit(tmp_path, scores, mode, True, val_check_interval=interval)
    best = Path(ours.best_model_path)
    assert best == (tmp_path / "hf" / "best").resolve() and sorted(p.name for p in best.parent.iterdir()) == [
        "best"
    ]
    info = json.loads((best / "info.json").read_text())
    assert info["global_step"] == best_step and info["monitor"] == "val_f1"
    assert info["metrics"]["val_f1"] == pytest.approx(best_score)
    assert float(ours.best_model_score) == pytest.approx(best_score)
    # the same decision as Lightning's ModelCheckpoint(save_top_k=1) on the same validations
    assert float(ours.best_model_score) == float(lightning.best_model_score)
    saved = torch.load(lightning.best_model_path, map_location="cpu", weights_only=False)
    assert saved["global_step"] == info["global_step"]


def test_hf_checkpoint_is_the_only_checkpoint_callback(tmp_path):
    """A ModelCheckpoint subclass, so Lightning adds no default ModelCheckpoint and writes no .ckpt file; a
    `validate` outside `fit` saves nothing."""
    trainer, ours, _ = _scripted_fit(tmp_path, [0.1, 0.2], "max", with_lightning_checkpoint=False)
    assert trainer.checkpoint_callbacks == [ours]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "hf/best/info.json"
    ]
    before = (Path(ours.best_model_path) / "info.json").read_text()
    trainer.validate(trainer.lightning_module, verbose=False)
    assert (Path(ours.best_model_path) / "info.json").read_text() == before
