"""The response cache: one SQLite file that several processes (a Hydra multirun, parallel jobs) share safely.

Key = sha256 of the canonical JSON of
  {"engine": backend kind ("hf", "vllm", "openai"), "model": model_key (see eatlab.llm.identity),
   "messages": the conversation sent, "settings": GenerationSettings.key_dict()}.

Decision on the engine part: answers are reused only by the same kind of engine (greedy decoding in transformers,
in vLLM and behind an HTTP server differ numerically, so their answers differ). Recorded transcripts are imported
under engine "hf" by default (they were made with transformers), so `eatlab-cache import FILE --model ID` serves a
run with `backend=hf model.id=ID` (and no local `model.path`, whose fingerprint would enter the model key).

Why SQLite this way: WAL journal (readers never block the writer), a busy timeout, every write in a short
`BEGIN IMMEDIATE` transaction retried on `database is locked`, and `INSERT ... ON CONFLICT DO NOTHING` so that two
processes answering the same request keep the first answer and an import run twice adds nothing. Each process
(re)opens its own connection, so a cache object survives a fork. Beside the answer, each row keeps the messages and
settings JSON so that `eatlab-cache export` can write the calls back out as conversations.

A process killed mid-write loses nothing committed (WAL). A file damaged otherwise (cut short by an interrupted
copy or a full disk, overwritten) is detected when it is opened or read and reported in one line
(CacheDamagedError) naming `eatlab-cache check|repair` (eatlab.cli.repair).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import threading
import time
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from eatlab.errors import ConfigError
from eatlab.llm.base import Conversation, GenerationSettings, Reply
from eatlab.utils.io import canonical_json


def default_cache_path() -> Path:
    """$EATLAB_OUTPUTS/cache/responses.sqlite (./outputs by default), as conf/cache/default.yaml resolves it."""
    return Path(os.environ.get("EATLAB_OUTPUTS") or "outputs") / "cache" / "responses.sqlite"


MODES = ("readwrite", "readonly", "off")
SCHEMA_VERSION = "1"

ROW_COLUMNS = ("key", "engine", "model", "messages", "settings", "text", "prompt_tokens", "completion_tokens",
               "entropies", "entropy_approx", "finish_reason", "meta", "stage", "source", "created")  # fmt: skip
"""A stored row, in this order: what `ResponseCache.put_rows` takes and a repair reads from a damaged file."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    engine TEXT NOT NULL,
    model TEXT NOT NULL,
    messages TEXT NOT NULL,
    settings TEXT NOT NULL,
    text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    entropies BLOB,
    entropy_approx INTEGER NOT NULL DEFAULT 0,
    finish_reason TEXT,
    meta TEXT,
    stage TEXT,
    source TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_model ON responses(engine, model);
CREATE TABLE IF NOT EXISTS info (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def normalize_messages(messages: Conversation) -> list[dict[str, str]]:
    """Only role and content enter the key (extra fields a caller carries do not change the answer)."""
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]


def cache_key(engine: str, model_key: str, messages: Conversation, settings: GenerationSettings) -> str:
    return key_of(engine, model_key, normalize_messages(messages), settings.key_dict())


def key_of(engine: str, model_key: str, messages: list[dict[str, str]], settings_key: dict) -> str:
    """The key from its stored parts (normalized messages, settings.key_dict()): lets a repair verify a row."""
    payload = {"engine": engine, "model": model_key, "messages": messages, "settings": settings_key}
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def _pack(entropies: list[float] | None) -> bytes | None:
    return None if entropies is None else array("f", entropies).tobytes()


def _unpack(blob: bytes | None) -> list[float] | None:
    if blob is None:
        return None
    a = array("f")
    a.frombytes(blob)
    return [float(x) for x in a]


@dataclass
class CacheEntry:
    """One stored call: what was asked and what came back."""

    key: str
    engine: str
    model: str
    messages: list[dict[str, str]]
    settings: dict
    reply: Reply
    stage: str | None
    source: str | None
    created: float


def _is_locked(exc: sqlite3.Error) -> bool:
    msg = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in msg or "busy" in msg)


class CacheDamagedError(ConfigError):
    """The cache file is truncated or corrupt: one line naming the file and the repair command."""

    def __init__(self, path: Path, problem: str):
        super().__init__(
            f"cache.path={path}: the cache file is damaged ({problem}); `eatlab-cache repair --cache {path}` "
            "keeps its readable answers (or run with cache.mode=off)"
        )
        self.path = path
        self.problem = problem


_DAMAGE = ("malformed", "not a database", "no such table", "corrupt", "disk i/o error")


def _cache_error(path: Path, exc: sqlite3.Error) -> ConfigError:
    """One-line error for an SQLite failure other than a lock: damage, or a file that cannot be written."""
    msg = str(exc)
    if any(d in msg.lower() for d in _DAMAGE):
        return CacheDamagedError(path, msg)
    return ConfigError(f"cache.path={path}: {msg} (check the folder's permissions and free space)")


