"""The Flan-T5 extractor's training loop on CPU: a tiny random T5 with a byte tokenizer on real English WikiANN.

One training run (module scope) feeds several tests: the loss falls, dev F1 is computed and logged to CSV, the
best model is a Hugging Face folder that reloads and reproduces its dev outputs, and the pipeline uses it.
"""

from __future__ import annotations

import csv
import json
import math
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
            f"extractor.train.max_epochs={EPOCHS}",
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


def test_training_loss_falls_and_dev_f1_is_logged(trained):
    rows = _csv_rows(trained["run_dir"])
    losses = [float(r["train_loss_step"]) for r in rows if r.get("train_loss_step")]
    assert len(losses) == EPOCHS * N_TRAIN // 16
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    val = [r for r in rows if r.get("val_f1")]
    assert len(val) == EPOCHS  # one validation per epoch
    for r in val:
        assert 0.0 <= float(r["val_f1"]) <= 1.0
        assert float(r["val_n_sentences"]) == N_DEV
        assert math.isfinite(float(r["val_loss"]))
    best = max(float(r["val_f1"]) for r in val)
    assert trained["summary"]["best_val_f1"] == pytest.approx(best)
    stats = trained["summary"]["data"]
    assert stats["train"]["n_examples"] == N_TRAIN and stats["dev"]["n_examples"] == N_DEV
    assert stats["train"]["n_source_truncated"] >= 0 and stats["train"]["max_source_len"] == MAX_SOURCE


def test_best_checkpoint_reloads_and_reproduces_its_dev_outputs(trained):
    from eatlab.llm.parse import parse_entity_list
    from eatlab.extractors.flan_t5 import FlanT5Extractor

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


def test_eval_extractor_scores_the_checkpoint(trained, tmp_path, compose):
    from eatlab.cli.extractor import evaluate_from_config

    pytest.importorskip("eatlab.llm.factory", reason="the main config composes once the LLM layer has landed")
    best = trained["summary"]["checkpoint"]
    cfg = compose(["language=en", "extractor=flan_t5", f"extractor.checkpoint={best}", "data.limit=8"])
    metrics = evaluate_from_config(cfg, tmp_path / "eval")
    assert metrics["n_sentences"] == 8 and 0.0 <= metrics["entity_f1"] <= 1.0
    assert metrics["extractor"] == {"name": "flan_t5", "checkpoint": best}
    assert (tmp_path / "eval" / "extractor_metrics.json").is_file()


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


def test_lora_checkpoint_is_a_plain_merged_folder(tmp_path):
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from eatlab.extractors.train_t5 import Seq2SeqNERModule

    tiny = make_tiny_t5(tmp_path / "tiny")
    module = Seq2SeqNERModule(
        str(tiny), lora={"enabled": True, "r": 4, "alpha": 8, "target_modules": ["q", "v"]}
    )
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    assert module.is_lora and 0 < trainable < 0.2 * total
    with torch.no_grad():  # move the adapters off zero so that merging changes the weights
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.05)
    module.save_hf(tmp_path / "merged")
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
