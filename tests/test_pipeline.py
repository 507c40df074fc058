"""The EAT pipeline end to end with the tiny smoke model, and the replay of real transcripts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from eatlab.cli.run import run_eat
from eatlab.eat.attribution import GOLD_CLASSES

TRANSCRIPT_MODEL = "qwen2.5-coder-0.5b-instruct-q4km"
# replaying each language's 8 transcribed sentences: entity F1 and where each gold entity was lost (or found), in
# the order of GOLD_CLASSES: found, lost in translation, missed by NER, NER wrong type, misaligned backward
REPLAY = {
    "ar": (0.0, (0, 0, 6, 1, 1)),
    "hi": (0.125, (1, 1, 0, 4, 3)),
    "hy": (0.0, (0, 0, 6, 0, 2)),
    "ja": (0.0, (0, 3, 5, 2, 4)),
    "ka": (0.0, (0, 1, 3, 0, 4)),
    "ko": (0.0, (0, 2, 6, 1, 1)),
    "ru": (1 / 6, (1, 1, 3, 0, 4)),
    "zh": (0.0, (0, 1, 4, 1, 3)),
}


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.parametrize("lang", ["zh", "ko"])
def test_tiny_run_writes_artifacts_and_reruns_from_cache(compose, tmp_path, lang):
    cfg = compose([f"language={lang}", "data.limit=16"])
    m1 = run_eat(cfg, tmp_path / "run1")  # its wall time (target 60 s): `eatlab-bench --timings`
    run = tmp_path / "run1"
    for name in (
        "metrics.json",
        "predictions.conll",
        "provenance.json",
        "resolved_config.yaml",
        "artifacts/forward.jsonl",
        "artifacts/ner.jsonl",
        "artifacts/backward.jsonl",
        "artifacts/attribution.jsonl",
    ):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["schema_version"] == 1 and metrics["n_sentences"] == 16
    assert metrics["llm_calls"] > 0 and metrics["run"]["smoke_model"] is True
    for key in ("entity_f1", "reference_token_micro_f1", "entity_f1_ci95", "per_type", "failures", "stages"):
        assert key in metrics
    assert sum(metrics["failures"]["gold"].values()) == sum(
        v["support"] for v in metrics["per_type"].values()
    )
    fwd = _read_jsonl(run / "artifacts/forward.jsonl")
    assert [r["sentence_id"] for r in fwd] == [f"{lang}-test-{i}" for i in range(16)]
    assert all(r["messages_sha256"] and r["entropies"] for r in fwd if not r["skipped_llm"])
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["prompts"]["name"] == "eatlab" and len(prov["prompts"]["sha256"]) == 64
    assert prov["git"]["commit"] is None or len(prov["git"]["commit"]) == 40
    # the default extractor is spacy_wikiann; with no trained pipeline under this run's outputs it stood aside
    assert cfg.extractor.name == "spacy_wikiann" and metrics["run"]["extractor"] == "spacy"
    assert prov["extractor"]["fallback_from"]["name"] == "spacy_wikiann"
    # the same command again: everything from the cache, same scores
    m2 = run_eat(cfg, tmp_path / "run2")
    assert m2["llm_calls"] == 0 and m2["llm_cache_hits"] == m1["llm_calls"] + m1["llm_cache_hits"]
    for key in ("entity_f1", "reference_token_micro_f1", "reference_token_macro_f1"):
        assert m2[key] == m1[key]
    assert (tmp_path / "run1/predictions.conll").read_text() == (
        tmp_path / "run2/predictions.conll"
    ).read_text()


def test_reference_prompts_exist_only_for_three_rounds(compose, tmp_path):
    from eatlab.errors import ConfigError

    cfg = compose(["prompts=reference", "prompt_rounds=r5"])
    with pytest.raises(ConfigError, match="prompt_rounds.forward=5"):
        run_eat(cfg, tmp_path / "r")


def test_reference_prompt_set_reproduces_the_script(transcripts_dir):
    """The messages eatlab builds with prompts=reference are the transcripts' messages, turn for turn."""
    from eatlab.data.languages import get_language
    from eatlab.llm.prompts import PromptSet, fill
    from eatlab.paths import PROMPTS_DIR

    ps = PromptSet(PROMPTS_DIR / "reference.yaml", 3, 3)
    assert (
        ps.sha256
        == __import__("hashlib")
        .sha256((transcripts_dir.parent / "prompts/reference_eat_prompts.yaml").read_bytes())
        .hexdigest()
    )
    for rec in _read_jsonl(transcripts_dir / "ja.jsonl"):
        lang = get_language(rec["language"])
        if rec["kind"] == "forward":
            vals, direction = ps.values(lang.name, sentence=rec["text"]), ps.forward
        else:
            text = next(
                r["text"]
                for r in _read_jsonl(transcripts_dir / "ja.jsonl")
                if r["sentence_id"] == rec["sentence_id"] and r["kind"] == "forward"
            )
            vals, direction = ps.values(lang.name, sentence=text, phrase=rec["phrase"]), ps.backward
        conv = ps.start(direction, vals)
        assert conv == rec["messages"][:3]
        users = [m["content"] for m in rec["messages"][3:] if m["role"] == "user"]
        assert users == [fill(r.text, vals) for r in direction.rounds]


@pytest.mark.parametrize(
    "lang",
    [
        "ar",
        "zh",
        *(pytest.param(lang, marks=pytest.mark.slow) for lang in ("hi", "hy", "ja", "ka", "ko", "ru")),
    ],
)
def test_transcript_replay_makes_no_model_call(compose, tmp_path, transcripts_dir, lang):
    cache = tmp_path / "cache.sqlite"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "eatlab.cli.cache",
            "import",
            str(transcripts_dir / f"{lang}.jsonl"),
            "--model",
            TRANSCRIPT_MODEL,
            "--cache",
            str(cache),
        ],
        check=True,
        capture_output=True,
    )
    cfg = compose(
        ["experiment=replay_transcripts", f"language={lang}", f"cache.path={cache}", "data.limit=8"]
    )
    m = run_eat(cfg, tmp_path / "run")
    assert m["llm_calls"] == 0 and m["n_sentences"] == 8
    recs = _read_jsonl(transcripts_dir / f"{lang}.jsonl")
    n_backward = sum(r["kind"] == "backward" for r in recs)
    assert m["stages"]["backward"]["llm_cache_hits"] == 3 * n_backward
    fwd = {r["sentence_id"]: r for r in _read_jsonl(tmp_path / "run/artifacts/forward.jsonl")}
    for r in recs:
        if r["kind"] == "forward":
            assert fwd[r["sentence_id"]]["english"] == r["english"]
    f1, gold_failures = REPLAY[lang]
    assert m["entity_f1"] == pytest.approx(f1, abs=1e-6)
    assert m["failures"]["gold"] == dict(zip(GOLD_CLASSES, gold_failures))
