"""`eatlab-cache`: fill the response cache from recorded conversations, write a run's calls out, show what it holds.

  eatlab-cache import FILE.jsonl [FILE ...] --model ID [--engine hf] [--cache PATH]
  eatlab-cache export --out FILE.jsonl [--model ID] [--engine ENGINE] [--cache PATH]
  eatlab-cache stats [--cache PATH]

Sharing a cache file, or an export re-imported with `import`, is enough to replay a published run offline: the
pipeline asks the same questions with the same settings and every answer comes from the cache (0 model calls).
The default cache is $EATLAB_OUTPUTS/cache/responses.sqlite ($EATLAB_OUTPUTS defaults to ./outputs), the same
file the pipeline uses.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from eatlab.errors import EatlabError
from eatlab.llm.cache import ResponseCache, default_cache_path
from eatlab.llm.transcripts import entries_to_records, read_transcript_calls
from eatlab.utils.io import atomic_write_text


def cmd_import(args) -> int:
    cache = ResponseCache(args.cache, mode="readwrite")
    total = added = 0
    for f in args.files:
        calls = list(read_transcript_calls(f))  # validate a whole file before writing any of it
        by_stage: dict[str | None, list] = {}
        for c in calls:
            by_stage.setdefault(c.stage, []).append((args.engine, args.model, c.messages, c.settings, c.reply))
        n = sum(cache.put_many(items, stage=stage, source=f.name) for stage, items in by_stage.items())
        print(f"{f}: {len(calls)} answers, {n} new")
        total += len(calls)
        added += n
    print(f"imported {total} answers ({added} new, {total - added} already cached) into {args.cache} "
          f"as engine={args.engine} model={args.model}")  # fmt: skip
    cache.close()
    return 0


def cmd_export(args) -> int:
    cache = ResponseCache(args.cache, mode="readonly")
    entries = list(cache.entries(model=args.model, engine=args.engine))
    records = entries_to_records(entries)
    atomic_write_text(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    print(f"exported {len(entries)} answers as {len(records)} conversations to {args.out}")
    cache.close()
    return 0


def _when(t: float | None) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M") if t else "-"


def cmd_stats(args) -> int:
    cache = ResponseCache(args.cache, mode="readonly")
    rows = cache.stats()
    if not rows:
        print(f"{args.cache}: empty or absent")
        return 0
    print(f"{args.cache}")
    head = f"{'engine':8} {'model':48} {'answers':>8} {'tok in':>10} {'tok out':>9} {'entropies':>9}  stages"
    print(head)
    for r in rows:
        print(
            f"{r['engine']:8} {r['model'][:48]:48} {r['answers']:>8} {r['prompt_tokens'] or 0:>10} "
            f"{r['completion_tokens'] or 0:>9} {r['with_entropies']:>9}  {r['stages'] or '-'} "
            f"({_when(r['first'])} .. {_when(r['last'])} UTC)"
        )
    print(f"total: {sum(r['answers'] for r in rows)} answers")
    cache.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eatlab-cache", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def add_cache(sp):
        sp.add_argument("--cache", type=Path, default=default_cache_path(), help="SQLite cache file")

    sp = sub.add_parser("import", help="load recorded conversations (JSONL) into the cache")
    sp.add_argument("files", nargs="+", type=Path)
    sp.add_argument("--model", required=True, help="model id the answers are stored under (model.id of a run)")
    sp.add_argument("--engine", default="hf", help="backend kind the answers are stored under (default hf)")
    add_cache(sp)
    sp.set_defaults(fn=cmd_import)

    sp = sub.add_parser("export", help="write cached calls as conversation records (JSONL)")
    sp.add_argument("--out", required=True, type=Path)
    sp.add_argument("--model", default=None, help="only this model key")
    sp.add_argument("--engine", default=None, help="only this backend kind")
    add_cache(sp)
    sp.set_defaults(fn=cmd_export)

    sp = sub.add_parser("stats", help="answers per engine and model")
    add_cache(sp)
    sp.set_defaults(fn=cmd_stats)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except EatlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
