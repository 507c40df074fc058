"""SIGTERM and SIGINT stop a job at once, as a failure that names the signal (issue 25 item 2).

What SLURM pre-emption, `timeout` and Ctrl-C send. Before, `eatlab` ignored SIGTERM until its evaluation batch
(256 sentences of model calls) ended and then exited 0; SIGINT became Lightning's `sys.exit(1)` without a word;
`eatlab-finetune` exited 0 with an empty error.json. Now (eatlab.utils.signals): exit 143 / 130 within 10 s, one
`error: stopped by SIG...` line, error.json naming the signal, and every answer received so far stays in the
cache, so the same command resumes without asking any of them again.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eatlab.utils import signals

REPO = Path(__file__).resolve().parents[1]
EATLAB = Path(sys.executable).with_name("eatlab")
MODELS_DIR = os.environ.get("EATLAB_TEST_MODELS", str(REPO / "outputs" / "test-models"))


@pytest.fixture
def handlers():
    """eatlab's handlers in this (main) thread, the previous ones and a clean state restored afterwards."""
    before = {s: signal.getsignal(s) for s in signals.HANDLED}
    signals.reset()
    signals.install()
    yield
    signals.reset()
    for s, h in before.items():
        signal.signal(s, h)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_raises_stopped_at_once_and_deferred_blocks_finish_first(handlers, sig, code):
    with pytest.raises(signals.Stopped) as info:
        os.kill(os.getpid(), sig)
        time.sleep(5)  # never reached: the handler raises in the main thread
    stop = info.value
    assert (stop.exit_code, stop.signal_name) == (code, signal.Signals(sig).name)
    assert str(stop).startswith(f"stopped by {stop.signal_name} (exit status {code})")
    assert not isinstance(stop, Exception)  # no `except Exception` of a backend or a retry loop swallows it
    with pytest.raises(signals.Stopped):
        signals.check()  # and every later safe point (the LLM client's, before each model call) says so too

    signals.reset()
    steps = []
    with pytest.raises(signals.Stopped), signals.deferred():
        os.kill(os.getpid(), sig)
        steps.append("the block went on")  # e.g. an optimizer step ends before the stop
    assert steps == ["the block went on"]


@pytest.mark.slow  # imports Lightning
def test_lightnings_ways_out_after_a_signal_are_a_stop():
    """Lightning turns what it sees into SIGTERMException (a SystemExit) or sys.exit(1): still a stop."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    assert signals.stop_of(ValueError("x")) is None and signals.stop_of(SystemExit(0)) is None
    assert signals.stop_of(SIGTERMException()).exit_code == 143
    assert signals.stop_of(KeyboardInterrupt()).exit_code == 130


def _rows(db: Path) -> int:
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    except sqlite3.Error:
        return 0


def _stop_mid_run(cmd: list[str], sig: int, ready, cwd: Path, timeout: float = 300) -> tuple[int, str, float]:
    """Start `cmd`, send `sig` once `ready()`, return (exit status, stderr, seconds from the signal to exit)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"ended before the signal: {proc.returncode}: {proc.stderr.read()[-3000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("never got ready for the signal")
        time.sleep(0.05)
    proc.send_signal(sig)
    t_signal = time.monotonic()
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err, time.monotonic() - t_signal


