"""Many processes writing and reading one response cache at once, as the jobs of a parallel sweep do.

`hammer` is what one worker process runs; `python -m eatlab.testing.cache_stress CACHE` runs 4 workers with
joblib (the backend of Hydra's joblib launcher) and checks that no write failed and no row was lost.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eatlab.llm.base import GenerationSettings, Reply
from eatlab.llm.cache import ResponseCache

SETTINGS = GenerationSettings(max_new_tokens=8)


def conversation(key: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"question {key}"}]


def answer(key: str) -> str:
    return f"answer to {key} " + "x" * (len(key) * 7 % 300)


def hammer(path: str, worker: int, n_batches: int = 200, shared_every: int = 5) -> dict:
    """Write `n_batches` small batches (1-3 answers; every `shared_every`-th batch one answer all workers write),
    reading each batch back at once. Returns the keys written and the number of read-backs that missed."""
    cache = ResponseCache(path, mode="readwrite")
    written, missed = [], 0
    for b in range(n_batches):
        keys = [f"w{worker}-b{b}-{i}" for i in range(1 + b % 3)]
        if b % shared_every == 0:
            keys.append(f"shared-{b}")
        cache.put_many(
            [("stress", "model", conversation(k), SETTINGS, Reply(text=answer(k))) for k in keys],
            stage="stress",
        )
        got = cache.get_many(cache_key_of(k) for k in keys)
        missed += sum(1 for k in keys if cache_key_of(k) not in got or got[cache_key_of(k)].text != answer(k))
        written += keys
    cache.close()
    return {"worker": worker, "written": written, "missed": missed}


def cache_key_of(key: str) -> str:
    from eatlab.llm.cache import cache_key

    return cache_key("stress", "model", conversation(key), SETTINGS)


def run(path: Path, workers: int = 4, n_batches: int = 200) -> tuple[int, int, int]:
    """(distinct keys written, rows found with the right answer, read-backs missed) after a joblib run."""
    from joblib import Parallel, delayed

    results = Parallel(n_jobs=workers, backend="loky")(
        delayed(hammer)(str(path), w, n_batches) for w in range(workers)
    )
    keys = {k for r in results for k in r["written"]}
    cache = ResponseCache(path, mode="readonly")
    got = cache.get_many(cache_key_of(k) for k in keys)
    ok = sum(1 for k in keys if cache_key_of(k) in got and got[cache_key_of(k)].text == answer(k))
    cache.close()
    return len(keys), ok, sum(r["missed"] for r in results)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eatlab.testing.cache_stress")
    p.add_argument("cache", type=Path)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--batches", type=int, default=200)
    args = p.parse_args(argv)
    n, ok, missed = run(args.cache, args.workers, args.batches)
    print(
        f"{args.workers} processes: {n} distinct answers written, {ok} found intact, {missed} read-backs missed"
    )
    return 0 if ok == n and not missed else 1


if __name__ == "__main__":
    sys.exit(main())
