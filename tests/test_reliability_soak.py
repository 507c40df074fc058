"""Soak: a sweep of 20 jobs sharing one response cache, stopped again and again, ends as if it never was.

The sweep (`eatlab -m prompt_rounds=r1,...,r5 data.limit=1,...,4`, 20 jobs on zh, the HTTP backend against the
oracle server on 127.0.0.1) is stopped at seeded random points: after a random number of answers, a random few
milliseconds later (in the middle of a cache write, an artifact rename, Lightning's loop, wherever that lands),
by SIGKILL or by SIGTERM (which must end it with exit 143). Beside it, a second process writes to the same cache
file and is SIGKILLed at random points too. The same command is then run again, until a run ends by itself. An
uninterrupted sweep with its own cache and server runs alongside, as the reference. Checked:
- every job of the last sweep is `ok` and its predictions.conll is byte for byte the uninterrupted sweep's;
- no answer was asked twice after it was stored: the server checks the cache at every request (a request whose
  messages are already stored is a re-ask); only answers that were in flight when a kill came may be asked again;
- the cache holds each distinct request once and passes `eatlab-cache check`.
About 2 minutes on 2 idle cores (7 on a machine loaded 4 times over).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eatlab.data.loader import select_sentences
from eatlab.testing.fault_server import FaultServer, OracleModel

EATLAB = Path(sys.executable).with_name("eatlab")
SEED = 25
KILLS = 3
SWEEP = ["-m", "prompt_rounds=r1,r2,r3,r4,r5", "data.limit=1,2,3,4", "language=zh", "extractor=llm",
         "backend=openai", "backend.concurrency=1", "backend.max_retries=0", "eval.batch_size=2",
         "tracking=none"]  # fmt: skip
WRITER = """
import sys
from eatlab.testing.cache_stress import hammer
hammer(sys.argv[1], worker=int(sys.argv[2]), n_batches=100000)
"""


def stored_messages(db: Path) -> set[str]:
    """The messages (canonical JSON) of every answer in the cache from eatlab's HTTP backend."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return {m for (m,) in conn.execute("SELECT messages FROM responses WHERE engine = 'openai'")}
    except sqlite3.OperationalError:  # not created yet
        return set()


def canonical(messages: list[dict]) -> str:
    from eatlab.llm.cache import normalize_messages
    from eatlab.utils.io import canonical_json

    return canonical_json(normalize_messages(messages))


class Watch:
    """Asks the cache at each request whether its answer is stored already (via the server's request hook)."""

    def __init__(self, db: Path):
        self.db, self.reasked = db, []

    def __call__(self, info) -> bool:
        if canonical(info.messages) in stored_messages(self.db):
            self.reasked.append((info.index, info.stage, info.final, info.attempt, info.params))
        return False  # never hold a request


def sweep(tmp_path: Path, out: str, port: int, db: Path, **popen) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [str(EATLAB), *SWEEP, f"backend.base_url=http://127.0.0.1:{port}/v1", f"cache.path={db}",
           f"paths.output_dir={tmp_path / out}"]  # fmt: skip
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, **popen)  # fmt: skip


def last_sweep(root: Path) -> Path:
    return max((root / "multiruns" / "eat").iterdir(), key=lambda p: p.stat().st_mtime)


def predictions(sweep_dir: Path) -> dict[int, bytes]:
    from eatlab.rundir import RunDir
    from eatlab.sweep.summary import find_job_dirs

    out = {}
    for rd in find_job_dirs(sweep_dir):
        assert isinstance(rd, RunDir) and (rd.path / "metrics.json").is_file(), rd.path
        out[rd.job_num] = (rd.path / "predictions.conll").read_bytes()
    return out


@pytest.mark.slow
def test_a_sweep_killed_at_random_points_ends_as_if_it_never_was(tmp_path):
    t_start = time.monotonic()
    rng = random.Random(SEED)
    oracle = OracleModel.from_sentences(select_sentences("zh", "test", limit=4).sentences)
    db = tmp_path / "soak.sqlite"
    watch = Watch(db)
    stops = []
    with FaultServer(oracle) as ref_server, FaultServer(oracle, block_when=watch, block_nth=10**9) as server:
        # the uninterrupted sweep, its own cache and server, alongside
        ref = sweep(tmp_path, "ref", ref_server.port, tmp_path / "ref.sqlite")
        # the same sweep, stopped at random points, with a second writer on its cache killed too
        for attempt in range(KILLS + 1):
            answered_before = sum(r.answered for r in server.requests)
            left = 90 - len(stored_messages(db))  # of about 90 answers (94 as it happens)
            stop_after = rng.randint(1, max(1, left // 2)) if attempt < KILLS else None
            how = rng.choice([signal.SIGKILL, signal.SIGTERM])
            writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(attempt)])
            writer_kill_at = time.monotonic() + rng.uniform(0.5, 4.0)
            proc = sweep(tmp_path, "soak", server.port, db)
            while proc.poll() is None:
                answered = sum(r.answered for r in server.requests) - answered_before
                if stop_after is not None and answered >= stop_after:
                    time.sleep(rng.uniform(0, 0.05))
                    proc.send_signal(how)
                    stops.append((signal.Signals(how).name, answered))
                    stop_after = None
                if writer.poll() is None and time.monotonic() >= writer_kill_at:
                    writer.send_signal(signal.SIGKILL)
                time.sleep(0.01)
            writer.kill()
            writer.wait()
            _, err = proc.communicate()
            if proc.returncode == 128 + signal.SIGTERM:  # a stop, never a clean exit, and said in one line
                assert [ln for ln in err.splitlines() if ln.startswith("error: stopped")] == [
                    "error: stopped by SIGTERM (exit status 143); every answer received so far is in the "
                    "response cache: re-run the same command to resume"
                ], err[-3000:]
            elif proc.returncode != -signal.SIGKILL:
                break  # ended by itself
        _, ref_err = ref.communicate(timeout=600)
    assert ref.returncode == 0, ref_err[-3000:]
    reference = predictions(last_sweep(tmp_path / "ref"))
    total = len(ref_server.requests)
    assert len(reference) == 20 and total == len({r.body_sha for r in ref_server.requests}) > 20
    assert proc.returncode == 0, err[-3000:]
    assert len(stops) == KILLS, stops

    # every job's predictions are the uninterrupted sweep's
    final = last_sweep(tmp_path / "soak")
    assert predictions(final) == reference
    summary = json.loads((final / "sweep_summary.json").read_text())
    assert (summary["n_jobs"], summary["n_ok"]) == (20, 20)

    # no stored answer was asked again; each distinct request is stored once
    answered = [r for r in server.requests if r.answered]
    assert watch.reasked == [], watch.reasked
    assert len(stored_messages(db)) == len({r.body_sha for r in answered}) == total
    lost_in_flight = len(answered) - total  # answered, then killed before the answer was stored
    assert 0 <= lost_in_flight <= len(stops)
    check = subprocess.run([str(EATLAB.with_name("eatlab-cache")), "check", "--cache", str(db)],
                           capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    seconds = time.monotonic() - t_start
    print(f"\nsoak: 20 jobs, {total} distinct requests; stopped by {stops} (signal, answers), {lost_in_flight} "
          f"answers lost in flight and asked again, 0 stored answers asked again; {seconds:.0f} s")  # fmt: skip
