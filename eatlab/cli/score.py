"""`eatlab-score GOLD PRED --language LANG [--json]`: score a prediction file against a gold file.

Both files are in the CoNLL layout (token first column, tag last column, so a `token gold pred` file read as
the prediction gives its predicted tags) and must hold the same sentences with the same tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eatlab.data.conll import read_conll
from eatlab.data.languages import get_language
from eatlab.data.record import Sentence
from eatlab.errors import DataError, EatlabError
from eatlab.eval.scores import score
from eatlab.eval.table import format_scores


def check_aligned(gold: list[Sentence], pred: list[Sentence], gold_path: Path, pred_path: Path) -> None:
    """DataError naming the first sentence (1-based) where the two files differ in presence or tokens."""
    for k, (g, p) in enumerate(zip(gold, pred), start=1):
        if g.tokens == p.tokens:
            continue
        if len(g.tokens) != len(p.tokens):
            why = f"{len(p.tokens)} tokens here, {len(g.tokens)} in {gold_path}"
        else:
            j = next(i for i, (a, b) in enumerate(zip(g.tokens, p.tokens)) if a != b)
            why = f"token {j + 1} is {p.tokens[j]!r} here, {g.tokens[j]!r} in {gold_path}"
        raise DataError(pred_path, f"sentence {k} differs from the gold file: {why}")
    if len(gold) != len(pred):
        k = min(len(gold), len(pred)) + 1
        raise DataError(
            pred_path,
            f"sentence {k} differs from the gold file: {len(pred)} sentences here, {len(gold)} in {gold_path}",
        )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="eatlab-score",
        description="Entity-level F1 (seqeval default mode), the EAT reference token-level scores and a "
        "bootstrap interval for a prediction file against a gold file (CoNLL layout, tag in the last column).",
    )
    ap.add_argument("gold", type=Path, help="gold CoNLL file")
    ap.add_argument("pred", type=Path, help="predicted CoNLL file (same sentences and tokens)")
    ap.add_argument("--language", "-l", required=True, help="language code (conf/language/<code>.yaml)")
    ap.add_argument("--json", action="store_true", help="print one JSON object (fractions in [0, 1])")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    return ap


def run(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.n_boot < 1:
        raise EatlabError(f"--n-boot must be >= 1, got {args.n_boot}")
    lang = get_language(args.language)
    gold = read_conll(args.gold, language=lang.code, char_tokenized=lang.char_tokenized)
    pred = read_conll(args.pred, language=lang.code, char_tokenized=lang.char_tokenized)
    check_aligned(gold, pred, args.gold, args.pred)
    result = score(
        [s.tags for s in gold],
        [s.tags for s in pred],
        [s.tokens for s in gold],
        lang.code,
        seed=args.seed,
        n_boot=args.n_boot,
        char_tokenized=lang.char_tokenized,
    )
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        print(format_scores(result, title=f"{args.pred} vs {args.gold}"))
    return result


def main(argv: list[str] | None = None) -> int:
    try:
        run(argv)
    except EatlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # e.g. `eatlab-score ... | head`: stop quietly
        sys.stdout = None
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
