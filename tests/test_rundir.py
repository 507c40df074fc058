"""eatlab.rundir: the run-dir reader (done, failed, running), one-line JSONL errors, and the one metrics schema
that the EAT run, the encoder baseline and the extractor evaluation all write."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from eatlab.errors import DataError
from eatlab.rundir import (
    ATTRIBUTION,
    DONE,
    ERROR,
    EXTRACTOR_METRICS,
    FAILED,
    FORWARD,
    METRICS,
    METRICS_SCHEMA_VERSION,
    REQUIRED_KEYS,
    RUNNING,
    Metrics,
    RunDir,
    build_metrics,
    flat_scalars,
    iter_run_dirs,
    read_json,
    read_jsonl,
)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _job(root: Path, name: str, overrides: list[str]) -> Path:
    d = root / name
    _write(d / ".hydra" / "overrides.yaml", "".join(f"- {o}\n" for o in overrides))
    return d


@pytest.fixture
def sweep(tmp_path) -> Path:
    """A sweep with a done, a failed and a running job, plus folders that are no run dirs."""
    done = _job(tmp_path, "0_language=zh", ["language=zh"])
    _write(done / METRICS, json.dumps({"schema_version": 1, "entity_f1": 0.5, "run": {"language": "zh"}}))
    _write(done / "provenance.json", json.dumps({"overrides": ["language=zh"], "git": {"commit": None}}))
    _write(done / "resolved_config.yaml", "language:\n  code: zh\nseed: 0\n")
    _write(done / "artifacts" / "forward.jsonl", '{"sentence_id": "zh-test-0", "english": "Paris"}\n\n')
    _write(done / "predictions.conll", "巴\tB-LOC\tB-LOC\n黎\tI-LOC\tO\n\n好\tO\tO\n")
    _write(done / "record.jsonl", '{"group": "old"}\n{"group": "eat-sweep"}\n')
    (done / "wandb" / "offline-run-20250101_000000-abc123").mkdir(parents=True)
    failed = _job(tmp_path, "1_language=ko", ["language=ko"])
    _write(failed / ERROR, json.dumps({"status": "failed", "error_type": "DataError", "message": "boom"}))
    running = _job(tmp_path, "2_language=ja", ["language=ja"])
    _write(running / "artifacts" / "forward.jsonl.partial", '{"sentence_id": "ja-test-0"}\n')
    # an override with `/` nests the job dir: its number comes from .hydra/hydra.yaml
    nested = _job(tmp_path / "10_model=org", "qwen", ["model=org/qwen"])
    _write(nested / ".hydra" / "hydra.yaml", "hydra:\n  job:\n    num: 3\n")
    _job(tmp_path / ".submitit" / "x", "0_language=zh", ["language=zh"])  # submitit's copies: no run dirs
    _write(tmp_path / "analysis" / METRICS, "{}")  # an analysis output folder: no run dir
    return tmp_path


def test_reader_tells_done_failed_and_running_apart(sweep):
    dirs = list(iter_run_dirs(sweep))
    assert [rd.name for rd in dirs] == [
        "0_language=zh",
        "1_language=ko",
        "2_language=ja",
        "10_model=org/qwen",
    ]
    assert [rd.status for rd in dirs] == [DONE, FAILED, RUNNING, RUNNING]
    assert [rd.status_label for rd in dirs] == ["ok", "failed", "incomplete", "incomplete"]
    assert [rd.job_num for rd in dirs] == [0, 1, 2, 3]
    done, failed, running, _ = dirs
    assert done.metrics["entity_f1"] == 0.5 and done.error is None
    assert done.provenance["overrides"] == ["language=zh"] and done.config["language"]["code"] == "zh"
    assert done.overrides == ["language=zh"]
    assert done.artifact(FORWARD) == [{"sentence_id": "zh-test-0", "english": "Paris"}]
    assert done.artifact(ATTRIBUTION) == []  # absent: nothing to read, not an error
    assert done.predictions() == [(["巴", "黎"], ["B-LOC", "I-LOC"], ["B-LOC", "O"]), (["好"], ["O"], ["O"])]
    assert done.last_record == {"group": "eat-sweep"} and done.wandb_run_id == "abc123"
    assert failed.error["message"] == "boom" and failed.metrics is None and failed.config is None
    assert running.metrics is None and running.error is None and running.artifact(FORWARD) == []
    assert running.last_record == {} and running.wandb_run_id is None
    # the analysis lists only dirs with a result; a single run dir is its own root
    assert [rd.name for rd in iter_run_dirs(sweep, markers=(METRICS, ERROR))] == [
        "0_language=zh",
        "1_language=ko",
    ]
    (only,) = iter_run_dirs(sweep / "0_language=zh")
    assert only.name == "0_language=zh" and only.status == DONE


def test_overrides_fall_back_to_provenance_and_bad_files_fail_in_one_line(tmp_path):
    rd = RunDir(tmp_path)
    _write(tmp_path / "provenance.json", json.dumps({"overrides": ["seed=1"]}))
    assert rd.overrides == ["seed=1"] and rd.status == RUNNING and rd.job_num is None
    _write(tmp_path / METRICS, '{"entity_f1": 0.5,')
    with pytest.raises(DataError) as err:
        _ = RunDir(tmp_path).metrics
    assert str(err.value).startswith(f"{tmp_path / METRICS}: not valid JSON") and "\n" not in str(err.value)
    _write(tmp_path / "resolved_config.yaml", "a: [1,\n")
    with pytest.raises(DataError, match=r"resolved_config.yaml: not valid YAML"):
        _ = RunDir(tmp_path).config
    with pytest.raises(DataError, match="not a directory"):
        list(iter_run_dirs(tmp_path / "nowhere"))
    assert read_json(tmp_path / "absent.json") is None


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    good = '{"sentence_id": "a"}\n'
    path = _write(tmp_path / "record.jsonl", good + "\n" + "{oops}\n" + good)
    with pytest.raises(DataError) as err:
        read_jsonl(path)
    assert str(err.value) == f"{path}:3: not valid JSON"
    # a run's artifact cut in the middle of its last line: says so, and how to keep the valid records
    run = tmp_path / "run"
    art = _write(run / "artifacts" / "forward.jsonl", good + good + '{"sentence_id": "c", "engl')
    with pytest.raises(DataError) as err:
        read_jsonl(art)
    msg = str(err.value)
    assert msg.startswith(
        f"{art}:3: truncated record (an interrupted write); `eatlab-cache repair --run-dir {run}`"
    )
    assert "\n" not in msg
    with pytest.raises(DataError, match=r"forward.jsonl:3: truncated record"):
        RunDir(run).artifact(FORWARD)
    # a complete last record without its newline is fine; blank lines are skipped
    assert read_jsonl(_write(tmp_path / "b.jsonl", good + "\n" + good.strip())) == [{"sentence_id": "a"}] * 2
    with pytest.raises(DataError, match=r"c.jsonl:2: expected a JSON object, got list"):
        read_jsonl(_write(tmp_path / "c.jsonl", good + "[1, 2]\n"))
    bad_utf8 = tmp_path / "d.jsonl"
    bad_utf8.write_bytes(good.encode() + b'{"x": "\xff"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: not UTF-8 text"):
        read_jsonl(bad_utf8)
    with pytest.raises(DataError, match="file not found"):
        read_jsonl(tmp_path / "missing.jsonl")
    assert read_jsonl(tmp_path / "missing.jsonl", missing_ok=True) == []


# ------------------------------------------------------------------------------------------------ schema
def test_build_metrics_folds_the_client_counters_into_cost_and_stages():
    counters = {
        "forward": {"llm_calls": 2, "llm_cache_hits": 1, "prompt_tokens": 30, "completion_tokens": 5},
        "total": {
            "llm_calls": 2,
            "llm_cache_hits": 1,
            "llm_errors": 0,
            "prompt_tokens": 30,
            "completion_tokens": 5,
        },
    }
    m = build_metrics(
        {"entity_f1": 0.25, "language": "zh"},
        run={"method": "eat"},
        counters=counters,
        stage_seconds={"forward": 1.234567, "total": 2.0},
        failures={"gold": {"found": 1}},
        counts={"n_skipped": 0},
        data={"n_selected": 4},
        reference_recovery={"entity_f1": 0.2},
    )
    assert list(m) == [
        "schema_version",
        "entity_f1",
        "language",
        "llm_calls",
        "llm_cache_hits",
        "llm_errors",
        "tokens",
        "seconds",
        "stages",
        "failures",
        "run",
        "data",
        "counts",
        "reference_recovery",
    ]
    assert m["schema_version"] == METRICS_SCHEMA_VERSION
    assert (m["llm_calls"], m["llm_cache_hits"], m["tokens"]) == (2, 1, {"prompt": 30, "completion": 5})
    assert m["seconds"] == {"forward": 1.2346, "total": 2.0}
    assert m["stages"]["forward"]["seconds"] == 1.2346 and m["stages"]["total"] == {"seconds": 2.0}
    assert flat_scalars(m)["stages/forward/llm_calls"] == 2 and "run/method" not in flat_scalars(m)
    with pytest.raises(ValueError, match="overwrite"):
        Metrics(scores={"llm_calls": 3}).to_json()
    with pytest.raises(ValueError, match="overwrite"):
        build_metrics({"entity_f1": 0.1}, run={}, entity_f1=0.2)


@pytest.fixture(scope="module")
def score_json_keys(tmp_path_factory) -> set[str]:
    """The keys of `eatlab-score --json`, through its own entry point."""
    import contextlib
    import io

    from eatlab.cli.score import run

    d = tmp_path_factory.mktemp("score")
    gold = _write(d / "gold.txt", "Paris\tB-LOC\nis\tO\n\nJohn\tB-PER\n")
    pred = _write(d / "pred.txt", "Paris\tB-LOC\tB-LOC\nis\tO\tO\n\nJohn\tB-PER\tO\n")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run([str(gold), str(pred), "--language", "en", "--json", "--n-boot", "20"])
    return set(json.loads(out.getvalue()))


def _check_schema(metrics: dict, score_keys: set[str]) -> None:
    assert metrics["schema_version"] == METRICS_SCHEMA_VERSION
    assert set(REQUIRED_KEYS) <= set(metrics), set(REQUIRED_KEYS) - set(metrics)
    assert score_keys <= set(metrics), score_keys - set(metrics)  # a superset of `eatlab-score --json`
    assert set(metrics["tokens"]) == {"prompt", "completion"} and isinstance(metrics["run"]["method"], str)


@pytest.mark.slow
def test_eat_run_writes_the_schema(compose, tmp_path, score_json_keys):
    from eatlab.cli.run import run_eat

    run_dir = tmp_path / "run"
    returned = run_eat(compose(["data.limit=2", "generation.max_new_tokens=4"]), run_dir)
    rd = RunDir(run_dir)
    assert rd.status == DONE and rd.metrics == json.loads(json.dumps(returned))
    _check_schema(rd.metrics, score_json_keys)
    assert rd.metrics["run"]["method"] == "eat" and rd.metrics["stages"]["forward"]["llm_calls"] >= 1
    assert [r["sentence_id"] for r in rd.artifact(FORWARD)] == ["zh-test-0", "zh-test-1"]


def test_encoder_baseline_writes_the_schema(tmp_path, score_json_keys):
    from eatlab.cli.baseline import language_metrics
    from eatlab.data.loader import select_sentences
    from eatlab.rundir import write_metrics

    sel = select_sentences("zh", "test", limit=3)
    encoded = [SimpleNamespace(n_truncated=0, n_empty=0) for _ in sel.sentences]
    run_info = {"method": "encoder_zero_shot", "model": "tiny", "seed": 0}
    m = language_metrics(
        sel.sentences, [s.tags for s in sel.sentences], encoded, "zh", 0, run_info, {"data": sel.provenance()}
    )
    write_metrics(tmp_path / "zh", m)
    rd = RunDir(tmp_path / "zh")
    assert rd.status == DONE and rd.metrics["entity_f1"] == 1.0 and rd.metrics["data"]["n_selected"] == 3
    _check_schema(rd.metrics, score_json_keys)


def test_extractor_evaluation_writes_the_schema(compose, tmp_path, score_json_keys):
    from eatlab.cli.extractor import evaluate_from_config

    returned = evaluate_from_config(compose(["extractor=spacy", "data.limit=3"]), tmp_path / "eval")
    saved = read_json(tmp_path / "eval" / EXTRACTOR_METRICS)
    assert saved == json.loads(json.dumps(returned))
    _check_schema(saved, score_json_keys)
    assert saved["run"]["method"] == "extractor_eval" and saved["extractor"]["name"] == "spacy"
    assert set(saved["seconds"]) == {"extraction"} and saved["counts"]["n_listed_entities"] >= 0
