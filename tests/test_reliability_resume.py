"""SIGKILL a real `eatlab` run at several points, re-run the same command, get the uninterrupted run's result.

Two setups, both real subprocesses killed with SIGKILL:
- the HTTP backend against the oracle server on 127.0.0.1, killed at exact points: mid-backward of the second
  batch (the server holds a request), then while the artifacts get their final names (an audit hook kills the
  process at a rename); then a run to the end. The server's log proves that no answered request was ever sent
  again.
- the tiny transformers model (model=tiny), killed mid-forward once the first round's answers are in the cache.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_ddp import _close

from eatlab.cli.run import run_eat
from eatlab.data.loader import select_sentences
from eatlab.testing.fault_server import FaultServer, OracleModel

EATLAB = Path(sys.executable).with_name("eatlab")
REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = os.environ.get("EATLAB_TEST_MODELS", str(REPO / "outputs" / "test-models"))
SCORE_KEYS = ("entity_precision", "entity_recall", "entity_f1", "per_type", "reference_token_micro_f1",
              "reference_token_macro_f1", "reference_token_weighted_f1", "n_sentences", "failures", "counts")  # fmt: skip
ARTIFACTS = ("forward", "ner", "backward", "attribution")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cache_rows(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path) as conn:
            return conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    except sqlite3.OperationalError:  # the child is creating it
        return 0


SECRET = "sk-" + secrets.token_hex(20)  # made at run time: it is in no file, git.diff included


def child_env(tmp: Path, killpoint: str | None = None) -> dict:
    # one math thread: on a loaded machine, torch's thread pool oversubscribes the cores (4x slower here)
    env = dict(os.environ, OPENAI_API_KEY=SECRET, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if killpoint:
        hook = tmp / "killhook"
        hook.mkdir(exist_ok=True)
        (hook / "sitecustomize.py").write_text(
            "from eatlab.testing.killpoint import install_from_env\ninstall_from_env()\n"
        )
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(hook), env.get("PYTHONPATH")) if p)
        env["EATLAB_KILLPOINT"] = killpoint
    return env


def run_cli(args: list[str], log: Path, env: dict, kill_when=None, timeout: float = 300) -> int:
    """Run `eatlab ARGS`; SIGKILL it as soon as `kill_when()` is true. Returns the exit status (-9: killed)."""
    with log.open("w") as fh:
        proc = subprocess.Popen([str(EATLAB), *args], stdout=fh, stderr=subprocess.STDOUT, env=env)
        t0 = time.monotonic()
        while proc.poll() is None:
            if kill_when is not None and kill_when():
                proc.send_signal(signal.SIGKILL)
                break
            if time.monotonic() - t0 > timeout:
                proc.kill()
                pytest.fail(f"eatlab {' '.join(args)} ran past {timeout}s; log: {log.read_text()[-3000:]}")
            time.sleep(0.02)
        rc = proc.wait()
    return rc


def assert_killed(rc: int, log: Path, run_dir: Path, final: tuple[str, ...] = ()) -> None:
    """Killed, no metrics.json; of the artifacts only `final` ones have their final names (atomic artifacts)."""
    assert rc == -signal.SIGKILL, f"expected a SIGKILL, got exit {rc}: {log.read_text()[-3000:]}"
    assert not (run_dir / "metrics.json").exists()
    assert {a for a in ARTIFACTS if (run_dir / "artifacts" / f"{a}.jsonl").exists()} == set(final)


def assert_same_result(run_dir: Path, ref_dir: Path, ref: dict) -> dict:
    m = json.loads((run_dir / "metrics.json").read_text())
    for key in SCORE_KEYS:
        assert m[key] == ref[key], key
    assert (run_dir / "predictions.conll").read_bytes() == (ref_dir / "predictions.conll").read_bytes()
    for a in ARTIFACTS:
        got, want = (d / f"artifacts/{a}.jsonl" for d in (run_dir, ref_dir))
        # the same records; entropies only up to float noise (a resumed run computes some prompts from other
        # stored prefixes than the uninterrupted one: the texts are identical, entropies move ~1e-6)
        lines = [p.read_text(encoding="utf-8").splitlines() for p in (got, want)]
        assert len(lines[0]) == len(lines[1]), a
        for x, y in zip(*lines, strict=True):
            _close(json.loads(x), json.loads(y), a)
        assert not (run_dir / f"artifacts/{a}.jsonl.partial").exists()
    return m


@pytest.mark.slow
def test_http_run_killed_mid_backward_and_while_finalizing_resumes_exactly(compose, tmp_path):
    sentences = select_sentences("zh", "test", limit=8).sentences
    oracle = OracleModel.from_sentences(sentences)
    second_batch = {s.text for s in sentences[4:]}
    port = free_port()
    cache, run_dir = tmp_path / "cache.sqlite", tmp_path / "run"
    overrides = ["language=zh", "data.limit=8", "eval.batch_size=4", "extractor=llm", "backend=openai",
                 f"backend.base_url=http://127.0.0.1:{port}/v1", "backend.concurrency=1", "backend.max_retries=1",
                 "backend.backoff_s=0.01"]  # fmt: skip

    # the uninterrupted run (own cache): T model calls
    with FaultServer(oracle, port=port):
        ref = run_eat(
            compose([*overrides, f"cache.path={tmp_path / 'ref.sqlite'}"], run_dir=tmp_path / "ref"),
            tmp_path / "ref",
        )
    total = ref["llm_calls"]
    assert ref["llm_errors"] == 0 and ref["entity_f1"] > 0.9 and ref["stages"]["backward"]["llm_calls"] >= 6

    # the same command every time (same run dir): kill, kill, kill, finish
    args = [*overrides, f"cache.path={cache}", "tracking=none", f"paths.output_dir={tmp_path / 'out'}",
            f"hydra.run.dir={run_dir}"]  # fmt: skip
    answered: list = []  # every request answered by the server, over all attempts

    def attempt(name, env, **server_kw):
        with FaultServer(oracle, port=port, **server_kw) as srv:
            rc = run_cli(
                args, tmp_path / f"{name}.log", env, kill_when=srv.blocked.is_set if server_kw else None
            )
        answered.extend(r for r in srv.requests if r.answered)
        return rc, [r for r in srv.requests if r.answered]

    # 1. mid-backward of the second batch (the first batch's artifacts are written, partially)
    rc, got = attempt(
        "k1", child_env(tmp_path), block_when=lambda r: r.stage == "backward" and r.sentence in second_batch,
        block_nth=2,
    )  # fmt: skip
    assert_killed(rc, tmp_path / "k1.log", run_dir)
    assert 0 < len(got) == cache_rows(cache) < total  # every answer received was stored at once
    print(
        f"\nHTTP resume: T={total} calls; killed mid-backward after {len(got)} answers, all {len(got)} cached"
    )
    partial = (run_dir / "artifacts/backward.jsonl.partial").read_text().splitlines()
    assert partial and all(
        json.loads(line)["sentence_id"] in {s.id for s in sentences[:4]} for line in partial
    )

    # 2. after the last model call, while the artifacts are being finalized
    before = cache_rows(cache)
    rc, got = attempt("k2", child_env(tmp_path, killpoint="rename:forward.jsonl.partial"))
    # killed at the third rename: artifacts are renamed in name order
    assert_killed(rc, tmp_path / "k2.log", run_dir, final=("attribution", "backward"))
    assert len(got) == total - before  # the resumed run asked exactly what was missing
    print(f"HTTP resume: run 2 asked {len(got)} = T - {before}, killed while renaming artifacts")
    assert cache_rows(cache) == total
    assert all((run_dir / f"artifacts/{a}.jsonl.partial").exists() for a in ("forward", "ner"))
    check = subprocess.run([str(EATLAB.with_name("eatlab-cache")), "check", "--cache", str(cache), "--run-dir",
                            str(run_dir)], capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 1 and "INCOMPLETE" in check.stdout and f"ok, {total} answers" in check.stdout

    # 3. to the end
    rc, got = attempt("k3", child_env(tmp_path))
    assert rc == 0, (tmp_path / "k3.log").read_text()[-3000:]
    assert got == []
    m = assert_same_result(run_dir, tmp_path / "ref", ref)
    assert m["llm_calls"] == total - cache_rows(cache) == 0 and m["llm_cache_hits"] == total
    print(f"HTTP resume: run 3 made 0 calls, {total} cache hits; entity F1 {m['entity_f1']:.4f} = reference")
    # no request that had been answered was ever sent again, and every one was answered once
    bodies = [r.body_sha for r in answered]
    assert len(bodies) == len(set(bodies)) == total
    # the API key was sent, and written nowhere: run dir (Hydra's log included), outputs, cache, console logs
    assert {r.authorization for r in answered} == {f"Bearer {SECRET}"}
    assert list(run_dir.glob("*.log")) and (run_dir / ".hydra/overrides.yaml").exists()
    for path in tmp_path.rglob("*"):
        if path.is_file() and "ref" not in path.name:
            assert SECRET.encode() not in path.read_bytes(), path


@pytest.fixture
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_tiny_model_run_killed_mid_forward_resumes_exactly(compose, tmp_path, one_thread):
    cache, run_dir = tmp_path / "cache.sqlite", tmp_path / "run"
    overrides = ["language=zh", "data.limit=8", "prompts.max_new_tokens=[8,8,8]"]
    ref = run_eat(
        compose([*overrides, f"cache.path={tmp_path / 'ref.sqlite'}"], run_dir=tmp_path / "ref"),
        tmp_path / "ref",
    )
    total = ref["llm_calls"]
    args = [*overrides, f"cache.path={cache}", "tracking=none", f"paths.output_dir={tmp_path / 'out'}",
            f"paths.models_dir={MODELS_DIR}", f"hydra.run.dir={run_dir}"]  # fmt: skip
    # killed once the first forward round (8 answers) is in the cache: during the second round
    rc = run_cli(args, tmp_path / "k1.log", child_env(tmp_path), kill_when=lambda: cache_rows(cache) >= 8)
    assert_killed(rc, tmp_path / "k1.log", run_dir)
    cached = cache_rows(cache)
    assert 8 <= cached < total
    rc = run_cli(args, tmp_path / "k2.log", child_env(tmp_path))
    assert rc == 0, (tmp_path / "k2.log").read_text()[-3000:]
    m = assert_same_result(run_dir, tmp_path / "ref", ref)
    assert m["llm_calls"] == total - cached and m["llm_cache_hits"] == cached
    print(
        f"\ntiny resume: T={total} calls; killed with {cached} cached; resumed run made {m['llm_calls']} calls"
    )
