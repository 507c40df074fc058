"""EACL pairs: loading, the phrase-in-text filters (with a per-language keep report), mixing and the train / dev /
test slices (titles and sentences disjoint across the three).

An EACL file (`corpus_<lang>.json`) is a JSON list of `{"eng_entity", "tgt_entity", "text"}`: an English
mention, the title of the linked target-language Wikipedia article and that article's lead sentence. Both tuning
tasks need the target phrase *inside* the sentence (the backward answer must be copied from it), so a pair is
kept only when its title is found in the text. Titles and texts often differ in form only, so matching is done
on a normalised form: NFKC, Russian stress marks (U+0301) removed, case-folded. Traditional vs simplified
Chinese (the title is often simplified, the text traditional) cannot be bridged offline without a conversion
table, so such pairs are dropped and counted.

The phrase is located in the normalised strings and mapped back to the original text, so the answer of a
backward example is always a verbatim substring of the sentence the model sees.
"""

from __future__ import annotations

import functools
import json
import random
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from eatlab.errors import ConfigError, DataError
from eatlab.paths import RESOURCES_DIR

EACL_SAMPLES_DIR = RESOURCES_DIR / "samples" / "eacl"
FIELDS = ("eng_entity", "tgt_entity", "text")
STRESS_MARKS = {"\u0301"}  # combining acute accent: Russian Wikipedia marks stress with it (Герма́ния)

# Ways of finding the title in the text, tried in this order; each one adds the pairs the earlier ones missed.
MATCH_STEPS = ("verbatim", "normalized", "qualifier", "inverted", "t2s")
# The keep report's columns: pairs left after each step (match steps cumulative).
FILTER_STEPS = ("read", "nonempty", *MATCH_STEPS, "dedup", "train", "dev", "test")
SLICES = ("train", "dev", "test")


@dataclass(frozen=True)
class EaclPair:
    """One record of an EACL file (`index`: 0-based position in the file)."""

    language: str
    index: int
    eng_entity: str
    tgt_entity: str
    text: str


@dataclass(frozen=True)
class AlignedPair:
    """A kept pair: the cleaned (and possibly cropped) sentence and the phrase's span in it."""

    language: str
    index: int
    eng_entity: str
    tgt_entity: str
    text: str  # whitespace-collapsed, cropped to `max_text_chars` around the phrase
    start: int  # -1 when the title was not found (kept only with filters.phrase_in_text=false)
    end: int
    match: str  # the MATCH_STEPS step that found the title ("none" when unlocated)
    lead: str = field(default="", compare=False, repr=False)  # the whole cleaned sentence, before cropping

    @property
    def sentence_key(self) -> str:
        """What "the same sentence" means for the slices: the normalised lead sentence, uncropped (two titles of
        one long sentence are cropped to different windows)."""
        return normalize(self.lead or self.text)

    @property
    def phrase(self) -> str:
        """The target phrase exactly as written in `text` (what a backward answer must be); else the title."""
        return self.text[self.start : self.end] if self.start >= 0 else self.tgt_entity


@dataclass(frozen=True)
class FilterOptions:
    """How pairs are filtered and prepared; mirrors `finetune.filters` in the config."""

    phrase_in_text: bool = True  # drop pairs whose title is not found in the text
    normalize: bool = True  # match after NFKC + stress-mark removal + case-folding (else verbatim only)
    strip_qualifier: bool = True  # also try the title without a trailing '(disambiguation)'
    uninvert_names: bool = True  # also try 'Surname, Given' titles as 'Given Surname'
    chinese_t2s: bool = True  # zh: also match after traditional -> simplified conversion (opencc-purepy)
    dedup: bool = True  # drop repeated (eng_entity, tgt_entity, text) records
    max_text_chars: int = 300  # crop longer sentences to a window around the phrase
    max_pairs_per_language: int | None = None  # cap after filtering (seeded), for quick runs

    @classmethod
    def from_config(cls, cfg) -> FilterOptions:
        known = set(cls.__dataclass_fields__)
        data = dict(cfg or {})
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"finetune.filters: unknown keys {sorted(unknown)} (known: {sorted(known)})")
        return cls(**data)


