"""Parse English NER output (`(TYPE, entity)` lists and their chatty variants) and clean chatty translations.

English NER output comes from a fine-tuned Flan-T5 (`(PER, John Smith) (LOC, London)`) or from a chat LLM,
which wraps the same content in numbering, bullets, markdown and many label styles. `parse_entity_list` accepts
all of them and maps the label vocabulary onto PER/ORG/LOC; anything it cannot read is skipped, never raised.
`clean_translation` pulls the English sentence out of a chatty forward reply; it is deliberately conservative.
"""

from __future__ import annotations

import re
import unicodedata

# Label vocabulary -> eatlab type. None = a known label that is not one of our types (dropped on purpose).
_TYPE_WORDS: dict[str, str | None] = {
    "per": "PER",
    "pers": "PER",
    "person": "PER",
    "persons": "PER",
    "people": "PER",
    "personname": "PER",
    "name": "PER",
    "names": "PER",
    "human": "PER",
    "loc": "LOC",
    "location": "LOC",
    "locations": "LOC",
    "gpe": "LOC",
    "fac": "LOC",
    "facility": "LOC",
    "facilities": "LOC",
    "place": "LOC",
    "places": "LOC",
    "geo": "LOC",
    "country": "LOC",
    "countries": "LOC",
    "city": "LOC",
    "cities": "LOC",
    "org": "ORG",
    "orgs": "ORG",
    "organization": "ORG",
    "organizations": "ORG",
    "organisation": "ORG",
    "organisations": "ORG",
    "company": "ORG",
    "companies": "ORG",
    "misc": None,
    "miscellaneous": None,
    "norp": None,
    "event": None,
    "date": None,
    "time": None,
    "product": None,
    "work_of_art": None,
    "language": None,
    "o": None,
}
_PLURAL_LABELS = {
    "persons",
    "people",
    "names",
    "locations",
    "places",
    "countries",
    "cities",
    "facilities",
    "organizations",
    "organisations",
    "companies",
    "orgs",
}
_LABEL = r"(?:B-|I-)?[A-Za-z][A-Za-z_]{0,14}"
_QUOTES = "\"'`“”„‟‘’‚‛«»‹›「」『』《》〈〉"
_PLACEHOLDERS = {"", "none", "n/a", "na", "null", "nil", "entity", "entities", "-", "no entities", "..."}

_CODE_FENCE = re.compile(r"```[A-Za-z0-9_-]*")
_EMPHASIS = re.compile(r"(\*\*|__|\*|~~)")
_LIST_MARK = re.compile(r"^\s*(?:[-*+•·–]\s+|\(?\d{1,3}[.)]\s+|#{1,6}\s+|>\s*)+")
_PAREN_ENTRY = re.compile(rf"\(\s*({_LABEL})\s*[,:;|]\s*")
_PAREN_REVERSED = re.compile(rf"\(\s*([^(),]+?)\s*,\s*({_LABEL})\s*\)")
_BRACKET_TYPE_FIRST = re.compile(rf"^\[\s*({_LABEL})\s*\]\s*[:\-–—]?\s*(.+)$")
_BRACKET_TYPE_LAST = re.compile(rf"^(.+?)\s*[\[(]\s*({_LABEL})\s*[\])]\s*[.,;]?$")
_SEP = r"(?::|：|\s-\s|\s–\s|\s—\s|=>|->|=)"
_LABEL_HEAD = re.compile(
    rf"(?:^|(?<=[\s,;]))[\"'`]?({_LABEL}(?:\s+(?:entity|entities|name|names))?)[\"'`]?\s*{_SEP}\s*", re.I
)
_VALUE_LABEL = re.compile(rf"^(.+?)\s*{_SEP}\s*(\S+)\s*$")
_TRAIL_PUNCT = ",;:，；：、"


def _norm_type(label: str) -> str | None:
    """PER/ORG/LOC for a label word (any case, plural, B-/I- prefix); None for other or unknown labels."""
    key = label.strip().lower()
    key = re.sub(r"^[bi]-", "", key)
    key = re.sub(r"\s+(?:entity|entities|name|names)$", "", key)
    key = re.sub(r"[\s-]+", "_", key)
    return _TYPE_WORDS.get(key)


def _is_label(label: str) -> bool:
    key = re.sub(r"^[bi]-", "", label.strip().lower())
    key = re.sub(r"\s+(?:entity|entities|name|names)$", "", key)
    return re.sub(r"[\s-]+", "_", key) in _TYPE_WORDS


