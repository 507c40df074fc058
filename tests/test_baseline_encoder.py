"""The zero-shot encoder baseline: label alignment, truncation accounting, and a real tiny run on CPU.

The encoder is a random 2-layer BERT with a WordPiece vocabulary trained locally on the in-repo samples
(`ensure_tiny_encoder`), so nothing is downloaded. The end-to-end test fine-tunes it on English samples with a
real Lightning Trainer and tests it on zh and ar samples.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from eatlab.baselines.encoder import (
    IGNORE_INDEX,
    LABEL2ID,
    EncoderTagger,
    collate,
    encode_sentences,
    ensure_tiny_encoder,
    load_tokenizer,
)
from eatlab.data.loader import select_sentences
from eatlab.data.record import Sentence

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = Path(os.environ.get("EATLAB_TEST_MODELS", str(REPO / "outputs" / "test-models")))


@pytest.fixture(scope="module")
def tiny_encoder() -> Path:
    return ensure_tiny_encoder(MODELS_DIR / "tiny-bert-encoder")


@pytest.fixture(scope="module")
def tokenizer(tiny_encoder):
    return load_tokenizer(tiny_encoder)


def compose_baseline(tmp_path: Path, overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from eatlab.paths import CONF_DIR

    base = [
        f"paths.output_dir={tmp_path / 'outputs'}",
        f"paths.run_dir={tmp_path / 'run'}",
        f"paths.models_dir={MODELS_DIR}",
        "tracking=none",
        "encoder=tiny",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train_baseline", overrides=base + overrides)
    OmegaConf.resolve(cfg)
    return cfg


def test_labels_go_on_the_first_subtoken_only(tokenizer):
    ar = select_sentences("ar", "test", limit=20).sentences
    sent = next(s for s in ar if any(t != "O" for t in s.tags))
    (enc,) = encode_sentences(tokenizer, [sent], max_length=256)
    word_ids = tokenizer([sent.tokens], is_split_into_words=True, truncation=True, max_length=256).word_ids(0)
    assert len(enc.first_positions) == len(sent.tokens) and enc.n_truncated == enc.n_empty == 0
    for w, pos in enumerate(enc.first_positions):
        assert word_ids[pos] == w and (pos == 0 or word_ids[pos - 1] != w)
        assert enc.labels[pos] == LABEL2ID[sent.tags[w]]
    labelled = set(enc.first_positions)
    assert all(lab == IGNORE_INDEX for i, lab in enumerate(enc.labels) if i not in labelled)
    assert enc.labels[0] == IGNORE_INDEX and enc.labels[-1] == IGNORE_INDEX  # [CLS] and [SEP]
    assert len(enc.input_ids) > len(sent.tokens)  # Arabic words do split into several sub-tokens here


def test_chinese_characters_stay_one_word_each(tokenizer):
    zh = select_sentences("zh", "test", limit=5).sentences
    for enc, s in zip(encode_sentences(tokenizer, zh, max_length=512), zh):
        assert len(enc.first_positions) == len(s.tokens)
        assert enc.first_positions == sorted(enc.first_positions) and min(enc.first_positions) > 0
        assert [LABEL2ID[t] for t in s.tags] == [enc.labels[p] for p in enc.first_positions]


def test_truncated_words_are_counted_and_predicted_o(tiny_encoder, tokenizer):
    words = ["Paris", "is", "the", "capital", "of", "France", "and", "Berlin", "of", "Germany"]
    tags = ["B-LOC", "O", "O", "O", "O", "B-LOC", "O", "B-LOC", "O", "B-LOC"]
    sent = Sentence("en-test-0", "en", words, tags)
    (enc,) = encode_sentences(tokenizer, [sent], max_length=6)
    n_seen = sum(p >= 0 for p in enc.first_positions)
    assert len(enc.input_ids) == 6 and 1 <= n_seen < len(words)
    assert enc.n_truncated == len(words) - n_seen and enc.n_empty == 0
    assert all(p < 0 for p in enc.first_positions[n_seen:])  # truncation cuts a suffix
    module = EncoderTagger(str(tiny_encoder))
    module.eval()
    with torch.no_grad():  # a large B-PER bias: every word the model sees is tagged B-PER
        module.model.classifier.bias.copy_(torch.tensor([0.0, 9.0, 0, 0, 0, 0, 0]))
        (pred,) = module.word_predictions(collate([enc], tokenizer.pad_token_id))
    assert len(pred) == len(words)
    assert pred[:n_seen] == [LABEL2ID["B-PER"]] * n_seen
    assert pred[n_seen:] == [LABEL2ID["O"]] * (len(words) - n_seen)


@pytest.mark.slow
def test_tiny_encoder_trains_on_english_and_tests_zh_and_ar(tmp_path):
    from eatlab.cli.baseline import run_baseline

    cfg = compose_baseline(
        tmp_path,
        ["languages=[zh,ar]", "data.limit=16", "trainer.log_every_n_steps=1", "trainer.max_epochs=3"],
    )
    run_dir = tmp_path / "run"
    summary = run_baseline(cfg, run_dir)

    for lang in ("zh", "ar"):
        m = json.loads((run_dir / lang / "metrics.json").read_text(encoding="utf-8"))
        assert m["schema_version"] == 1 and m["language"] == lang and m["n_sentences"] == 16
        assert m["run"]["method"] == "encoder_zero_shot" and m["run"]["language"] == lang
        assert m["run"]["smoke_model"] is True and m["run"]["source_language"] == "en"
        assert m["run"]["n_train_sentences"] == 100 and m["run"]["optimizer_steps"] == 3 * 7
        for key in ("entity_precision", "entity_recall", "entity_f1", "reference_token_micro_f1"):
            assert 0.0 <= m[key] <= 1.0
        assert 0.0 <= m["run"]["best_dev_entity_f1"] <= 1.0
        assert all(0.0 <= v["f1"] <= 1.0 for v in m["per_type"].values())
        assert m["counts"]["n_words"] == sum(
            len(s.tokens) for s in select_sentences(lang, "test", limit=16).sentences
        )
        rows = [
            ln.split("\t")
            for ln in (run_dir / lang / "predictions.conll").read_text("utf-8").splitlines()
            if ln
        ]
        assert len(rows) == m["counts"]["n_words"] and all(len(r) == 3 for r in rows)
    # zh sentences are long in characters: max_length=64 cuts some, and every cut word is predicted O
    zh = json.loads((run_dir / "zh" / "metrics.json").read_text(encoding="utf-8"))
    assert zh["counts"]["n_words_truncated"] > 0

    by_lang = {r["language"]: r for r in summary["rows"]}
    assert set(by_lang) == {"zh", "ar", "mean_nsl", "mean_all"}
    assert by_lang["mean_nsl"]["entity_f1"] == pytest.approx(
        (by_lang["zh"]["entity_f1"] + by_lang["ar"]["entity_f1"]) / 2
    )
    with (run_dir / "summary.csv").open(encoding="utf-8") as fh:
        assert [r["language"] for r in csv.DictReader(fh)] == ["zh", "ar", "mean_nsl", "mean_all"]
    assert not (run_dir / "checkpoints").exists()  # keep_checkpoint=false

    with (run_dir / "csv" / "metrics.csv").open(encoding="utf-8") as fh:
        records = list(csv.DictReader(fh))
    losses = [float(r["train/loss_step"]) for r in records if r.get("train/loss_step")]
    assert len(losses) == 21
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1  # the loss falls
    assert any(r.get("dev/entity_f1") for r in records) and any(r.get("test/zh/entity_f1") for r in records)


def test_cli_rejects_an_unknown_language_in_one_line(tmp_path, monkeypatch, capsys):
    from hydra.core.global_hydra import GlobalHydra

    from eatlab.cli.baseline import main

    monkeypatch.setattr(
        sys,
        "argv",
        [
            "eatlab-train-baseline",
            "languages=[zh,xx]",
            f"paths.output_dir={tmp_path}",
            "tracking=none",
            "encoder=tiny",
        ],
    )
    try:
        with pytest.raises(SystemExit) as exc:
            main()
    finally:
        GlobalHydra.instance().clear()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: language=xx: unknown language") and "Traceback" not in "\n".join(err)
    (error_json,) = list(tmp_path.rglob("error.json"))
    assert json.loads(error_json.read_text(encoding="utf-8"))["error_type"] == "ConfigError"
