"""`eatlab-finetune-build`: make an EACL-format corpus for a new language (hi, hy, ...) from files, offline.

    eatlab-finetune-build --language hi --links links.tsv --leads leads.jsonl --out data/eacl

Inputs (UTF-8):
- `--links`: TSV, one `eng_entity<TAB>tgt_title` per line: an English entity mention and the title of the
  target-language Wikipedia article it links to (an interlanguage link, e.g. from Wikidata sitelinks or the
  `langlinks` table of a dump). The first line may be the header `eng_entity<TAB>tgt_title`; blank lines and
  lines starting with `#` are skipped. Order is kept; one title may serve several mentions.
- `--leads`: the lead sentence of each target article, either TSV `tgt_title<TAB>lead sentence` or JSONL (file
  name ending in .jsonl) with objects `{"title": ..., "text": ...}`. A title given twice keeps its first lead.

Output: `<out>/corpus_<lang>.json`, a JSON list of `{"eng_entity", "tgt_entity", "text"}` exactly like the released
EACL files (single line, UTF-8, not ASCII-escaped), and `<out>/corpus_<lang>.build.json` with the counts (links
read, pairs written, links without a lead) and the sha256 of the inputs. Point `finetune.eacl_root=<out>` at it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eatlab.errors import ConfigError, DataError, EatlabError
from eatlab.utils.io import atomic_write_json, atomic_write_text, sha256_file

LINKS_HEADER = ("eng_entity", "tgt_title")


def _lines(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, "no such file") from None
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    for no, line in enumerate(text.splitlines(), 1):
        yield no, line.rstrip("\r")


def read_links(path: str | Path) -> list[tuple[str, str]]:
    """(eng_entity, tgt_title) pairs of a links TSV; DataError naming the line for a malformed one."""
    path = Path(path)
    out = []
    for no, line in _lines(path):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataError(
                path, f"expected 2 tab-separated fields (eng_entity, tgt_title), got {len(fields)}", line=no
            )
        eng, tgt = fields[0].strip(), fields[1].strip()
        if no == 1 and (eng, tgt) == LINKS_HEADER:
            continue
        if not eng or not tgt:
            raise DataError(path, "empty eng_entity or tgt_title", line=no)
        out.append((eng, tgt))
    if not out:
        raise DataError(path, "no links")
    return out


def read_leads(path: str | Path) -> tuple[dict[str, str], int]:
    """title -> lead sentence (first one wins) and the number of repeated titles; TSV or JSONL by file name."""
    path = Path(path)
    leads: dict[str, str] = {}
    repeated = 0
    jsonl = path.suffix.lower() == ".jsonl"
    for no, line in _lines(path):
        if not line.strip() or (not jsonl and line.startswith("#")):
            continue
        if jsonl:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(path, f"not valid JSON: {exc.msg}", line=no) from None
            if (
                not isinstance(rec, dict)
                or not isinstance(rec.get("title"), str)
                or not isinstance(rec.get("text"), str)
            ):
                raise DataError(path, 'expected {"title": str, "text": str}', line=no)
            title, text = rec["title"].strip(), rec["text"].strip()
        else:
            fields = line.split("\t")
            if len(fields) != 2:
                raise DataError(
                    path, f"expected 2 tab-separated fields (tgt_title, lead), got {len(fields)}", line=no
                )
            title, text = fields[0].strip(), fields[1].strip()
            if no == 1 and title == "tgt_title":
                continue
        if not title or not text:
            raise DataError(path, "empty title or lead sentence", line=no)
        if title in leads:
            repeated += 1
            continue
        leads[title] = text
    return leads, repeated


def build_corpus(links: list[tuple[str, str]], leads: dict[str, str]) -> tuple[list[dict], dict[str, int]]:
    """EACL records in link order; links whose article has no lead sentence are counted and skipped."""
    records = []
    missing = 0
    for eng, tgt in links:
        text = leads.get(tgt)
        if text is None:
            missing += 1
            continue
        records.append({"eng_entity": eng, "tgt_entity": tgt, "text": text})
    return records, {"links": len(links), "pairs": len(records), "links_without_lead": missing}


def build(language: str, links_path: str | Path, leads_path: str | Path, out_dir: str | Path) -> dict:
    """Write `<out>/corpus_<lang>.json` and its build report; return the report."""
    if not language or "/" in language or language.startswith("."):
        raise ConfigError(f"--language={language!r}: expected a language code such as hi")
    links = read_links(links_path)
    leads, repeated = read_leads(leads_path)
    records, counts = build_corpus(links, leads)
    if not records:
        raise DataError(leads_path, "no link has a lead sentence (do the titles match the links file?)")
    out_dir = Path(out_dir)
    corpus = out_dir / f"corpus_{language}.json"
    atomic_write_text(corpus, json.dumps(records, ensure_ascii=False))
    report = {
        "language": language,
        "corpus": str(corpus),
        "corpus_sha256": sha256_file(corpus),
        "inputs": {str(links_path): sha256_file(links_path), str(leads_path): sha256_file(leads_path)},
        "counts": counts | {"repeated_lead_titles": repeated},
    }
    atomic_write_json(out_dir / f"corpus_{language}.build.json", report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="eatlab-finetune-build",
        description="Build an EACL-format corpus for a new language from local files.",
    )
    parser.add_argument("--language", required=True, help="language code, e.g. hi (names the output file)")
    parser.add_argument("--links", required=True, help="TSV eng_entity<TAB>tgt_title")
    parser.add_argument(
        "--leads", required=True, help="TSV tgt_title<TAB>lead sentence, or JSONL {title, text}"
    )
    parser.add_argument("--out", required=True, help="output folder (use it as finetune.eacl_root)")
    args = parser.parse_args(argv)
    try:
        report = build(args.language, args.links, args.leads, args.out)
    except EatlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    c = report["counts"]
    print(
        f"{report['corpus']}: {c['pairs']} pairs from {c['links']} links "
        f"({c['links_without_lead']} without a lead sentence, {c['repeated_lead_titles']} repeated lead titles)"
    )
    print(f"use it with: eatlab-finetune language={args.language} finetune.eacl_root={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
