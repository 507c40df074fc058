"""`eatlab-analyze SWEEP_DIR`: translation quality, correlations, ablation tables, plots and report.html.

eatlab-analyze outputs/multiruns/eat/2025-01-01_12-00-00
eatlab-analyze SWEEP --references refs.jsonl --roundtrip-max-new-tokens 128
eatlab-analyze SWEEP --no-roundtrip --out /tmp/analysis
eatlab-analyze SWEEP --wandb-report --wandb-entity me --wandb-project eatlab   # needs eatlab[wandb-report]
"""

from __future__ import annotations

import argparse
import logging
import sys

from eatlab.errors import EatlabError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eatlab-analyze",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sweep_dir", help="a multirun dir (or any folder of run dirs, or one run dir)")
    p.add_argument("--out", default=None, help="output folder (default: SWEEP_DIR/analysis)")
    p.add_argument(
        "--references",
        default=None,
        help="reference English translations: JSONL {sentence_id, reference} or TSV sentence_id<TAB>reference",
    )
    p.add_argument(
        "--no-roundtrip", action="store_true", help="skip the round-trip translation (no model needed)"
    )
    p.add_argument("--roundtrip-max-new-tokens", type=int, default=256)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the runs' resolved configs for the round trip, e.g. "
        "--set model.path=/data/Qwen2.5-14B-Instruct (repeatable)",
    )
    p.add_argument(
        "--n-boot", type=int, default=1000, help="bootstrap resamples (correlations, paired tests)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--wandb-report", action="store_true", help="also create a W&B report of the sweep (online)"
    )
    p.add_argument("--wandb-entity", default=None)
    p.add_argument("--wandb-project", default="eatlab")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        from eatlab.analysis.analyze import analyze_sweep

        a = analyze_sweep(
            args.sweep_dir,
            args.out,
            references=args.references,
            roundtrip=not args.no_roundtrip,
            roundtrip_overrides=args.overrides,
            roundtrip_max_new_tokens=args.roundtrip_max_new_tokens,
            n_boot=args.n_boot,
            seed=args.seed,
        )
        if args.wandb_report:
            from eatlab.analysis.wandb_report import save_report

            url = save_report(a, entity=args.wandb_entity, project=args.wandb_project)
            print(f"W&B report: {url}")
    except EatlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n_ok = int((a.runs["status"] == "ok").sum())
    print(f"{len(a.runs)} runs ({n_ok} ok), {len(a.sentences)} sentence rows -> {a.out_dir / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