def refuse_folder(path: Path) -> None:
    """A folder given as the cache file fails in one line naming the file meant (not IsADirectoryError later)."""
    if Path(path).is_dir():
        raise ConfigError(
            f"cache.path={path}: is a folder, not a cache file (did you mean cache.path={Path(path) / 'responses.sqlite'}?)"
        )


def header_problem(path: Path) -> str | None:
    """What is wrong with an SQLite file's header and size, without opening it (None: looks sound or absent).

    Catches the common damage cheaply at every open: a file cut short (an interrupted copy, a full disk), whose
    size is no longer the page count recorded in its header, and files that are not SQLite databases at all.

    A live WAL database is legitimately "short" for a moment: a checkpoint in another process writes page 1 (with
    the new page count) before the pages that grow the file. So a size mismatch counts only when it persists over
    a few looks and no `-wal` file (a writer at work) is beside the database; real damage in a live database
    still surfaces as SQLite's own "malformed" error on the first read.
    """
    path = Path(path)
    problem = None
    for attempt in range(4):
        problem = _header_problem_once(path)
        if problem is None or not problem.startswith("truncated"):
            return problem
        if Path(f"{path}-wal").exists():
            return None
        time.sleep(0.05 * (attempt + 1))
    return problem


def _header_problem_once(path: Path) -> str | None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if size == 0:
        return None  # SQLite treats an empty file as an empty database
    with path.open("rb") as fh:
        head = fh.read(100)
    if len(head) < 100 or not head.startswith(b"SQLite format 3\x00"):
        return f"not an SQLite database ({size} bytes, no SQLite header)"
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        return f"invalid page size {page_size} in the header"
    if size % page_size:
        return f"truncated: {size} bytes is not a whole number of {page_size}-byte pages"
    pages, counter, valid_for = (int.from_bytes(head[a : a + 4], "big") for a in (28, 24, 92))
    if pages and counter == valid_for and size < pages * page_size:
        return f"truncated: {size} of {pages * page_size} bytes"
    return None


