"""Recorded conversations <-> cached calls: the layout of the shared LLM transcripts (a copy ships in eatlab/resources/transcripts/), both ways.

A record is one conversation: `messages` (system, a scripted preamble, then user rounds each followed by the
model's reply) and `generation` (`do_sample`, `max_new_tokens_by_round`, `seed`). The reply at
`messages[s + 2k]` is the model's answer to exactly `messages[:s + 2k]`, made with round k's settings, where
s = `first_reply_index` (4 when absent: system + a scripted user/assistant pair + the first user round).
Round k's settings are `settings_by_round[k]` when the record has it (eatlab's exports always do), otherwise
GenerationSettings(max_new_tokens=max_new_tokens_by_round[k], do_sample=..., seed=...) with defaults for the
rest: exactly what the pipeline asks with for greedy rounds.

Exports add `engine`, `settings_by_round`, `first_reply_index` and `replies` (per-round token counts, entropies,
finish reason), so that an export re-imported restores the cache rows exactly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

from eatlab.errors import DataError
from eatlab.llm.base import GenerationSettings, Reply
from eatlab.llm.cache import CacheEntry, normalize_messages
from eatlab.utils.io import canonical_json

_SETTING_NAMES = {f.name for f in fields(GenerationSettings)}


@dataclass
class RecordedCall:
    messages: list[dict[str, str]]
    settings: GenerationSettings
    reply: Reply
    stage: str | None
    source: str


def settings_from_dict(d: dict) -> GenerationSettings:
    unknown = set(d) - _SETTING_NAMES
    if unknown:
        raise ValueError(f"unknown generation settings {sorted(unknown)}")
    return GenerationSettings(**d)


def _record_calls(rec: dict, path: Path, line: int) -> list[RecordedCall]:
    def bad(msg: str) -> DataError:
        return DataError(path, msg, line=line)

    messages = rec.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise bad("`messages` must be a list of {role, content} objects")
    start = int(rec.get("first_reply_index", 4))
    gen = rec.get("generation") or {}
    by_round = rec.get("settings_by_round")
    n_replies = (len(messages) - start + 1) // 2 if len(messages) > start else 0
    if by_round is None:
        budgets = gen.get("max_new_tokens_by_round")
        if not isinstance(budgets, list):
            raise bad("`generation.max_new_tokens_by_round` (or `settings_by_round`) is required")
        if gen.get("do_sample") and gen.get("seed") is None:
            raise bad("a sampled conversation without a seed cannot be cached")
        if gen.get("do_sample"):
            raise bad(
                "a sampled conversation needs `settings_by_round` (temperature, top_p, ... are not recorded)"
            )
        by_round = [{"max_new_tokens": int(b), "do_sample": False} for b in budgets]
    if len(by_round) < n_replies:
        raise bad(f"{n_replies} replies but settings for {len(by_round)} rounds")
    metas = rec.get("replies") or [{}] * n_replies
    calls = []
    for k in range(n_replies):
        at = start + 2 * k
        if messages[at].get("role") != "assistant" or messages[at - 1].get("role") != "user":
            raise bad(f"messages[{at}] must be an assistant reply to a user turn")
        try:
            settings = settings_from_dict(by_round[k])
        except (TypeError, ValueError) as exc:
            raise bad(f"settings of round {k + 1}: {exc}") from None
        meta = metas[k] if k < len(metas) and isinstance(metas[k], dict) else {}
        reply = Reply(
            text=str(meta.get("text", messages[at].get("content", ""))),  # exports keep the unstripped reply
            prompt_tokens=int(meta.get("prompt_tokens", 0)),
            completion_tokens=int(meta.get("completion_tokens", 0)),
            entropies=meta.get("entropies"),
            entropy_approx=bool(meta.get("entropy_approx", False)),
            finish_reason=meta.get("finish_reason"),
        )
        calls.append(
            RecordedCall(normalize_messages(messages[:at]), settings, reply, rec.get("kind"), str(path))
        )
    return calls


def read_transcript_calls(path: str | Path) -> Iterator[RecordedCall]:
    """Every model answer of a transcript/export JSONL file, as (messages before it, settings, reply)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such file")
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(path, f"not JSON ({exc.msg})", line=line_no) from None
            if not isinstance(rec, dict):
                raise DataError(path, "each line must be a JSON object", line=line_no)
            yield from _record_calls(rec, path, line_no)


def _full(messages: list[dict], text: str) -> str:
    return canonical_json([*messages, {"role": "assistant", "content": text.strip()}])


def entries_to_records(entries: list[CacheEntry]) -> list[dict]:
    """Group cached calls into conversation records (one per conversation as far as the calls allow).

    A call continues another when its messages are the other's messages plus the other's (stripped) reply plus
    one user turn. Each call that nothing continues ends a record, which holds it and the chain of calls it
    continues (the oldest candidate where several calls could precede). A call with several continuations appears
    in each of their records; importing them is idempotent.
    """
    by_full: dict[str, CacheEntry] = {}
    for e in entries:
        by_full.setdefault(_full(e.messages, e.reply.text), e)
    continued: set[str] = set()
    parent_of: dict[str, CacheEntry] = {}
    for e in entries:
        if len(e.messages) >= 2 and e.messages[-2]["role"] == "assistant":
            p = by_full.get(canonical_json(e.messages[:-1]))
            if p is not None:
                parent_of[e.key] = p
                continued.add(p.key)
    records = []
    for leaf in entries:
        if leaf.key in continued:
            continue
        chain = [leaf]
        while chain[-1].key in parent_of:
            chain.append(parent_of[chain[-1].key])
        chain.reverse()
        root = chain[0]
        settings = [c.settings for c in chain]
        records.append(
            {
                "kind": root.stage or leaf.stage,
                "engine": leaf.engine,
                "model_id": leaf.model,
                "generation": {
                    "do_sample": any(s.get("do_sample", False) for s in settings),
                    "max_new_tokens_by_round": [s.get("max_new_tokens") for s in settings],
                    "seed": next((s["seed"] for s in settings if s.get("seed") is not None), None),
                },
                "settings_by_round": settings,
                "first_reply_index": len(root.messages),
                "messages": [*leaf.messages, {"role": "assistant", "content": leaf.reply.text.strip()}],
                "replies": [
                    {
                        "text": c.reply.text,
                        "prompt_tokens": c.reply.prompt_tokens,
                        "completion_tokens": c.reply.completion_tokens,
                        "entropies": c.reply.entropies,
                        "entropy_approx": c.reply.entropy_approx,
                        "finish_reason": c.reply.finish_reason,
                    }
                    for c in chain
                ],
            }
        )
    return records