def assert_stopped(rc: int, err: str, seconds: float, run_dir: Path, sig: int) -> None:
    name = signal.Signals(sig).name
    assert rc == 128 + sig, err[-3000:]
    assert seconds < 10, seconds
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert lines == [f"error: stopped by {name} (exit status {128 + sig}); every answer received so far is in "
                     f"the response cache: re-run the same command to resume"], err[-3000:]  # fmt: skip
    assert "Traceback" not in err
    error = json.loads((run_dir / "error.json").read_text())
    assert (error["status"], error["error_type"], error["signal"], error["exit_code"]) == (
        "failed", "Stopped", name, 128 + sig
    )  # fmt: skip
    assert error["message"].startswith(f"stopped by {name}") and error["traceback"] is None


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_eatlab_stops_between_model_calls_and_resumes_from_the_cache(tmp_path, sig):
    """8 sentences in one evaluation batch; the signal comes once the first answers are cached, long before
    the batch could end. The re-run asks the model only for what was not stored, and takes the rest from the
    cache."""
    from eatlab.llm.tiny import ensure_tiny_model

    ensure_tiny_model(Path(MODELS_DIR) / "tiny-qwen2")
    db, run_dir = tmp_path / "cache.sqlite", tmp_path / "run"
    cmd = [str(EATLAB), "data.limit=8", "tracking=none", "generation.max_new_tokens=8", f"cache.path={db}",
           f"paths.output_dir={tmp_path / 'out'}", f"paths.models_dir={MODELS_DIR}", f"hydra.run.dir={run_dir}"]  # fmt: skip
    rc, err, seconds = _stop_mid_run(cmd, sig, lambda: _rows(db) > 0, tmp_path)
    assert_stopped(rc, err, seconds, run_dir, sig)
    assert not (run_dir / "metrics.json").exists()
    stored = _rows(db)
    assert stored > 0
    print(f"\n{signal.Signals(sig).name}: exit {rc} {seconds:.2f} s after the signal, {stored} answers kept")

    rerun = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert not (run_dir / "error.json").exists()
    assert m["llm_cache_hits"] >= stored  # every stored answer came from the cache ...
    assert m["llm_calls"] == _rows(db) - stored  # ... and the model was asked only for new ones


@pytest.mark.slow
def test_a_sweep_stops_as_a_whole(tmp_path):
    """SIGTERM during job 0 of `eatlab -m`: the sweep ends (no job 1), exit 143, job 0's error.json names the
    signal and the summary (written on the way out) lists job 0 as failed."""
    from eatlab.llm.tiny import ensure_tiny_model

    ensure_tiny_model(Path(MODELS_DIR) / "tiny-qwen2")
    db, out = tmp_path / "cache.sqlite", tmp_path / "out"
    cmd = [str(EATLAB), "-m", "language=zh,ja", "data.limit=8", "tracking=none", "generation.max_new_tokens=8",
           f"cache.path={db}", f"paths.output_dir={out}", f"paths.models_dir={MODELS_DIR}"]  # fmt: skip
    rc, err, seconds = _stop_mid_run(cmd, signal.SIGTERM, lambda: _rows(db) > 0, tmp_path)
    (sweep,) = (out / "multiruns" / "eat").iterdir()
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 1 and jobs[0].startswith("0_") and "language=zh" in jobs[0], jobs
    assert_stopped(rc, err, seconds, sweep / jobs[0], signal.SIGTERM)
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert (summary["n_jobs"], summary["n_failed"]) == (1, 1)
    assert summary["jobs"][0]["error"].startswith("stopped by SIGTERM")


@pytest.mark.slow
def test_finetune_stops_with_the_signal_named(shared_dir, tmp_path, monkeypatch):
    """eatlab-finetune (the tiny QLoRA run of test_finetune_qlora.py) gets SIGTERM after 2 optimizer steps:
    exit 143 within 10 s, one line, error.json naming the signal (the resume checkpoint it leaves is tested
    there)."""
    from test_finetune_qlora import PROBE, _finetune_command

    (tmp_path / "eatlab_test_probe.py").write_text(PROBE, encoding="utf-8")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    )
    probe = tmp_path / "steps.jsonl"
    ready = lambda: probe.is_file() and len(probe.read_text().splitlines()) >= 2  # noqa: E731
    rc, err, seconds = _stop_mid_run(_finetune_command(tmp_path, shared_dir, "run", probe), signal.SIGTERM, ready,
                                     tmp_path)  # fmt: skip
    assert_stopped(rc, err, seconds, tmp_path / "run", signal.SIGTERM)
    assert not (tmp_path / "run" / "finetune_metrics.json").exists()
