"""Score a finished run: both scorers, failure attribution, predictions.conll and metrics.json."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from eatlab.data.bio import tags_to_spans
from eatlab.data.conll import write_conll
from eatlab.data.languages import Language
from eatlab.eat.artifacts import JsonlArtifact
from eatlab.eat.attribution import attribute_sentence, summarize
from eatlab.eat.stages import SentenceResult
from eatlab.eval.scores import score
from eatlab.rundir import ATTRIBUTION, artifact_name


def evaluate_results(
    results: list[SentenceResult], language: Language | str, run_dir: Path, seed: int = 0
) -> dict:
    """Scores and failure attribution of all sentences; writes predictions.conll and attribution.jsonl.

    `language`: the run's `Language` (its composed node); a bare code is looked up in the shipped table."""
    run_dir = Path(run_dir)
    sentences = [r.sentence for r in results]
    preds = [r.pred_tags for r in results]
    write_conll(run_dir / "predictions.conll", sentences, preds)
    char_tok = language.char_tokenized if isinstance(language, Language) else None
    language = getattr(language, "code", language)
    scores = score(
        [s.tags for s in sentences], preds, [s.tokens for s in sentences], language, seed=seed,
        char_tokenized=char_tok,
    )  # fmt: skip
    gold_all, pred_all, dropped = [], [], Counter()
    examples = JsonlArtifact(run_dir / artifact_name(ATTRIBUTION))
    records = []
    for r in results:
        gold = tags_to_spans(r.sentence.tags, "conlleval")
        pred = tags_to_spans(r.pred_tags, "conlleval")
        g_cls, p_cls = attribute_sentence(gold, pred, r.english, r.entities, r.n_unrecovered)
        gold_all += g_cls
        pred_all += p_cls
        dropped.update(a["reason"] for a in r.alignments if a["span"] is None)
        toks = r.sentence.tokens
        joiner = "" if r.sentence.char_tokenized else " "
        records.append(
            {
                "sentence_id": r.sentence.id,
                "text": r.sentence.text,
                "english": r.english,
                "english_entities": [list(e) for e in r.entities],
                "gold": [[joiner.join(toks[s.start : s.end]), s.type, c] for s, c in zip(gold, g_cls)],
                "predicted": [[joiner.join(toks[s.start : s.end]), s.type, c] for s, c in zip(pred, p_cls)],
                "dropped": [
                    [a["phrase"], a["answer"], a["reason"]] for a in r.alignments if a["span"] is None
                ],
            }
        )
    examples.write(records)
    failures = summarize(gold_all, pred_all)
    failures["dropped_entities"] = dict(sorted(dropped.items()))
    return {
        "scores": scores,
        "failures": failures,
        "reference_recovery": reference_recovery_scores(results, language, char_tok),
    }


def reference_recovery_scores(
    results: list[SentenceResult], language: str, char_tokenized: bool | None = None
) -> dict:
    """The same backward answers snapped onto the sentences by the reference release's span recovery.

    Puts our span recovery and the reference's side by side on identical LLM answers (METHOD.md, step 4).
    """
    from eatlab.eat.reference_recovery import reference_recover_sentence

    preds = []
    for r in results:
        answers = [(a["answer"], a["type"]) for a in r.alignments if a.get("answer") is not None]
        preds.append(reference_recover_sentence(answers, r.sentence).tags(len(r.sentence.tokens)))
    s = score(
        [r.sentence.tags for r in results], preds, [r.sentence.tokens for r in results], language, n_boot=200,
        char_tokenized=char_tokenized,
    )  # fmt: skip
    keys = (
        "entity_precision",
        "entity_recall",
        "entity_f1",
        "reference_token_micro_f1",
        "reference_token_macro_f1",
        "reference_token_weighted_f1",
        "n_pred_entities",
    )
    return {k: s[k] for k in keys if k in s}