def _clean_entity(text: str) -> str:
    """Entity text without markdown, surrounding quotes, list debris and sentence punctuation."""
    text = _EMPHASIS.sub("", text).replace("`", "")
    text = " ".join(text.split())
    prev = None
    while prev != text:
        prev = text
        text = text.strip().strip(_TRAIL_PUNCT).strip()
        if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
            text = text[1:-1]
        text = text.strip(_QUOTES + " ")
        # a final full stop is sentence punctuation unless it ends an abbreviation (Inc., D.C., Jr.)
        if text.endswith(".") and not re.search(r"(?:\b\w{1,3}|\.\w)\.$", text):
            text = text[:-1]
    return text


def _scan_paren_entries(line: str) -> list[tuple[str, str]]:
    """`(TYPE, entity)` entries in a line; the entity runs to the matching `)` (nested brackets allowed)."""
    found: list[tuple[str, str]] = []
    pos = 0
    while True:
        m = _PAREN_ENTRY.search(line, pos)
        if not m:
            break
        if not _is_label(m.group(1)):
            pos = m.start() + 1
            continue
        depth, i = 1, m.end()
        while i < len(line) and depth:
            if line[i] == "(":
                depth += 1
            elif line[i] == ")":
                depth -= 1
            i += 1
        body = line[m.end() : i - 1] if depth == 0 else line[m.end() :]
        if depth and ") (" in body:  # an unclosed entry followed by more entries: stop at the next one
            body = body.split(") (", 1)[0]
        found.append((m.group(1), body))
        pos = i if depth == 0 else len(line)
    return found


def _split_label_value(body: str) -> list[tuple[str, str]]:
    """`LABEL: value` (also `LABEL - value`, `value: LABEL`), several per line allowed (`PER: A, LOC: B`)."""
    heads = [m for m in _LABEL_HEAD.finditer(body) if _is_label(m.group(1))]
    if heads and heads[0].start() == 0:
        out = []
        for k, m in enumerate(heads):
            end = heads[k + 1].start() if k + 1 < len(heads) else len(body)
            value = body[m.end() : end].strip().rstrip(",;")
            label = m.group(1)
            plural = (
                re.sub(r"\s+(?:entity|entities|name|names)$", "", label.strip().lower()) in _PLURAL_LABELS
            )
            parts = re.split(r"\s*;\s*|\s*,\s+(?=\S)" if plural else r"\s*;\s*", value)
            out.extend((label, p) for p in parts)
        return out
    m = _VALUE_LABEL.match(body)
    if m and _is_label(_clean_entity(m.group(2))) and not _is_label(m.group(1)):
        return [(_clean_entity(m.group(2)), m.group(1))]
    return []


def _parse_line(line: str) -> list[tuple[str, str]]:
    """Raw (label, entity) pairs found in one line of NER output."""
    entries = _scan_paren_entries(line)
    if entries:
        return entries
    reversed_entries = [(t, e) for e, t in _PAREN_REVERSED.findall(line) if _is_label(t) and not _is_label(e)]
    if reversed_entries:
        return reversed_entries
    body = _LIST_MARK.sub("", _EMPHASIS.sub("", line)).strip()
    if not body:
        return []
    m = _BRACKET_TYPE_FIRST.match(body)
    if m and _is_label(m.group(1)):
        return [(m.group(1), m.group(2))]
    pairs = _split_label_value(body)
    if pairs:
        return pairs
    m = _BRACKET_TYPE_LAST.match(body)
    if m and _is_label(m.group(2)) and not _is_label(m.group(1)):
        # `"X" - this is a noun, labelled as [LOCATION]`: the entity is before the explanation
        value = re.split(r"\s[-–—:]\s", m.group(1), maxsplit=1)[0]
        return [(m.group(2), value)]
    return []


def parse_entity_list(text: str) -> list[tuple[str, str]]:
    """(TYPE, entity) pairs, TYPE in PER/ORG/LOC, in order of first occurrence, duplicates merged.

    Accepted shapes: `(PER, John Smith) (LOC, London)` on one or many lines, `(John Smith, PER)`, numbered or
    bulleted lists, markdown (bold, backticks, code fences, headings), `Person: X`, `PERSON - X`, `X (PERSON)`,
    `[LOCATION] X`, plural labels with comma lists (`Locations: Paris, Rome`). Labels are mapped (PERSON->PER,
    LOCATION/GPE/FAC->LOC, ORGANIZATION->ORG); MISC, other known labels and unknown labels are dropped.
    """
    if not isinstance(text, str) or not text.strip():
        return []
    text = unicodedata.normalize("NFKC", text)
    text = _CODE_FENCE.sub("\n", text)
    out: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for line in text.splitlines():
        for label, raw in _parse_line(line):
            typ = _norm_type(label)
            entity = _clean_entity(raw)
            if typ is None or entity.lower() in _PLACEHOLDERS or _is_label(entity):
                continue
            if (typ, entity) not in seen:
                seen.add((typ, entity))
                out.append((typ, entity))
    return out


