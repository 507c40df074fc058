"""W&B tables and artifacts of one run: per-type scores, stage costs, failures, sample predictions with their
conversations, and the run's files (predictions, metrics, per-sample artifacts) as a versioned artifact."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from eatlab.rundir import (
    BACKWARD,
    FORWARD,
    METRICS,
    NER,
    PREDICTIONS,
    PROVENANCE,
    RESOLVED_CONFIG,
    STAGES,
    RunDir,
    artifact_name,
    flat_scalars,
)

RUN_FILES = (METRICS, PREDICTIONS, PROVENANCE, RESOLVED_CONFIG, *(artifact_name(s) for s in STAGES))


def format_conversation(messages) -> str:
    """A conversation as readable text: one `role: content` paragraph per message."""
    return "\n\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in messages or [])


def _backward_text(r: dict) -> str:
    """One backward record (the one layout every method writes, eatlab.eat.stages.BACKWARD_KEYS) as text: the
    entity, where its answer landed (or why it was dropped), then its conversation if it had one."""
    placed = (
        f"{r.get('placed_by')} {r.get('span')}" if r.get("span") else f"dropped: {r.get('dropped_reason')}"
    )
    head = f"--- {r.get('type')}: {r.get('phrase')} -> {r.get('answer')!r} ({placed})"
    return head + ("\n" + format_conversation(r["messages"]) if r.get("messages") else "")


def sample_conversations(run_dir: Path, ids: set[str]) -> dict[str, dict[str, str]]:
    """Per stage (forward, ner, backward), the conversations and records (as text) of the given sentence ids,
    read from the run's artifacts; a stage the method does not run, or a record without a conversation (an
    extractor that is not an LLM), gives no text."""
    rd = RunDir(run_dir)
    out: dict[str, dict[str, str]] = {FORWARD: {}, NER: {}, BACKWARD: {}}
    for stage in (FORWARD, NER):
        for r in rd.artifact(stage):
            if r.get("sentence_id") in ids and r.get("messages"):
                out[stage][r["sentence_id"]] = format_conversation(r["messages"])
    backward: dict[str, list[str]] = defaultdict(list)
    for r in rd.artifact(BACKWARD):
        if r.get("sentence_id") in ids:
            backward[r["sentence_id"]].append(_backward_text(r))
    out[BACKWARD] = {k: "\n\n".join(v) for k, v in backward.items()}
    return out


def _entity_strings(tokens, spans, char_tokenized: bool) -> list[str]:
    joiner = "" if char_tokenized else " "
    return [f"{s.type}:{joiner.join(tokens[s.start : s.end])}" for s in spans]


def log_run_tables(run, metrics: dict, results: list, run_dir: Path, n_samples: int = 20) -> None:
    """Summary scalars, tables and the run artifact of one finished run."""
    import wandb

    from eatlab.data.bio import tags_to_spans

    run.summary.update(flat_scalars(metrics))
    per_type = wandb.Table(columns=["type", "precision", "recall", "f1", "support"])
    for typ, v in metrics.get("per_type", {}).items():
        per_type.add_data(typ, v["precision"], v["recall"], v["f1"], v["support"])
    stages = wandb.Table(
        columns=["stage", "llm_calls", "llm_cache_hits", "prompt_tokens", "completion_tokens", "seconds"]
    )
    for st, v in metrics.get("stages", {}).items():
        stages.add_data(
            st,
            v.get("llm_calls", 0),
            v.get("llm_cache_hits", 0),
            v.get("prompt_tokens", 0),
            v.get("completion_tokens", 0),
            v.get("seconds", 0.0),
        )
    failures = wandb.Table(columns=["side", "class", "count"])
    for side in ("gold", "predicted", "dropped_entities"):
        for cls, n in metrics.get("failures", {}).get(side, {}).items():
            failures.add_data(side, cls, n)
    sampled = results[: max(0, n_samples)]
    convs = sample_conversations(run_dir, {r.sentence.id for r in sampled})
    samples = wandb.Table(
        columns=[
            "sentence_id",
            "text",
            "english",
            "english_entities",
            "gold",
            "predicted",
            "alignments",
            "forward_conversation",
            "ner_conversation",
            "backward_conversations",
        ]
    )
    for r in sampled:
        s = r.sentence
        gold = _entity_strings(s.tokens, tags_to_spans(s.tags), s.char_tokenized)
        pred = _entity_strings(s.tokens, r.pred_spans, s.char_tokenized)
        aligns = [f"{a['phrase']} -> {a['answer']!r} ({a['reason'] or 'ok'})" for a in r.alignments]
        samples.add_data(
            s.id,
            s.text,
            r.english,
            str(r.entities),
            str(gold),
            str(pred),
            "\n".join(aligns),
            convs[FORWARD].get(s.id, ""),
            convs[NER].get(s.id, ""),
            convs[BACKWARD].get(s.id, ""),
        )
    run.log({"per_type": per_type, "stages": stages, "failures": failures, "sample_predictions": samples})
    art = wandb.Artifact(
        f"run-files-{run.id}", type="eat-run", metadata={"entity_f1": metrics.get("entity_f1")}
    )
    for name in RUN_FILES:
        path = Path(run_dir) / name
        if path.is_file():
            art.add_file(str(path), name=name)
    run.log_artifact(art)
