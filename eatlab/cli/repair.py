"""Check and repair what an interrupted or damaged run can leave behind: the SQLite cache and the run dir.

- The cache: `check_cache` reads the header (a file cut short), then runs SQLite's integrity check; `repair_cache`
  moves a damaged file aside (`<name>.damaged-<time>`, with its -wal/-shm) and copies every row that can still be
  read into a fresh cache at the same path. Lost rows only cost model calls: the next run asks them again.
- A run dir: a run is complete when metrics.json exists (written last, after the artifacts got their final
  names). `check_run_dir` says so, and checks every artifacts/*.jsonl(.partial) for a truncated last line or
  invalid lines; `repair_run_dir` rewrites damaged files with their valid records only.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from eatlab.eat.artifacts import PARTIAL, JsonlCheck, check_jsonl, repair_jsonl
from eatlab.llm.cache import _SCHEMA, SCHEMA_VERSION, header_problem, key_of

_COLUMNS = ("key, engine, model, messages, settings, text, prompt_tokens, completion_tokens, entropies, "
            "entropy_approx, finish_reason, meta, stage, source, created")  # fmt: skip


@dataclass
class CacheCheck:
    path: Path
    ok: bool
    answers: int | None  # None when they cannot be counted
    problem: str | None = None

    def message(self) -> str:
        if not self.path.exists():
            return f"{self.path}: absent (a new cache is created on the first run)"
        if self.ok:
            return f"{self.path}: ok, {self.answers} answers"
        return f"{self.path}: DAMAGED ({self.problem}); run `eatlab-cache repair --cache {self.path}`"


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True, timeout=30)


def check_cache(path: Path, full: bool = True) -> CacheCheck:
    """Header check, then SQLite's integrity_check (quick_check with full=False), then a row count."""
    path = Path(path)
    if not path.exists():
        return CacheCheck(path, True, 0)
    problem = header_problem(path)
    if problem:
        return CacheCheck(path, False, None, problem)
    try:
        conn = _ro(path)
        try:
            rows = conn.execute("PRAGMA integrity_check" if full else "PRAGMA quick_check").fetchall()
            if [r[0] for r in rows] != ["ok"]:
                return CacheCheck(path, False, None, "; ".join(str(r[0]) for r in rows[:3]))
            n = conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return CacheCheck(path, False, None, str(exc))
    return CacheCheck(path, True, n)


def _salvage(conn: sqlite3.Connection) -> Iterator[tuple]:
    """Every row that can be read, in rowid order, skipping (with growing steps) over unreadable pages.

    Rowids going backwards mean a damaged page is being read: treated like a read error. Rows whose key is not
    the hash of their own engine, model, messages and settings are damaged too and left out.
    """
    pos, step = -(2**63), 1
    while step <= 2**40:
        try:
            cur = conn.execute(
                f"SELECT rowid, {_COLUMNS} FROM responses WHERE rowid > ? ORDER BY rowid", (pos,)
            )
            for row in cur:
                if row[0] <= pos:
                    raise sqlite3.DatabaseError("rowids out of order")
                pos, step = row[0], 1
                if _intact(row[1:]):
                    yield row[1:]
            return
        except sqlite3.DatabaseError as exc:
            if "no such table" in str(exc):
                return
            pos, step = pos + step, step * 2


def _intact(row: tuple) -> bool:
    key, engine, model, messages, settings = row[:5]
    try:
        return key == key_of(engine, model, json.loads(messages), json.loads(settings)) and isinstance(
            row[5], str
        )
    except (TypeError, ValueError):
        return False


def _salvage_copy(damaged: Path) -> list[tuple]:
    """The readable rows of a damaged file, read from a private copy padded back to its recorded size.

    SQLite refuses a file shorter than the page count in its header ("malformed" even for the schema); padded
    with zero pages, everything before the cut reads normally and only the lost pages fail.
    """
    work = damaged.with_name(damaged.name + ".salvage")
    shutil.copyfile(damaged, work)
    if Path(str(damaged) + "-wal").exists():
        shutil.copyfile(Path(str(damaged) + "-wal"), Path(str(work) + "-wal"))
    try:
        with work.open("rb") as fh:
            head = fh.read(100)
        if head.startswith(b"SQLite format 3\x00"):
            page_size = int.from_bytes(head[16:18], "big")
            page_size = 65536 if page_size == 1 else page_size
            pages = int.from_bytes(head[28:32], "big")
            size = work.stat().st_size
            target = max(pages * page_size, -(-size // page_size) * page_size)
            if target > size:
                with work.open("r+b") as fh:
                    fh.truncate(target)
        conn = sqlite3.connect(str(work), timeout=30)
        try:
            return list(_salvage(conn))
        finally:
            conn.close()
    except sqlite3.Error:
        return []  # not readable at all: start empty
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(str(work) + suffix).unlink(missing_ok=True)


@dataclass
class CacheRepair:
    path: Path
    kept: int
    before: CacheCheck
    backup: Path | None = None

    def message(self) -> str:
        if self.backup is None:
            return f"{self.path}: nothing to repair ({self.before.answers} answers)"
        return (
            f"{self.path}: repaired, {self.kept} readable answers kept (damage: {self.before.problem}); "
            f"the damaged file is kept as {self.backup}; answers lost are asked again by the next run"
        )


def repair_cache(path: Path) -> CacheRepair:
    """Move a damaged cache aside and rebuild it from its readable rows (no-op on a sound cache)."""
    path = Path(path)
    before = check_cache(path)
    if before.ok:
        return CacheRepair(path, before.answers or 0, before)
    backup = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            shutil.move(src, Path(str(backup) + suffix))
    rows = _salvage_copy(backup)
    new = sqlite3.connect(str(path), isolation_level=None)
    try:
        new.execute("PRAGMA journal_mode=WAL")
        new.executescript(_SCHEMA)
        new.execute("INSERT OR IGNORE INTO info(name, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        new.execute("BEGIN IMMEDIATE")
        new.executemany(f"INSERT OR IGNORE INTO responses({_COLUMNS}) VALUES ({','.join('?' * 15)})", rows)
        new.execute("COMMIT")
        kept = new.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    finally:
        new.close()
    return CacheRepair(path, kept, before, backup)


@dataclass
class RunDirCheck:
    run_dir: Path
    complete: bool  # metrics.json exists
    files: list[JsonlCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.complete and all(f.ok for f in self.files)

    def messages(self) -> list[str]:
        head = (
            f"{self.run_dir}: complete (metrics.json present)"
            if self.complete
            else f"{self.run_dir}: INCOMPLETE (no metrics.json: the run was interrupted or failed; re-run the same "
            "command to resume from the cache)"
        )
        return [head] + [f"  {f.message()}" for f in self.files]


def check_run_dir(run_dir: Path) -> RunDirCheck:
    run_dir = Path(run_dir)
    art = run_dir / "artifacts"
    files = sorted([*art.glob("*.jsonl"), *art.glob("*.jsonl" + PARTIAL)]) if art.is_dir() else []
    return RunDirCheck(run_dir, (run_dir / "metrics.json").is_file(), [check_jsonl(f) for f in files])


def repair_run_dir(run_dir: Path) -> RunDirCheck:
    """Rewrite damaged JSONL artifacts with their valid records; returns the check from before."""
    before = check_run_dir(run_dir)
    for f in before.files:
        if not f.ok:
            repair_jsonl(f.path)
    return before
