"""`eatlab-align-eval`: the entity-alignment benchmark on held-out EACL pairs (eatlab.eat.align_eval).

eatlab-align-eval language=zh model.path=DIR align_eval.limit=50    # the dev slice (choose settings here)
eatlab-align-eval language=zh model.path=DIR align_eval.split=test  # the test slice, once per final setting
eatlab-align-eval -m language=zh,ja alignment.constrained=false,true       # free vs constrained
eatlab-align-eval language=zh finetune=eacl_qlora                          # with the language's adapter
eatlab-analyze outputs/multiruns/align_eval/<time>                         # tables, intervals, paired tests
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

from omegaconf import DictConfig

from eatlab.cli.task import Task, entry_point
from eatlab.errors import ConfigError
from eatlab.utils.progress import progress_logger

log = logging.getLogger("eatlab")


def heldout_cases(cfg: DictConfig, language) -> tuple[list, list, dict]:
    """The first `align_eval.limit` pairs of the language's `align_eval.split` slice (dev or test), their shifted
    variants (empty with `align_eval.shifted=false`), and the slice's provenance."""
    from eatlab.eat.align_eval import make_case, shifted_cases
    from eatlab.finetune.eacl import FilterOptions, prepare_language

    h = cfg.heldout
    name = str(cfg.align_eval.get("split", "dev"))
    if name not in ("dev", "test"):
        raise ConfigError(f"align_eval.split={name}: expected dev or test")
    split = prepare_language(
        h.eacl_root,
        language.code,
        FilterOptions.from_config(h.filters),
        float(h.val_fraction),
        h.get("val_max"),
        int(cfg.seed),
        float(h.get("test_fraction", 0.05)),
        h.get("test_max", 200),
    )
    pool = split.pairs(name)
    limit = cfg.align_eval.get("limit")
    pairs = pool if limit is None else pool[: int(limit)]
    cases = [make_case(p, language) for p in pairs]
    want_shifted = cfg.align_eval.get("shifted", True)
    if not isinstance(want_shifted, bool):
        raise ConfigError(f"align_eval.shifted={want_shifted}: expected true or false")
    shifted = shifted_cases(cases, pool, language) if want_shifted else []
    prov = {
        "source": str(h.eacl_root) if h.eacl_root else "in-repo sample (eatlab/resources/samples/eacl)",
        "file": split.path,
        "sha256": split.sha256,
        "split": name,
        "heldout_pairs": len(pool),
        "pairs": len(cases),
        "units": len({c.unit for c in cases}),
        "shifted_pairs": len(shifted),
        "pair_ids": [c.id for c in cases],
        "counts": split.counts,
    }
    return cases, shifted, prov


