"""Select the sentences of a run: local files (in-repo samples or a full copy) or the hub dataset.

Applies `limit`, seeded `sample` and `drop_redirects`, and records what was read (sha256 of each file, how many
redirect sentences were removed) for provenance.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from eatlab.data.conll import read_conll
from eatlab.data.languages import Language, get_language
from eatlab.data.record import Sentence
from eatlab.errors import ConfigError, DataError
from eatlab.paths import SAMPLES_DIR
from eatlab.utils.io import sha256_file

HUB_DATASET = "unimelb-nlp/wikiann"
HUB_TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]  # ClassLabel order of the hub dataset


@dataclass
class DataSelection:
    sentences: list[Sentence]
    files: dict[str, str] = field(default_factory=dict)  # path -> sha256
    n_read: int = 0
    n_redirects_removed: int = 0
    source: str = "local"

    def provenance(self) -> dict:
        return {
            "source": self.source,
            "files_sha256": self.files,
            "n_read": self.n_read,
            "n_selected": len(self.sentences),
            "n_redirects_removed": self.n_redirects_removed,
        }


def split_path(root: str | Path | None, language: str, split: str) -> Path:
    """`<root>/<lang>/<split>.txt`; root None means the in-repo samples (first 100 sentences)."""
    base = Path(root) if root else SAMPLES_DIR
    return base / language / f"{split}.txt"


def is_redirect(sentence: Sentence, lang: Language) -> bool:
    """A Wikipedia redirect artefact: the text starts with the language's redirect word (case-insensitive)."""
    return starts_with_redirect(sentence.text, lang.redirect_words)


def starts_with_redirect(text: str, redirect_words) -> bool:
    """`is_redirect` on a plain text and word list (evidence records keep the text, not the Sentence)."""
    head = text.lstrip(" #*'").casefold()
    return any(head.startswith(w.casefold()) for w in redirect_words)


def load_hub(language: str, split: str, char_tokenized: bool | None = None) -> list[Sentence]:
    """WikiANN from the hub through `datasets`; offline it fails with one line saying how to use local files."""
    try:
        import datasets

        hub_split = {"dev": "validation"}.get(split, split)
        ds = datasets.load_dataset(HUB_DATASET, language, split=hub_split)
    except Exception as exc:  # noqa: BLE001 - any hub failure gets the same advice
        raise DataError(
            f"{HUB_DATASET}/{language}",
            f"cannot load from the hub ({type(exc).__name__}); use local files instead: "
            "data.source=local data.root=DIR (a copy laid out as DIR/<lang>/<split>.txt)",
        ) from None
    char_tok = get_language(language).char_tokenized if char_tokenized is None else char_tokenized
    out = []
    for i, row in enumerate(ds):
        tokens = [t.split(":", 1)[1] if t[:3] == f"{language}:" else t for t in row["tokens"]]
        tags = [HUB_TAGS[t] for t in row["ner_tags"]]
        out.append(Sentence(f"{language}-{split}-{i}", language, tokens, tags, char_tok))
    return out


def select_sentences(
    language: Language | str,
    split: str = "test",
    root: str | Path | None = None,
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    drop_redirects: bool = False,
    source: str = "local",
) -> DataSelection:
    """Read one split of one language and apply the selection options (ids keep their file index).

    `language`: the run's `Language` (its composed config node); a bare code is looked up in the shipped table."""
    lang = language if isinstance(language, Language) else get_language(language)
    language = lang.code
    files: dict[str, str] = {}
    if source == "hub":
        sentences = load_hub(language, split, lang.char_tokenized)
    elif source == "local":
        path = split_path(root, language, split)
        if not path.is_file() and root is None:
            raise DataError(
                path, f"no in-repo sample for {language}/{split}; set data.root=DIR to a full WikiANN copy"
            )
        sentences = read_conll(path, language, split, lang.char_tokenized)
        files[str(path)] = sha256_file(path)
    else:
        raise ConfigError(f"data.source={source}: expected local or hub")
    n_read = len(sentences)
    removed = 0
    if drop_redirects:
        kept = [s for s in sentences if not is_redirect(s, lang)]
        removed = len(sentences) - len(kept)
        sentences = kept
    if sample is not None:
        rng = random.Random(seed)
        idx = sorted(rng.sample(range(len(sentences)), min(int(sample), len(sentences))))
        sentences = [sentences[i] for i in idx]
    if limit is not None:
        sentences = sentences[: int(limit)]
    return DataSelection(sentences, files, n_read, removed, source)


def select_from_config(cfg, language: Language | str | None = None) -> DataSelection:
    """`select_sentences` driven by the composed Hydra config (`data.*`, and the `language` node unless given)."""
    d = cfg.data
    return select_sentences(
        language or Language.from_config(cfg),
        split=d.split,
        root=d.root,
        limit=d.limit,
        sample=d.sample,
        seed=d.seed,
        drop_redirects=d.drop_redirects,
        source=d.source,
    )