@dataclass
class LanguageSplit:
    """The prepared pairs of one language and the counts of the keep report."""

    language: str
    path: str
    sha256: str
    train: list[AlignedPair] = field(default_factory=list)
    val: list[AlignedPair] = field(default_factory=list)  # the dev slice: eatlab-finetune validates on it
    test: list[AlignedPair] = field(default_factory=list)  # never trained or validated on
    counts: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)

    def pairs(self, name: str) -> list[AlignedPair]:
        """The slice called `name`: train, dev or test."""
        if name not in SLICES:
            raise ConfigError(f"split={name}: expected one of {', '.join(SLICES)}")
        return {"train": self.train, "dev": self.val, "test": self.test}[name]


# --- files ---------------------------------------------------------------------------------------------------
def eacl_path(root: str | Path | None, language: str) -> Path:
    """`<root>/corpus_<lang>.json`; root None means the in-repo sample (first 200 pairs of zh and ja)."""
    base = Path(root) if root else EACL_SAMPLES_DIR
    path = base / f"corpus_{language}.json"
    if not path.is_file():
        where = "finetune.eacl_root" if root else "the in-repo EACL sample (zh, ja only)"
        raise ConfigError(
            f"finetune.languages: no EACL file for {language!r} at {path} ({where}); set finetune.eacl_root=DIR "
            "or EATLAB_EACL to a folder with corpus_<lang>.json, or build one with eatlab-finetune-build"
        )
    return path