# ---------------------------------------------------------------------------------------------- translations
_TRANSLATED_AS = re.compile(
    r"(?:can|could|would|may|might)?\s*(?:be\s+)?(?:is\s+)?translated\s+(?:in(?:to)?\s+English\s+)?(?:as|to|into)\s*:?\s*",
    re.I,
)
_LABEL_PREFIX = re.compile(
    r"^(?:(?:the\s+)?final\s+(?:result|answer|translation)\s+without\s+(?:any\s+)?other\s+words\s+is\s*[:：]?|"
    r"(?:the\s+)?(?:final\s+|english\s+|accurate\s+|correct\s+)*(?:translation|translated\s+sentence|result|answer|output)"
    r"(?:\s+(?:in|into)\s+english)?\s*(?:is|would\s+be)?\s*[:：]|"
    r"(?:the\s+)?(?:final\s+|english\s+)*(?:translation|result|answer)\s+is\s+|"
    r"(?:the\s+)?[A-Z][a-z]+\s+sentence\s+is\s*[:：]|english\s*[:：]|here\s+is\s+the\s+(?:final\s+)?translation\s*[:：])\s*",
    re.I,
)
_EXPLANATION_START = re.compile(
    r"^(?:note|explanation|this\s|these\s|here\s|in\s+this|to\s+translate|i\s|i'|the\s+translation\s+(?:is|keeps|maintains)|"
    r"the\s+(?:named\s+)?entities|entities|translation\s+notes?|\(|\d+\.\s|[-*•]\s)",
    re.I,
)
_PAIRS = {'"': '"', "“": "”", "„": "“", "«": "»", "‘": "’", "'": "'", "「": "」", "『": "』", "`": "`"}


def _strip_wrapping(text: str) -> str:
    prev = None
    while prev != text:
        prev = text
        text = text.strip()
        if text.startswith("**") and text.endswith("**") and len(text) > 4:
            text = text[2:-2]
        if len(text) >= 2 and _PAIRS.get(text[0]) == text[-1] and text[0] not in text[1:-1]:
            text = text[1:-1]
        if text and text[0] in _PAIRS and _PAIRS[text[0]] not in text[1:]:  # an unclosed opening quote
            text = text[1:]
        if (
            text
            and text[-1] in _PAIRS.values()
            and not any(o in text[:-1] for o, c in _PAIRS.items() if c == text[-1])
        ):
            text = text[:-1]  # a closing quote that was never opened
        # `"Sentence."` with the period outside the quotes
        if (
            len(text) >= 3
            and _PAIRS.get(text[0]) == text[-2]
            and text[-1] in ".。"
            and text[0] not in text[1:-2]
        ):
            text = text[1:-2]
    return text


def clean_translation(text: str) -> str:
    """The English sentence inside a chatty forward reply, or the reply itself (stripped) when unsure.

    Handles `The sentence "X" can be translated as "Y".` -> Y, `Translation: Y`, `The Russian sentence is: Y`,
    markdown bold/code fences, surrounding quotes, and trailing explanation paragraphs. It never returns an
    empty string for a non-empty reply.
    """
    if not isinstance(text, str):
        return ""
    original = text.strip()
    if not original:
        return ""
    out = re.sub(r"\*\*|__", "", _CODE_FENCE.sub("", original)).strip()
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", out) if p.strip()]
    if len(paragraphs) > 1:
        # keep the first paragraph that is not a lead-in ending with ':' and drop the explanation after it
        first = 0
        while first < len(paragraphs) - 1 and paragraphs[first].rstrip().endswith((":", "：")):
            first += 1
        rest = paragraphs[first + 1 :]
        if all(_EXPLANATION_START.match(p) for p in rest):
            lead = paragraphs[:first]
            out = paragraphs[first]
            if lead and not _LABEL_PREFIX.match(out):
                out = lead[-1] + " " + out
    out = " ".join(out.split())
    m = _TRANSLATED_AS.search(out)
    if m and m.end() < len(out):
        tail = out[m.end() :].strip()
        if tail and tail[0] in _PAIRS:
            close = _PAIRS[tail[0]]
            end = tail.find(close, 1)
            if end > 1:
                tail = tail[: end + 1]
        out = tail
    else:
        for _ in range(3):  # nested lead-ins: `The Russian sentence is: "The translation is: Y"`
            stripped = _strip_wrapping(out)
            m = _LABEL_PREFIX.match(stripped)
            if not m or m.end() >= len(stripped):
                break
            out = stripped[m.end() :]
    out = _strip_wrapping(out)
    return out if out else original
