"""Data-parallel evaluation equals the one-process run: the real `eatlab` command with 2 CPU processes (gloo)
against 1 process, on 7 zh sentences (an odd count, so Lightning's padding sampler would repeat one)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eatlab.llm.cache import ResponseCache

REPO = Path(__file__).resolve().parents[1]
STAGES = ("forward", "ner", "backward", "attribution")


def _models_dir() -> Path:
    from eatlab.llm.tiny import ensure_tiny_model

    path = Path(os.environ.get("EATLAB_TEST_MODELS", str(REPO / "outputs" / "test-models")))
    ensure_tiny_model(path / "tiny-qwen2")
    return path


def _eatlab(tmp: Path, name: str, *overrides: str) -> Path:
    """One run with its own run dir and a fresh cache, so that llm_calls count every request."""
    run_dir = tmp / name
    exe = Path(sys.executable).with_name("eatlab")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from eatlab.cli.run import main; main()"]
    cmd += [
        "model=tiny",
        "language=zh",
        "data.limit=7",
        "extractor=spacy",
        "tracking=none",
        "eval.accelerator=cpu",
        f"paths.output_dir={tmp / 'outputs'}",
        f"paths.models_dir={_models_dir()}",
        f"cache.path={tmp / name}-cache.sqlite",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE")}
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "metrics.json").is_file()
    return run_dir


def _close(a, b, where: str = "") -> None:
    """Equal, floats up to batch-composition noise (the ranks' batches pad differently: entropies move ~1e-6)."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _close(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _metrics(run_dir: Path) -> dict:
    """metrics.json less what is no result: wall times, and the commit (one may land between the runs)."""
    m = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    m["run"].pop("git_commit")
    m.pop("seconds")
    m["stages"] = {k: {c: v for c, v in d.items() if c != "seconds"} for k, d in m["stages"].items()}
    return m


def _records(run_dir: Path, stage: str) -> list[dict]:
    lines = (run_dir / "artifacts" / f"{stage}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.slow
def test_ddp_two_processes_equal_one(tmp_path):
    one = _eatlab(tmp_path, "one", "eval.devices=1")
    two = _eatlab(tmp_path, "two", "eval.devices=2", "eval.strategy=ddp")

    assert (two / "predictions.conll").read_bytes() == (one / "predictions.conll").read_bytes()
    assert not list((two / "artifacts").glob("*.partial"))  # every rank's file merged, none left over
    assert sorted(p.name for p in (two / "artifacts").iterdir()) == [f"{s}.jsonl" for s in sorted(STAGES)]
    for stage in STAGES:
        a, b = _records(one, stage), _records(two, stage)
        assert len(a) == len(b), stage
        _close(a, b, stage)  # same records, in sentence order

    m1, m2 = _metrics(one), _metrics(two)
    assert m1["n_sentences"] == 7 and m1["llm_calls"] > 0 and m1["n_gold_entities"] > 0
    for key in ("n_sentences", "n_gold_entities", "n_pred_entities", "llm_calls", "llm_cache_hits", "tokens"):
        assert m2[key] == m1[key], key
    assert m2["stages"] == m1["stages"]  # per-stage calls, hits, errors and tokens (seconds dropped)
    _close(m1, m2)  # scores, counts, answer faults, failures, data provenance

    # both ranks wrote the one SQLite cache at once: every answer is there, once
    for name in ("one", "two"):
        with ResponseCache(tmp_path / f"{name}-cache.sqlite", mode="readonly") as cache:
            assert len(cache) == m1["llm_calls"], name
    seconds = json.loads((two / "metrics.json").read_text(encoding="utf-8"))["seconds"]
    assert {"forward", "ner", "backward", "total"} <= seconds.keys()  # stage times of both ranks, summed


def test_rank_files_merge_in_sentence_order(tmp_path):
    """Each rank appends to its own partial file; finalize merges them in selection order, once."""
    from eatlab.eat.artifacts import JsonlArtifact, finalize_artifacts, rank_partial

    art = JsonlArtifact(tmp_path / "artifacts" / "backward.jsonl")
    stale = rank_partial(art.path, 3)
    stale.write_text('{"sentence_id": "old"}\n', encoding="utf-8")
    art = JsonlArtifact(art.path)  # a rerun in the same run dir: an earlier run's rank files go
    assert not stale.exists()
    rank_partial(art.path, 0).write_text('{"sentence_id": "s0", "n": 1}\n{"sentence_id": "s2"}\n')
    rank_partial(art.path, 1).write_text(
        '{"sentence_id": "s1", "t": "a\u2028b"}\n{"sentence_id": "s0", "n": 2}\n'
    )
    assert finalize_artifacts(tmp_path, order=["s0", "s1", "s2"]) == [art.path]
    got = [json.loads(line) for line in art.path.read_text(encoding="utf-8").split("\n") if line]
    assert [(r["sentence_id"], r.get("n")) for r in got] == [("s0", 1), ("s0", 2), ("s1", None), ("s2", None)]
    assert not list(art.path.parent.glob("*.partial"))


def test_gathered_parts_are_ordered_deduplicated_and_summed():
    from collections import Counter
    from types import SimpleNamespace

    from eatlab.eat.lightning import _Part, merge_parts
    from eatlab.llm.client import StageCounters

    def part(indices, calls, faults):
        results = [SimpleNamespace(sentence=SimpleNamespace(id=f"s{i}")) for i in indices]
        return _Part(
            indices=indices,
            results=results,
            client_counters={"forward": StageCounters(llm_calls=calls, prompt_tokens=10 * calls)},
            counts=Counter({"failed_forward": 0, "empty_answers": faults}),
            answer_faults={"forward": Counter({"empty_answers": faults})} if faults else {},
            seconds=Counter({"forward": 1.5}),
        )

    g = merge_parts([part([0, 2, 4], 3, 1), part([1, 3, 0], 2, 2)])  # index 0 twice: a padded repeat
    assert g.sentence_ids == ["s0", "s1", "s2", "s3", "s4"]
    assert (
        g.client_counters["total"]["llm_calls"] == 5 and g.client_counters["forward"]["prompt_tokens"] == 50
    )
    assert g.counts == Counter({"failed_forward": 0, "empty_answers": 3}) and "failed_forward" in g.counts
    assert g.answer_faults == {"forward": Counter({"empty_answers": 3})} and g.seconds["forward"] == 3.0
