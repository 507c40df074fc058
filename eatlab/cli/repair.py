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
from eatlab.llm.cache import ROW_COLUMNS, ResponseCache, header_problem, key_of, refuse_folder


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
    refuse_folder(path)
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
    """Every intact row that can be read: what reading the table one rowid at a time would give.

    First a walk in rowid order (`WHERE rowid >= ?`), restarted one rowid further on after each read error (a
    damaged page); rowids going backwards mean a damaged page is being read, and count as an error. A seek into
    a garbled page can jump over rows, so every rowid in the range not read by the walk is then read on its own.
    The range comes from the walk and from both indexes (every row's rowid, on pages of their own), each read
    forwards and backwards up to its first damaged page. Rows whose key is not the hash of their own engine,
    model, messages and settings are damaged too and left out.
    """
    known = _known_rowids(conn)
    if not known:
        return
    cols = ", ".join(ROW_COLUMNS)
    lo, hi = min(known), max(known)
    found: set[int] = set()
    pos = lo
    while pos <= hi:
        try:
            cur = conn.execute(f"SELECT rowid, {cols} FROM responses WHERE rowid >= ? ORDER BY rowid", (pos,))
            for row in cur:
                if row[0] < pos:
                    raise sqlite3.DatabaseError("rowids out of order")
                pos = row[0] + 1
                if row[0] not in found and _intact(row[1:]):
                    found.add(row[0])
                    yield row[1:]
            break
        except sqlite3.DatabaseError:
            pos += 1
    for rowid in range(lo, max(hi, max(found, default=hi)) + 1):
        if rowid in found:
            continue
        try:
            row = conn.execute(f"SELECT {cols} FROM responses WHERE rowid = ?", (rowid,)).fetchone()
        except sqlite3.DatabaseError:
            continue
        if row is not None and _intact(row):
            yield row


def _known_rowids(conn: sqlite3.Connection) -> set[int]:
    """The rowids that the table and each index give, read forwards and backwards up to a damaged page."""
    known: set[int] = set()
    try:
        scans = [("responses NOT INDEXED", ["rowid"])]
        for idx in [r[1] for r in conn.execute("PRAGMA index_list(responses)").fetchall()]:
            cols = [f'"{r[2]}"' for r in conn.execute(f'PRAGMA index_info("{idx}")').fetchall()]
            scans.append((f'responses INDEXED BY "{idx}"', cols))  # in its own order: index pages only
    except sqlite3.DatabaseError:
        return known  # the schema itself is unreadable
    for source, order in scans:
        for direction in ("ASC", "DESC"):
            by = ", ".join(f"{c} {direction}" for c in order)
            try:
                for (rowid,) in conn.execute(f"SELECT rowid FROM {source} ORDER BY {by}"):
                    known.add(rowid)
            except sqlite3.DatabaseError:
                continue  # read the other way up to the damage
            break  # read whole: no need to read it backwards
    return known


def _intact(row: tuple) -> bool:
    """The key is the hash of the row's own request, the answer has no NUL (a page cut or zeroed by the damage
    leaves them; a rare real one only costs asking again) and meta is a JSON object."""
    key, engine, model, messages, settings, text = row[:6]
    meta = row[ROW_COLUMNS.index("meta")]
    try:
        return (
            key == key_of(engine, model, json.loads(messages), json.loads(settings))
            and isinstance(text, str)
            and "\x00" not in text
            and (meta is None or isinstance(json.loads(meta), dict))
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
    cache = ResponseCache(path)
    try:
        cache.put_rows(rows)
        kept = len(cache)
    finally:
        cache.close()
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
