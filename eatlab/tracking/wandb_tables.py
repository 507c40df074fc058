"""W&B tables and artifacts of one run: per-type scores, sample predictions with conversations, files."""

from __future__ import annotations

from pathlib import Path

from eatlab.tracking.record import flat_scalars


def log_run_tables(run, metrics: dict, results: list, run_dir: Path, n_samples: int = 20) -> None:
    import wandb

    run.summary.update(flat_scalars(metrics))
    per_type = wandb.Table(columns=["type", "precision", "recall", "f1", "support"])
    for typ, v in metrics.get("per_type", {}).items():
        per_type.add_data(typ, v["precision"], v["recall"], v["f1"], v["support"])
    stages = wandb.Table(columns=["stage", "llm_calls", "llm_cache_hits", "prompt_tokens", "completion_tokens", "seconds"])
    for st, v in metrics.get("stages", {}).items():
        stages.add_data(st, v.get("llm_calls", 0), v.get("llm_cache_hits", 0), v.get("prompt_tokens", 0),
                        v.get("completion_tokens", 0), v.get("seconds", 0.0))
    samples = wandb.Table(columns=["sentence_id", "text", "english", "english_entities", "gold", "predicted", "alignments"])
    for r in results[:n_samples]:
        toks, j = r.sentence.tokens, ("" if r.sentence.char_tokenized else " ")
        from eatlab.data.bio import tags_to_spans

        gold = [f"{s.type}:{j.join(toks[s.start:s.end])}" for s in tags_to_spans(r.sentence.tags)]
        pred = [f"{s.type}:{j.join(toks[s.start:s.end])}" for s in r.pred_spans]
        aligns = [f"{a['phrase']} -> {a['answer']!r} ({a['reason'] or 'ok'})" for a in r.alignments]
        samples.add_data(r.sentence.id, r.sentence.text, r.english, str(r.entities), str(gold), str(pred), "\n".join(aligns))
    run.log({"per_type": per_type, "stages": stages, "sample_predictions": samples})
    art = wandb.Artifact(f"predictions-{run.id}", type="predictions")
    for name in ("metrics.json", "predictions.conll"):
        if (Path(run_dir) / name).exists():
            art.add_file(str(Path(run_dir) / name))
    run.log_artifact(art)
