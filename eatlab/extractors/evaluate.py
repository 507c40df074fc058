"""Score an English extractor on gold English sentences: entity strings placed on the tokens, then the scorer.

Extractors return `(TYPE, entity text)` strings, so they are placed back onto the sentence's tokens before
scoring: each entity takes the first occurrence of its tokens that is still free (in the order the extractor
listed them); a string whose tokens differ from the sentence's (`Sony's` for `Sony 's`) is matched ignoring
whitespace, at token boundaries. Unplaced strings are counted, never guessed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from eatlab.data.bio import Span, spans_to_tags
from eatlab.data.record import Sentence
from eatlab.extractors.base import EntityList, Extractor

log = logging.getLogger(__name__)


def _free(taken: list[bool], start: int, end: int) -> bool:
    return not any(taken[start:end])


def _find_tokens(tokens: Sequence[str], words: list[str], taken: list[bool]) -> tuple[int, int] | None:
    n = len(words)
    for i in range(len(tokens) - n + 1):
        if list(tokens[i : i + n]) == words and _free(taken, i, i + n):
            return i, i + n
    return None


def _find_joined(tokens: Sequence[str], phrase: str, taken: list[bool]) -> tuple[int, int] | None:
    """The phrase without whitespace against the tokens concatenated, starting and ending on token edges."""
    target = "".join(phrase.split())
    if not target:
        return None
    starts, pos = [], 0
    for tok in tokens:
        starts.append(pos)
        pos += len(tok)
    ends = {s + len(t): i for i, (s, t) in enumerate(zip(starts, tokens))}
    joined = "".join(tokens)
    for i, s in enumerate(starts):
        if joined.startswith(target, s):
            j = ends.get(s + len(target))
            if j is not None and _free(taken, i, j + 1):
                return i, j + 1
    return None


def entity_spans(tokens: Sequence[str], entities: EntityList) -> tuple[list[Span], list[tuple[str, str]]]:
    """Token spans of the entities (first free occurrence each) and the entities that could not be placed."""
    taken = [False] * len(tokens)
    spans: list[Span] = []
    unplaced: list[tuple[str, str]] = []
    for typ, phrase in entities:
        words = phrase.split()
        hit = (_find_tokens(tokens, words, taken) if words else None) or _find_joined(tokens, phrase, taken)
        if hit is None:
            unplaced.append((typ, phrase))
            continue
        start, end = hit
        for k in range(start, end):
            taken[k] = True
        spans.append(Span(start, end, typ))
    return sorted(spans), unplaced


def entity_tags(tokens: Sequence[str], entities: EntityList) -> tuple[list[str], list[tuple[str, str]]]:
    """BIO tags over `tokens` for the placed entities, and the unplaced ones."""
    spans, unplaced = entity_spans(tokens, entities)
    return spans_to_tags(spans, len(tokens)), unplaced


def evaluate_extractor(
    extractor: Extractor,
    sentences: list[Sentence],
    *,
    chunk: int = 1000,
    seed: int = 0,
    n_boot: int = 1000,
) -> dict:
    """Run the extractor on the sentences' English text and score it (entity F1 etc., fractions in [0, 1]).

    Returns `{"scores": <eatlab.eval.scores.score dict>, "pred_tags", "entities", "unplaced", "counts",
    "seconds", "extractor"}`.
    """
    from eatlab.eval.scores import score

    t0 = time.perf_counter()
    entities: list[EntityList] = []
    for i in range(0, len(sentences), chunk):
        entities.extend(extractor.extract([s.text for s in sentences[i : i + chunk]]))
        log.info("%s: %d/%d sentences", extractor.name, len(entities), len(sentences))
    seconds = time.perf_counter() - t0
    pred_tags, unplaced = [], []
    for s, ents in zip(sentences, entities):
        tags, missing = entity_tags(s.tokens, ents)
        pred_tags.append(tags)
        unplaced.append(missing)
    scores = score(
        [s.tags for s in sentences],
        pred_tags,
        [s.tokens for s in sentences],
        "en",
        seed=seed,
        n_boot=n_boot,
        char_tokenized=False,
    )
    n_listed = sum(len(e) for e in entities)
    n_unplaced = sum(len(u) for u in unplaced)
    return {
        "scores": scores,
        "pred_tags": pred_tags,
        "entities": entities,
        "unplaced": unplaced,
        "counts": {"n_listed_entities": n_listed, "n_unplaced_entities": n_unplaced},
        "seconds": seconds,
        "extractor": extractor.provenance(),
    }