def align_eval_task(cfg: DictConfig, task: Task) -> dict:
    from eatlab.data.languages import Language
    from eatlab.eat.align_eval import SHIFTED_ARTIFACT, run_backward, run_naming, scores_of
    from eatlab.eat.artifacts import JsonlArtifact, finalize_artifacts
    from eatlab.eat.methods import stage_context
    from eatlab.finetune.adapter import adapter_provenance
    from eatlab.finetune.tasks import Templates
    from eatlab.llm.factory import backend_compute, build_client
    from eatlab.rundir import (
        ALIGN_BACKWARD,
        ALIGN_NAMING,
        artifact_name,
        build_metrics,
        flat_scalars,
        write_metrics,
    )
    from eatlab.tracking.record import record_run

    t_start = time.perf_counter()
    run_dir = task.run_dir
    language = Language.from_config(cfg)  # the composed node: a language of one's own works too
    opts = cfg.align_eval
    directions = list(opts.directions)
    cases, shifted_all, data_prov = heldout_cases(
        cfg, language
    )  # bad data fails here, before the model loads
    templates = Templates.from_config(cfg.heldout.templates, languages=(language,))
    client = build_client(cfg)
    client.cache.ensure_open()
    rounds = {"forward": int(cfg.prompt_rounds.forward), "backward": int(cfg.prompt_rounds.backward)}
    ctx = stage_context(cfg, client, language, run_dir, rounds)
    prov = task.provenance(
        {
            "data": data_prov,
            "prompts": ctx.prompts.provenance(),
            "model_key": getattr(client, "model_key", None),
            "compute": backend_compute(cfg),
            "adapter": adapter_provenance(cfg.finetune.get("adapter_path")),
        }
    )
    loggers = task.loggers()
    backward = [] if "backward" in directions else None
    shifted = [] if backward is not None and opts.get("shifted", True) else None
    by_id = {c.id: c for c in shifted_all}
    naming = [] if "naming" in directions else None
    seconds: Counter = Counter()
    report = progress_logger(len(cases), f"align-eval {language.code}", logger=log)
    step = int(opts.batch_size)
    art_b = JsonlArtifact(run_dir / artifact_name(ALIGN_BACKWARD)) if backward is not None else None
    art_n = JsonlArtifact(run_dir / artifact_name(ALIGN_NAMING)) if naming is not None else None
    art_s = JsonlArtifact(run_dir / artifact_name(SHIFTED_ARTIFACT)) if shifted is not None else None
    try:
        for lo in range(0, len(cases), step):
            chunk = cases[lo : lo + step]
            if backward is not None:
                t0 = time.perf_counter()
                moved = (
                    [] if shifted is None else [by_id[k] for c in chunk if (k := c.id + "-shifted") in by_id]
                )
                recs = run_backward(
                    ctx, [*chunk, *moved]
                )  # the shifted variants ride in the same model calls
                seconds["backward"] += time.perf_counter() - t0
                art_b.write(recs[: len(chunk)])
                backward += recs[: len(chunk)]
                if moved:
                    art_s.write(recs[len(chunk) :])
                    shifted += recs[len(chunk) :]
            if naming is not None:
                t0 = time.perf_counter()
                recs, faults = run_naming(
                    client, chunk, templates, ctx.generation, int(opts.naming_max_new_tokens)
                )
                seconds["naming"] += time.perf_counter() - t0
                ctx.count_faults("naming", Counter(faults))
                art_n.write(recs)
                naming += recs
            report(lo + len(chunk))
    finally:
        client.close()
    t0 = time.perf_counter()
    scores = scores_of(backward, naming, int(opts.n_boot), int(cfg.seed), shifted)
    seconds["scoring"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_start
    metrics = build_metrics(
        scores,
        run={
            "task": "align_eval",
            "language": language.code,
            "model": cfg.model.id,
            "smoke_model": bool(cfg.model.get("smoke", False)),
            "prompts": ctx.prompts.name,
            "prompt_rounds": {"forward": rounds["forward"], "backward": len(ctx.prompts.backward.rounds)},
            "alignment": {k: v for k, v in dict(cfg.get("alignment") or {}).items()},
            "finetune": cfg.finetune.name,
            "split": data_prov["split"],
            "shifted": shifted is not None,
            "seed": int(cfg.seed),
            "git_commit": prov["git"]["commit"],
        },
        data={k: v for k, v in data_prov.items() if k != "pair_ids"},
        counters=client.counters_dict(),
        stage_seconds=dict(seconds),
        counts=dict(ctx.counts),
        answer_faults={k: dict(v) for k, v in sorted(ctx.answer_faults.items())},
    )
    finalize_artifacts(run_dir)
    for stage in (
        "forward",
        "ner",
        "backward",
    ):  # the stage files StageContext opens; this task writes its own
        path = run_dir / artifact_name(stage)
        if path.is_file() and path.stat().st_size == 0:
            path.unlink()
    write_metrics(run_dir, metrics)
    for lg in loggers:
        lg.log_metrics(flat_scalars({"scores": scores}))
    record_run(cfg, run_dir, metrics, loggers, None)
    print(format_summary(metrics, run_dir))
    return metrics


def format_summary(metrics: dict, run_dir: Path) -> str:
    """The job's scores as readable lines: per recovery, the model against the copy-the-head control on all pairs
    and per slice (gold position, shifted), in percent with 95% intervals."""
    run, data = metrics["run"], metrics["data"]
    lines = [
        f"align-eval {run['language']}, {data.get('split', 'dev')} slice ({data.get('pairs', 0)} pairs, "
        f"{data.get('units', 0)} distinct sentence+gold items) -> {run_dir}"
    ]

    def pct(block: dict) -> str:
        lo, hi = block["ci95"]
        return f"{100 * block['mean']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"

    bw, ctl = metrics.get("backward"), metrics.get("control")
    if bw:
        names = ["all", *bw.get("slices", {})]
        width = 22
        for rec in ("eatlab", "reference"):
            head = [f"{n} ({(bw[rec] if n == 'all' else bw['slices'][n][rec])['n']})" for n in names]
            lines.append(f"  backward, {rec} recovery".ljust(38) + "".join(h.ljust(width) for h in head))
            for metric, label in (("exact", "exact"), ("char_f1", "char F1"), ("placed", "placed")):
                for who, block in (("model", bw), ("copy-the-head control", ctl)):
                    if block is None or (who != "model" and metric == "placed"):
                        continue
                    cells = [
                        pct((block[rec] if n == "all" else block["slices"][n][rec])[metric]) for n in names
                    ]
                    lines.append(f"    {label}, {who}".ljust(38) + "".join(c.ljust(width) for c in cells))
        lines.append(f"  backward answers verbatim in the sentence: {100 * bw['verbatim_share']:.1f}%")
    nm = metrics.get("naming")
    if nm:
        lines.append(f"  naming: exact {pct(nm['exact'])}  chrF {pct(nm['chrf'])}")
    lines.append(
        f"  LLM calls {metrics['llm_calls']} (cache hits {metrics['llm_cache_hits']}), {metrics['seconds'].get('total', 0):.1f} s"
    )
    return "\n".join(lines)


@entry_point("align_eval", job_type="align_eval")
def main(cfg: DictConfig, task: Task) -> dict:
    return align_eval_task(cfg, task)
