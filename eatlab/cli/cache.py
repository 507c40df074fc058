"""`eatlab-cache`: fill the response cache from recorded conversations, write a run's calls out, show what it holds.

  eatlab-cache import FILE.jsonl [FILE ...] --model ID [--engine hf] [--cache PATH]
  eatlab-cache export --out FILE.jsonl [--model ID] [--engine ENGINE] [--cache PATH]
  eatlab-cache stats [--cache PATH]
  eatlab-cache check [--cache PATH] [--run-dir DIR ...]     exit 1 when something is damaged or incomplete
  eatlab-cache repair [--cache PATH] [--run-dir DIR ...]    keep what is readable, set the damaged file aside

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
            by_stage.setdefault(c.stage, []).append(
                (args.engine, args.model, c.messages, c.settings, c.reply)
            )
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


def cmd_check(args) -> int:
    from eatlab.cli.repair import check_cache, check_run_dir

    if args.cache is None and not args.run_dir:
        args.cache = default_cache_path()
    ok = True
    if args.cache is not None:
        c = check_cache(args.cache, full=not args.quick)
        print(c.message())
        ok &= c.ok
    for d in args.run_dir:
        r = check_run_dir(d)
        print("\n".join(r.messages()))
        ok &= r.ok
    return 0 if ok else 1


def cmd_repair(args) -> int:
    from eatlab.cli.repair import repair_cache, repair_run_dir

    if args.cache is None and not args.run_dir:
        args.cache = default_cache_path()
    if args.cache is not None:
        print(repair_cache(args.cache).message())
    for d in args.run_dir:
        before = repair_run_dir(d)
        fixed = [f for f in before.files if not f.ok]
        for f in fixed:
            print(f"{f.message()} -> repaired: {f.records} valid records kept")
        if not fixed:
            print(f"{d}: no damaged artifact")
        if not before.complete:
            print(
                f"{d}: still incomplete (no metrics.json): re-run the same command to finish it from the cache"
            )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eatlab-cache", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def add_cache(sp):
        sp.add_argument("--cache", type=Path, default=default_cache_path(), help="SQLite cache file")

    sp = sub.add_parser("import", help="load recorded conversations (JSONL) into the cache")
    sp.add_argument("files", nargs="+", type=Path)
    sp.add_argument(
        "--model", required=True, help="model id the answers are stored under (model.id of a run)"
    )
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

    for name, fn, text in (
        ("check", cmd_check, "find a damaged cache file, a truncated artifact or an interrupted run"),
        (
            "repair",
            cmd_repair,
            "rebuild a damaged cache from its readable rows; drop truncated artifact lines",
        ),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--cache", type=Path, default=None, help="SQLite cache file (default: the default "
                        "cache unless --run-dir is given)")  # fmt: skip
        sp.add_argument("--run-dir", type=Path, action="append", default=[], help="a run dir (repeatable)")
        if name == "check":
            sp.add_argument(
                "--quick", action="store_true", help="PRAGMA quick_check instead of integrity_check"
            )
        sp.set_defaults(fn=fn)
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