def load_eacl(path: str | Path, language: str) -> list[EaclPair]:
    """Read one EACL file; DataError for anything that is not a list of objects with three string fields."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON: {exc.msg}", line=exc.lineno) from None
    if not isinstance(data, list):
        raise DataError(path, "expected a JSON list of {eng_entity, tgt_entity, text} objects")
    pairs = []
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise DataError(path, f"record {i}: expected an object, got {type(rec).__name__}")
        missing = [k for k in FIELDS if k not in rec]
        if missing:
            raise DataError(path, f"record {i}: missing {', '.join(missing)}")
        bad = [k for k in FIELDS if not isinstance(rec[k], str)]
        if bad:
            raise DataError(path, f"record {i}: {', '.join(bad)} must be strings")
        pairs.append(EaclPair(language, i, rec["eng_entity"], rec["tgt_entity"], rec["text"]))
    return pairs


# --- normalisation and matching --------------------------------------------------------------------------------
Mapped = tuple[str, list[int], list[int]]  # text, and per character the [start, end) of its source characters


def normalize(text: str) -> str:
    """NFKC, stress marks removed, case-folded: the form titles and sentences are compared in."""
    return normalize_with_map(text)[0]


def normalize_with_map(text: str) -> Mapped:
    """The normalised text and, for each of its characters, the [start, end) of the source characters it came from.

    Works per cluster (a base character and the combining marks after it), so NFKC composition and
    case-folding that change lengths (e.g. 'ß' -> 'ss') still map back exactly.
    """
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    i = 0
    n = len(text)
    while i < n:
        j = i + 1
        while j < n and unicodedata.combining(text[j]):
            j += 1
        cluster = unicodedata.normalize("NFKC", text[i:j])
        cluster = "".join(c for c in cluster if c not in STRESS_MARKS).casefold()
        for c in cluster:
            out.append(c)
            starts.append(i)
            ends.append(j)
        i = j
    return "".join(out), starts, ends


@functools.cache
def _t2s_converter():
    try:
        from opencc_purepy import OpenCC
    except ImportError:
        raise ConfigError(
            "finetune.filters.chinese_t2s=true needs the package opencc-purepy (pip install opencc-purepy); "
            "or set finetune.filters.chinese_t2s=false"
        ) from None
    return OpenCC("t2s")


def to_simplified_with_map(text: str) -> Mapped:
    """Traditional -> simplified Chinese (OpenCC tables, offline); character-aligned with the source.

    The whole-string conversion (which uses phrase tables) is used when it keeps the length, which it does for
    almost every string; otherwise each character is converted on its own.
    """
    cc = _t2s_converter()
    out = cc.convert(text)
    if len(out) != len(text):
        out = "".join(c if len(cv := cc.convert(c)) != 1 else cv for c in text)
    idx = list(range(len(text)))
    return out, idx, [i + 1 for i in idx]


def _compose(outer: Mapped, inner: Mapped) -> Mapped:
    """Maps of `outer` (a transform of inner's text) brought back to inner's source."""
    text, o_starts, o_ends = outer
    _, i_starts, i_ends = inner
    return text, [i_starts[s] for s in o_starts], [i_ends[e - 1] for e in o_ends]


def transform_with_map(text: str, normalized: bool = True, t2s: bool = False) -> Mapped:
    """The matching form of `text` (simplified Chinese first if asked, then normalised) with its source map."""
    mapped: Mapped = (text, list(range(len(text))), list(range(1, len(text) + 1)))
    if t2s:
        mapped = _compose(to_simplified_with_map(mapped[0]), mapped)
    if normalized:
        mapped = _compose(normalize_with_map(mapped[0]), mapped)
    return mapped


def find_phrase(text: str, phrase: str, normalized: bool = True, t2s: bool = False) -> tuple[int, int] | None:
    """[start, end) of the first occurrence of `phrase` in `text` (after normalisation when asked), or None."""
    if not phrase:
        return None
    pos = text.find(phrase)
    if pos >= 0:
        return pos, pos + len(phrase)
    if not (normalized or t2s):
        return None
    norm_text, starts, ends = transform_with_map(text, normalized, t2s)
    norm_phrase = transform_with_map(phrase, normalized, t2s)[0].strip()
    if not norm_phrase:
        return None
    pos = norm_text.find(norm_phrase)
    if pos < 0:
        return None
    return starts[pos], ends[pos + len(norm_phrase) - 1]


_QUALIFIER = re.compile(r"\s*[(（][^()（）]*[)）]\s*$")


def strip_qualifier(title: str) -> str:
    """A Wikipedia title without its trailing disambiguation: 'Аякс (футбольный клуб)' -> 'Аякс'."""
    return _QUALIFIER.sub("", title).strip()


def uninvert_name(title: str) -> str | None:
    """'Surname, Given' (Russian Wikipedia's person titles) -> 'Given Surname'; None when not of that form."""
    parts = [p.strip() for p in title.split(",")]
    if len(parts) != 2 or not all(parts):
        return None
    return f"{parts[1]} {parts[0]}"


def locate(text: str, title: str, opts: FilterOptions, language: str) -> tuple[str, tuple[int, int]] | None:
    """The first matching step (in MATCH_STEPS order) that finds the title in the text, and the span found."""
    span = find_phrase(text, title, normalized=False)
    if span:
        return "verbatim", span
    norm = opts.normalize
    if norm and (span := find_phrase(text, title, normalized=True)):
        return "normalized", span
    bare = strip_qualifier(title)
    if opts.strip_qualifier and bare != title and bare and (span := find_phrase(text, bare, normalized=norm)):
        return "qualifier", span
    inverted = uninvert_name(bare)
    if opts.uninvert_names and inverted and (span := find_phrase(text, inverted, normalized=norm)):
        return "inverted", span
    if opts.chinese_t2s and language == "zh":
        for form in dict.fromkeys([title, bare]):
            if form and (span := find_phrase(text, form, normalized=norm, t2s=True)):
                return "t2s", span
    return None


def clean_text(text: str) -> str:
    """The sentence as the model sees it: NFC, stress marks removed (WikiANN's Russian has none), and whitespace
    runs (lead sentences carry newlines and double spaces) collapsed to one space."""
    text = "".join(c for c in unicodedata.normalize("NFC", text) if c not in STRESS_MARKS)
    return " ".join(text.split())


def crop(text: str, start: int, end: int, max_chars: int) -> tuple[str, int, int]:
    """A window of at most `max_chars` around [start, end), cut at spaces where the text has them."""
    if max_chars <= 0 or len(text) <= max_chars or end - start >= max_chars:
        return text, start, end
    room = max_chars - (end - start)
    lo = max(0, start - room // 2)
    hi = min(len(text), lo + max_chars)
    lo = max(0, hi - max_chars)
    if lo > 0 and " " in text[lo:start]:
        lo = text.index(" ", lo) + 1
    if hi < len(text) and " " in text[end:hi]:
        hi = text.rindex(" ", end, hi)
    return text[lo:hi], start - lo, end - lo


# --- filtering, splitting, mixing ------------------------------------------------------------------------------
def align(
    pairs: list[EaclPair], opts: FilterOptions
) -> tuple[list[AlignedPair], dict[str, int], dict[str, int]]:
    """Apply the filters in order; return the kept pairs, the count after each step and the drop reasons."""
    counts = Counter({"read": len(pairs)})
    dropped: Counter = Counter()
    kept: list[AlignedPair] = []
    seen: set[tuple[str, str, str]] = set()
    for p in pairs:
        eng, tgt, text = p.eng_entity.strip(), p.tgt_entity.strip(), clean_text(p.text)
        if not (eng and tgt and text):
            dropped["empty_field"] += 1
            continue
        counts["nonempty"] += 1
        found = locate(text, tgt, opts, p.language)
        if found is not None and found[0] == "verbatim" and tgt not in p.text:
            # found only in the cleaned sentence: the cleaning was a normalisation
            found = ("normalized", found[1])
        if found is None:
            if opts.phrase_in_text:
                dropped["phrase_not_in_text"] += 1
                continue
            span = (-1, -1)  # kept unlocated: the title itself stands for the phrase
        else:
            span = found[1]
            for step in MATCH_STEPS[MATCH_STEPS.index(found[0]) :]:
                counts[step] += 1
        key = (eng, tgt, text)
        if opts.dedup and key in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(key)
        counts["dedup"] += 1
        if span[0] >= 0:
            ctext, s, e = crop(text, span[0], span[1], opts.max_text_chars)
        else:
            ctext, s, e = crop(text, 0, 0, opts.max_text_chars)[0], -1, -1
        match = found[0] if found else "none"
        kept.append(AlignedPair(p.language, p.index, eng, tgt, ctext, s, e, match, lead=text))
    for step in FILTER_STEPS[: FILTER_STEPS.index("dedup") + 1]:
        counts.setdefault(step, 0)
    return kept, dict(counts), dict(dropped)


def _target(n: int, fraction: float, most: int | None, key: str) -> int:
    if not 0 <= fraction < 1:
        raise ConfigError(f"finetune.{key}={fraction}: expected a fraction in [0, 1)")
    if not n or fraction == 0:
        return 0
    target = max(1, round(n * fraction))
    return target if most is None else min(target, int(most))


def split_heldout(
    pairs: list[AlignedPair],
    val_fraction: float,
    val_max: int | None,
    seed: int,
    test_fraction: float = 0.0,
    test_max: int | None = None,
) -> tuple[list[AlignedPair], list[AlignedPair], list[AlignedPair]]:
    """Seeded train / dev / test slices, drawn by target title, with titles and sentences disjoint across them.

    Several English mentions link to one title ("EU", "European Union"), and one sentence can carry several
    titles; a title or a sentence on two sides would put the same answer or the same text in training and
    evaluation. Titles (normalised) are shuffled with `seed`; the first ones fill dev (`val_fraction` of the
    pairs, at most `val_max`), the next ones test. Then a held-out title whose pairs share a sentence with train
    goes to train, and a test title sharing a sentence with dev goes to dev, until no sentence is on two sides.
    """
    n_dev = _target(len(pairs), val_fraction, val_max, "val_fraction")
    n_test = _target(len(pairs), test_fraction, test_max, "test_fraction")
    groups: dict[str, list[AlignedPair]] = {}
    for p in pairs:
        groups.setdefault(normalize(p.tgt_entity), []).append(p)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    side: dict[str, int] = {}  # title -> 0 train, 1 dev, 2 test
    filled = [0, 0, 0]
    for k in keys:
        s = 1 if filled[1] < n_dev else 2 if filled[2] < n_test else 0
        side[k] = s
        filled[s] += len(groups[k])
    # a sentence belongs to the first slice (train, dev, test) that has it: move held-out titles up to a fixpoint
    moved = True
    while moved:
        moved = False
        first: dict[str, int] = {}
        for k, members in groups.items():
            for p in members:
                key = p.sentence_key
                first[key] = min(first.get(key, 2), side[k])
        for k, members in groups.items():
            up = min(first[p.sentence_key] for p in members)
            if up < side[k]:
                side[k], moved = up, True
    slices: tuple[list[AlignedPair], ...] = ([], [], [])
    for p in pairs:
        slices[side[normalize(p.tgt_entity)]].append(p)
    return slices


def prepare_language(
    root: str | Path | None,
    language: str,
    opts: FilterOptions,
    val_fraction: float = 0.05,
    val_max: int | None = 200,
    seed: int = 0,
    test_fraction: float = 0.05,
    test_max: int | None = 200,
) -> LanguageSplit:
    """Load, filter, cap and split one language's EACL file into train, dev (`val_*`) and test (`test_*`)."""
    from eatlab.utils.io import sha256_file

    path = eacl_path(root, language)
    kept, counts, dropped = align(load_eacl(path, language), opts)
    if opts.max_pairs_per_language is not None and len(kept) > opts.max_pairs_per_language:
        rng = random.Random(f"{seed}-{language}-cap")
        keep_idx = sorted(rng.sample(range(len(kept)), int(opts.max_pairs_per_language)))
        dropped["capped"] = len(kept) - len(keep_idx)
        kept = [kept[i] for i in keep_idx]
    train, dev, test = split_heldout(kept, val_fraction, val_max, seed, test_fraction, test_max)
    counts["train"], counts["dev"], counts["test"] = len(train), len(dev), len(test)
    return LanguageSplit(language, str(path), sha256_file(path), train, dev, test, counts, dropped)


def mix(splits: list[LanguageSplit], seed: int) -> tuple[list[AlignedPair], list[AlignedPair]]:
    """All languages' training pairs shuffled together (seeded); dev pairs (validation) kept in language order.
    The test slices stay out: eatlab-finetune never sees them."""
    train = [p for s in splits for p in s.train]
    random.Random(f"{seed}-mix").shuffle(train)
    val = [p for s in splits for p in s.val]
    return train, val


# --- the keep report ---------------------------------------------------------------------------------------------
def filter_report(splits: list[LanguageSplit]) -> dict:
    """How many pairs each filter step keeps, per language: the dict saved as `eacl_filter_report.json`."""
    langs = {}
    for s in splits:
        n = s.counts.get("read", 0) or 1
        langs[s.language] = {
            "file": s.path,
            "sha256": s.sha256,
            "counts": {k: s.counts.get(k, 0) for k in FILTER_STEPS},
            "fractions": {k: round(s.counts.get(k, 0) / n, 4) for k in FILTER_STEPS},
            "dropped": s.dropped,
        }
    return {"steps": list(FILTER_STEPS), "languages": langs}


def format_report(report: dict) -> str:
    """The keep report as a Markdown table (counts, and the share of the file for the filter steps)."""
    head = "| lang | " + " | ".join(report["steps"]) + " |"
    rule = "|---|" + "---:|" * len(report["steps"])
    rows = [head, rule]
    for lang, r in report["languages"].items():
        cells = []
        for step in report["steps"]:
            c = r["counts"][step]
            cells.append(str(c) if step == "read" else f"{c} ({100 * r['fractions'][step]:.1f}%)")
        rows.append(f"| {lang} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