class ResponseCache:
    """SQLite-backed answers keyed by (engine, model, messages, settings); `mode` is readwrite, readonly or off."""

    def __init__(self, path: str | Path | None = None, mode: str = "readwrite", timeout_s: float = 60.0):
        if mode not in MODES:
            raise ConfigError(f"cache.mode={mode}: expected one of {', '.join(MODES)}")
        self.path = Path(path) if path is not None else default_cache_path()
        self.mode = mode
        self.timeout_s = float(timeout_s)
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    # -- connection -----------------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def writable(self) -> bool:
        return self.mode == "readwrite"

    def _connect(self) -> sqlite3.Connection | None:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        self._conn = None  # a connection inherited through fork must not be used
        if self.mode == "off":
            return None
        refuse_folder(self.path)
        problem = header_problem(self.path)
        if problem:
            raise CacheDamagedError(self.path, problem)
        if self.mode == "readonly":
            if not self.path.is_file():
                return None
            conn = sqlite3.connect(
                f"file:{self.path.resolve()}?mode=ro",
                uri=True,
                timeout=self.timeout_s,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout_s * 1000)}")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                str(self.path), timeout=self.timeout_s, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout_s * 1000)}")
            self._retry(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone())
            conn.execute("PRAGMA synchronous=NORMAL")
            self._retry(lambda: conn.executescript(_SCHEMA))
            self._retry(
                lambda: conn.execute(
                    "INSERT OR IGNORE INTO info(name, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
                )
            )
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _retry(self, fn, attempts: int = 20):
        """Run fn, retrying on `database is locked` with a randomized exponential backoff.

        Any other SQLite error (`database disk image is malformed`, `file is not a database`, a missing table)
        means a damaged file: CacheDamagedError, one line with the repair command.
        """
        delay = 0.02
        for i in range(attempts):
            try:
                return fn()
            except sqlite3.Error as exc:
                if not _is_locked(exc):
                    raise _cache_error(self.path, exc) from None
                if i == attempts - 1:
                    raise
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 1.0)
        return None

    def ensure_open(self) -> None:
        """Open the file now (a damaged cache fails here, in one line, rather than mid-run)."""
        with self._lock:
            self._connect()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- reads ----------------------------------------------------------------------------------------------
    def get_many(self, keys: Iterable[str]) -> dict[str, Reply]:
        """The stored replies for those keys that are present (marked cached=True)."""
        keys = list(dict.fromkeys(keys))
        out: dict[str, Reply] = {}
        with self._lock:
            conn = self._connect()
            if conn is None or not keys:
                return out
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                q = (
                    "SELECT key, text, prompt_tokens, completion_tokens, entropies, entropy_approx, finish_reason, "
                    f"meta FROM responses WHERE key IN ({','.join('?' * len(chunk))})"
                )
                for row in self._retry(lambda q=q, chunk=chunk: conn.execute(q, chunk).fetchall()):
                    out[row[0]] = Reply(
                        text=row[1],
                        prompt_tokens=row[2],
                        completion_tokens=row[3],
                        entropies=_unpack(row[4]),
                        entropy_approx=bool(row[5]),
                        finish_reason=row[6],
                        cached=True,
                        meta=json.loads(row[7]) if row[7] else {},
                    )
        return out

    def get(self, key: str) -> Reply | None:
        return self.get_many([key]).get(key)

    def __len__(self) -> int:
        with self._lock:
            conn = self._connect()
            if conn is None:
                return 0
            return self._retry(lambda: conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def entries(self, model: str | None = None, engine: str | None = None) -> Iterator[CacheEntry]:
        """Every stored call (optionally of one model / engine), oldest first."""
        with self._lock:
            conn = self._connect()
            if conn is None:
                return
            where, args = [], []
            if model is not None:
                where.append("model = ?")
                args.append(model)
            if engine is not None:
                where.append("engine = ?")
                args.append(engine)
            q = (
                "SELECT key, engine, model, messages, settings, text, prompt_tokens, completion_tokens, entropies, "
                "entropy_approx, finish_reason, meta, stage, source, created FROM responses"
                + (" WHERE " + " AND ".join(where) if where else "")
                + " ORDER BY created, rowid"
            )
            rows = self._retry(lambda: conn.execute(q, args).fetchall())
        for r in rows:
            reply = Reply(
                text=r[5],
                prompt_tokens=r[6],
                completion_tokens=r[7],
                entropies=_unpack(r[8]),
                entropy_approx=bool(r[9]),
                finish_reason=r[10],
                cached=True,
                meta=json.loads(r[11]) if r[11] else {},
            )
            yield CacheEntry(r[0], r[1], r[2], json.loads(r[3]), json.loads(r[4]), reply, r[12], r[13], r[14])

    def stats(self) -> list[dict]:
        """Per (engine, model): number of answers, tokens, stages, first and last write."""
        with self._lock:
            conn = self._connect()
            if conn is None:
                return []
            rows = self._retry(
                lambda: conn.execute(
                    "SELECT engine, model, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), "
                    "SUM(entropies IS NOT NULL), GROUP_CONCAT(DISTINCT stage), MIN(created), MAX(created) "
                    "FROM responses GROUP BY engine, model ORDER BY engine, model"
                ).fetchall()
            )
        keys = ("engine", "model", "answers", "prompt_tokens", "completion_tokens", "with_entropies", "stages",
                "first", "last")  # fmt: skip
        return [dict(zip(keys, r)) for r in rows]

    # -- writes ---------------------------------------------------------------------------------------------
    def put_many(
        self,
        items: Iterable[tuple[str, str, Conversation, GenerationSettings, Reply]],
        stage: str | None = None,
        source: str | None = None,
    ) -> int:
        """Store (engine, model_key, messages, settings, reply) tuples; returns how many were new.

        Replies with an error and uncacheable settings (sampling without a seed) are skipped; existing keys are
        kept as they are (first answer wins), which makes imports idempotent.
        """
        rows = []
        now = time.time()
        for engine, model_key, messages, settings, reply in items:
            if reply.error is not None or not settings.cacheable:
                continue
            msgs = normalize_messages(messages)
            rows.append(
                (
                    cache_key(engine, model_key, msgs, settings),
                    engine,
                    model_key,
                    canonical_json(msgs),
                    canonical_json(settings.key_dict()),
                    reply.text,
                    int(reply.prompt_tokens),
                    int(reply.completion_tokens),
                    _pack(reply.entropies),
                    int(bool(reply.entropy_approx)),
                    reply.finish_reason,
                    canonical_json(reply.meta) if reply.meta else None,
                    stage,
                    source,
                    now,
                )
            )
        return self.put_rows(rows)

    def put_rows(self, rows: Iterable[tuple]) -> int:
        """Store raw rows (ROW_COLUMNS order, e.g. read from another cache file); returns how many were new.

        Existing keys are kept (first answer wins). `eatlab-cache repair` rebuilds a damaged cache through this.
        """
        rows = [tuple(r) for r in rows]
        if not rows or not self.writable:
            return 0
        sql = (
            f"INSERT INTO responses({', '.join(ROW_COLUMNS)}) VALUES ({','.join('?' * len(ROW_COLUMNS))}) "
            "ON CONFLICT(key) DO NOTHING"
        )
        with self._lock:
            conn = self._connect()

            def write() -> int:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    before = conn.total_changes
                    conn.executemany(sql, rows)
                    added = conn.total_changes - before
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                return added

            return self._retry(write)

    def put(self, engine: str, model_key: str, messages: Conversation, settings: GenerationSettings,
            reply: Reply, stage: str | None = None, source: str | None = None) -> int:  # fmt: skip
        return self.put_many([(engine, model_key, messages, settings, reply)], stage=stage, source=source)
