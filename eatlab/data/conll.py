"""Readers and writers for the CoNLL layout of WikiANN (and the raw Rahimi release files).

One token per line, columns split on tabs or whitespace, first column the token and last column the tag, so a
`token gold pred` file read as a prediction yields its predicted tags; every line has as many columns as the first
(else the last column of a stray line is not its tag). A blank line ends a sentence. Tokens of the raw Rahimi
release carry a language prefix (`zh:北京`), which is stripped; a byte-order mark is dropped.
"""

from __future__ import annotations

from pathlib import Path

from eatlab.data.bio import VALID_TAGS
from eatlab.data.record import Sentence
from eatlab.errors import DataError

BOM = "\ufeff"


def read_conll(
    path: str | Path,
    language: str = "xx",
    split: str = "test",
    char_tokenized: bool | None = None,
    strip_prefix: bool = True,
) -> list[Sentence]:
    """Read a CoNLL file into sentences with ids `<language>-<split>-<index>`.

    `char_tokenized` defaults to the language table's flag (zh/ja). A byte-order mark at the start of a line is
    dropped. Raises DataError naming file and line for a missing or empty file, a line with a single column, a
    line with more or fewer columns than the file's first (its last column is not the same tag) or an unknown tag.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file does not exist")
    if char_tokenized is None:
        from eatlab.data.languages import is_char_tokenized

        char_tokenized = is_char_tokenized(language)
    prefix = f"{language}:"  # raw Rahimi tokens: `zh:北`; only the file's own language prefix is stripped
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []

    def flush() -> None:
        if tokens:
            sid = f"{language}-{split}-{len(sentences)}"
            sentences.append(Sentence(sid, language, list(tokens), list(tags), char_tokenized))
            tokens.clear()
            tags.clear()

    width: tuple[int, int] | None = None  # (columns, line) of the first token line: every line has as many
    try:
        fh = path.open(encoding="utf-8")
        with fh:
            for lineno, raw in enumerate(fh, start=1):
                line = raw.rstrip("\r\n")
                if line[:1] == BOM and not line[1:2].isspace():  # a byte-order mark (an editor's, or files
                    line = line[1:]  # joined with cat), not a token: ka/test.txt has a lone U+FEFF token
                if not line.strip():
                    flush()
                    continue
                cols = line.split("\t") if "\t" in line else line.split()
                cols = [c for c in cols if c != ""] if "\t" in line else cols
                if len(cols) < 2:
                    raise DataError(
                        path, f"expected 'token<TAB>tag', got a single column: {line[:40]!r}", lineno
                    )
                if width is None:
                    width = (len(cols), lineno)
                elif len(cols) != width[0]:  # which column is the tag here? (the last would misread gold)
                    raise DataError(
                        path,
                        f"{len(cols)} columns where line {width[1]} has {width[0]}: every line must have the same "
                        f"columns ('token<TAB>tag', or 'token<TAB>gold<TAB>pred'): {line[:40]!r}",
                        lineno,
                    )
                token, tag = cols[0].strip(), cols[-1].strip()
                if strip_prefix and token.startswith(prefix) and len(token) > len(prefix):
                    token = token[len(prefix) :]
                if tag not in VALID_TAGS:
                    raise DataError(path, f"unknown tag {tag!r} (expected O, B-/I-PER, ORG, LOC)", lineno)
                tokens.append(token)
                tags.append(tag)
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    flush()
    if not sentences:
        raise DataError(path, "file is empty (no sentences)")
    return sentences


def write_conll(
    path: str | Path, sentences: list[Sentence], pred_tags: list[list[str]] | None = None
) -> None:
    """Write `token gold` (or `token gold pred` with predictions) lines, a blank line after each sentence."""
    lines: list[str] = []
    for i, s in enumerate(sentences):
        pred = pred_tags[i] if pred_tags is not None else None
        for j, (tok, tag) in enumerate(zip(s.tokens, s.tags)):
            lines.append(f"{tok}\t{tag}\t{pred[j]}" if pred is not None else f"{tok}\t{tag}")
        lines.append("")
    from eatlab.utils.io import atomic_write_text

    atomic_write_text(path, "\n".join(lines) + "\n")
