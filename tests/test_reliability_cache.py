"""The shared cache under concurrent processes, and damaged cache and artifact files: detected, reported, repaired."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys

import pytest

from eatlab.cli.repair import check_cache, check_run_dir, repair_cache
from eatlab.eat.artifacts import JsonlArtifact, check_jsonl, finalize_artifacts
from eatlab.errors import DataError
from eatlab.llm.base import GenerationSettings, Reply
from eatlab.llm.cache import ROW_COLUMNS, CacheDamagedError, ResponseCache, cache_key
from eatlab.rundir import read_jsonl
from eatlab.testing import cache_stress

CLI = [sys.executable, "-m", "eatlab.cli.cache"]
SETTINGS = GenerationSettings(max_new_tokens=16)


def test_four_joblib_processes_share_one_cache_without_locks_or_lost_rows(tmp_path):
    """4 processes x 300 write transactions (some answers written by all of them), each read back at once."""
    n, ok, missed = cache_stress.run(tmp_path / "c.sqlite", workers=4, n_batches=300)
    assert n > 2000 and ok == n and missed == 0
    assert check_cache(tmp_path / "c.sqlite").answers == n


def _conv(i: int) -> list[dict]:
    return [{"role": "user", "content": f"question {i}"}]


def _text(i: int) -> str:
    return f"answer {i} " + "lorem ipsum " * 40  # ~500 bytes: 1500 answers span ~200 pages


@pytest.fixture
def full_cache(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = ResponseCache(path)
    cache.put_many([("hf", "m", _conv(i), SETTINGS, Reply(text=_text(i))) for i in range(1500)])
    cache.close()  # the last connection checkpoints the WAL into the file
    assert not (tmp_path / "c.sqlite-wal").exists() or (tmp_path / "c.sqlite-wal").stat().st_size == 0
    return path


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("cut", ["page", "byte"])
def test_truncated_cache_is_detected_in_one_line_and_repaired(full_cache, cut):
    size = full_cache.stat().st_size
    keep = (size * 6 // 10) // 4096 * 4096 + (0 if cut == "page" else 1000)
    with full_cache.open("r+b") as fh:
        fh.truncate(keep)
    # the pipeline's cache refuses it at once, with the repair command
    with pytest.raises(CacheDamagedError) as exc:
        ResponseCache(full_cache).ensure_open()
    msg = str(exc.value)
    assert "\n" not in msg and "truncated" in msg and f"eatlab-cache repair --cache {full_cache}" in msg
    check = _cli("check", "--cache", full_cache)
    assert check.returncode == 1 and check.stdout.count("\n") == 1 and "DAMAGED (truncated" in check.stdout
    repair = _cli("repair", "--cache", full_cache)
    assert repair.returncode == 0, repair.stderr
    assert "repaired" in repair.stdout and list(full_cache.parent.glob("c.sqlite.damaged-*"))
    after = check_cache(full_cache)
    assert after.ok and 0 < after.answers < 1500
    # what was kept is intact, what was lost is simply absent (asked again by the next run)
    cache = ResponseCache(full_cache, mode="readonly")
    got = cache.get_many(cache_key("hf", "m", _conv(i), SETTINGS) for i in range(1500))
    assert len(got) == after.answers
    assert all(r.text == _text(int(r.text.split()[1])) for r in got.values())
    cache.close()
    assert _cli("check", "--cache", full_cache).returncode == 0


def test_corrupt_pages_are_found_by_check_and_repair_keeps_the_rest(full_cache):
    size = full_cache.stat().st_size
    with full_cache.open("r+b") as fh:  # garbage over two pages in the middle: the header is still fine
        fh.seek(size // 2 // 4096 * 4096)
        fh.write(b"\xa5" * 8192)
    check = _cli("check", "--cache", full_cache)
    assert check.returncode == 1 and "DAMAGED" in check.stdout
    cache = ResponseCache(full_cache, mode="readonly")
    with pytest.raises(CacheDamagedError, match="malformed"):
        cache.get_many(cache_key("hf", "m", _conv(i), SETTINGS) for i in range(1500))
    repair = _cli("repair", "--cache", full_cache)
    assert repair.returncode == 0 and "repaired" in repair.stdout
    after = check_cache(full_cache)
    assert after.ok and 1000 < after.answers < 1500


def test_not_a_database_is_reported_not_a_traceback(tmp_path):
    path = tmp_path / "c.sqlite"
    path.write_text("this is not sqlite\n" * 20)
    with pytest.raises(CacheDamagedError, match="not an SQLite database"):
        ResponseCache(path).get_many(["k"])


def test_artifacts_are_final_only_when_complete_and_a_truncated_one_is_repaired(tmp_path):
    run = tmp_path / "run"
    art = JsonlArtifact(run / "artifacts/forward.jsonl")
    art.write([{"sentence_id": f"zh-test-{i}", "english": "x" * i} for i in range(3)])
    assert not (run / "artifacts/forward.jsonl").exists()  # still being written
    # a process killed inside a write leaves half a line
    with art.partial.open("a") as fh:
        fh.write('{"sentence_id": "zh-test-3", "engl')
    found = check_jsonl(art.partial)
    assert found.truncated_tail and found.records == 3
    with pytest.raises(DataError, match=r"forward.jsonl.partial:4: truncated record"):
        read_jsonl(art.partial)
    check = _cli("check", "--run-dir", run)
    assert check.returncode == 1 and "INCOMPLETE" in check.stdout and "truncated last line" in check.stdout
    repair = _cli("repair", "--run-dir", run)
    assert repair.returncode == 0 and "3 valid records kept" in repair.stdout
    assert [r["sentence_id"] for r in read_jsonl(art.partial)] == [f"zh-test-{i}" for i in range(3)]
    # a finished run: artifacts renamed, metrics.json written last
    assert finalize_artifacts(run) == [run / "artifacts/forward.jsonl"]
    (run / "metrics.json").write_text(json.dumps({"entity_f1": 0.5}))
    assert check_run_dir(run).ok and _cli("check", "--run-dir", run).returncode == 0


def _cache_of(path, n: int):
    cache = ResponseCache(path)
    cache.put_many(
        [("hf", "m", _conv(i), SETTINGS, Reply(text=f"answer {i} " + "y" * 200)) for i in range(n)]
    )
    cache.close()
    return path


def _rows(path, where: str = "", args: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(f"SELECT {', '.join(ROW_COLUMNS)} FROM responses {where}", args).fetchall()
    finally:
        conn.close()


def _row_by_row(path, base) -> set[tuple]:
    """The oracle: the rows that a read of one rowid at a time finds unchanged (as they are in the sound base)."""
    sound = {i: row for i, row in enumerate(_rows(base, "ORDER BY rowid"), start=1)}
    readable = set()
    for rowid, row in sound.items():
        try:
            if _rows(path, "WHERE rowid = ?", (rowid,)) == [row]:
                readable.add(row)
        except sqlite3.DatabaseError:
            pass
    return readable


def _repaired(path) -> set[tuple]:
    assert repair_cache(path).backup is not None  # found damaged
    return set(_rows(path))


def test_repair_keeps_every_row_a_row_by_row_read_finds(tmp_path):
    """A 93-answer cache with one or two damaged 4 KiB pages anywhere: repair keeps exactly the readable rows.

    On f4a7be8 one damaged leaf page near the start left 0 of 87 readable answers, later ones lost 9 of 87.
    """
    base = _cache_of(tmp_path / "base.sqlite", 93)
    pages = base.stat().st_size // 4096
    assert pages > 12
    cases = [(p,) for p in range(pages)] + [
        (p, q) for p in range(1, pages, 2) for q in range(p + 1, pages, 4)
    ]
    lost_some = 0
    for i, damaged in enumerate(cases):
        path = tmp_path / f"c{i}.sqlite"
        shutil.copyfile(base, path)
        with path.open("r+b") as fh:
            for p in damaged:
                fh.seek(p * 4096)
                fh.write(b"\xa5" * 4096)
        readable = _row_by_row(path, base)
        lost_some += len(readable) < 93
        assert _repaired(path) == readable, damaged
    assert lost_some > len(cases) // 2  # most cases damage table pages, not just an index


def test_repair_of_a_cut_file_keeps_every_row_before_the_cut(tmp_path):
    base = _cache_of(tmp_path / "base.sqlite", 93)
    size = base.stat().st_size
    for cut in (size // 3, size // 2 + 100, size - 4096):
        path = tmp_path / f"cut{cut}.sqlite"
        padded = tmp_path / f"padded{cut}.sqlite"  # what SQLite reads of a cut file: the lost pages as zeros
        shutil.copyfile(base, path)
        with path.open("r+b") as fh:
            fh.truncate(cut)
        shutil.copyfile(path, padded)
        with padded.open("r+b") as fh:
            fh.truncate(size)
        readable = _row_by_row(padded, base)
        assert 0 < len(readable) < 93
        assert _repaired(path) == readable, cut


def test_repair_reports_the_rows_it_kept(tmp_path):
    base = _cache_of(tmp_path / "base.sqlite", 93)
    path = tmp_path / "c.sqlite"
    shutil.copyfile(base, path)
    with path.open("r+b") as fh:
        fh.seek(6 * 4096)
        fh.write(b"\xa5" * 4096)
    readable = len(_row_by_row(path, base))
    repair = _cli("repair", "--cache", path)
    assert repair.returncode == 0 and f"repaired, {readable} readable answers kept" in repair.stdout
    assert check_cache(path).answers == readable
