"""Drive many multi-round conversations at once: round k of every conversation goes in one LLM-layer call."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from eatlab.llm.answers import strip_control
from eatlab.llm.base import Conversation, Reply, settings_for_round
from eatlab.llm.prompts import Direction, Round, fill

log = logging.getLogger(__name__)
SLOW_ROUND_S = 5.0  # a round that took longer is logged (progress on CPU runs, where one round takes minutes)

# model faults counted per reply (any round): see `sanitize_reply`
ANSWER_FAULTS = ("empty_answers", "truncated_answers", "control_chars_stripped", "unconstrained_answers")


@dataclass
class ConversationResult:
    """One finished conversation: every message, the replies in order, and the last reply (the result)."""

    messages: Conversation
    replies: list[Reply] = field(default_factory=list)
    faults: Counter = field(default_factory=Counter)  # ANSWER_FAULTS of its replies

    @property
    def answer(self) -> str:
        return self.replies[-1].text if self.replies else ""

    @property
    def failed(self) -> str | None:
        """The error of the first failed round, if any (a failed round ends the conversation)."""
        return next((r.error for r in self.replies if r.error), None)


def sanitize_reply(rep: Reply) -> Counter:
    """Clean a reply in place (control characters out, surrounding white space off) and say what was wrong.

    Faults of a successful reply: `empty_answers` (nothing left), `truncated_answers` (the model hit its token
    budget, finish_reason "length"), `control_chars_stripped`. Failed requests (rep.error) are not model faults.
    """
    faults: Counter = Counter()
    text, removed = strip_control(rep.text or "")
    rep.text = text.strip()
    if rep.error is not None:
        return faults
    if removed:
        faults["control_chars_stripped"] += 1
    if not rep.text:
        faults["empty_answers"] += 1
    if rep.finish_reason == "length":
        faults["truncated_answers"] += 1
    if rep.meta.get("unconstrained"):  # alignment.constrained asked, but the backend decoded freely
        faults["unconstrained_answers"] += 1
    return faults


def run_conversations(
    client,
    starts: Sequence[Conversation],
    direction: Direction,
    values: Sequence[dict[str, str]],
    generation: dict,
    stage: str,
    final_substring_of: Sequence[str] | None = None,
    final_settings: Mapping[str, object] | None = None,
) -> list[ConversationResult]:
    """Run every conversation through the direction's rounds, batching round k across conversations.

    Each reply is stripped of control characters and of surrounding white space before it is appended (as the
    reference transcripts were recorded; see `sanitize_reply`, whose fault counts each result keeps). A
    conversation whose round fails stops there; its result carries the error. `final_substring_of[i]`
    constrains conversation i's last reply to a verbatim substring of that text (earlier rounds stay free); the
    final round still goes in one client call, with per-row settings (backends with `row_constraints` batch
    rows of different texts together; the client splits the call for the others).
    `final_settings` sets further GenerationSettings fields of those constrained calls (`substring_select`,
    `max_span_words`, `max_span_chars`: how the constrained answer is chosen).
    """
    results = [ConversationResult(list(s)) for s in starts]
    last = len(direction.rounds) - 1
    for k, rnd in enumerate(direction.rounds):
        active = [i for i, r in enumerate(results) if r.failed is None]
        if not active:
            break
        for i in active:
            results[i].messages.append({"role": "user", "content": fill(rnd.text, values[i])})
        settings = settings_for_round(generation, rnd.max_new_tokens)
        rows = [
            replace(settings, substring_of=final_substring_of[i], **(final_settings or {}))
            if final_substring_of is not None and k == last and final_substring_of[i] is not None
            else settings
            for i in active
        ]
        t0 = time.perf_counter()
        replies = client.chat([results[i].messages for i in active], rows, stage=stage)
        took = time.perf_counter() - t0
        if took >= SLOW_ROUND_S:
            log.info("%s round %d/%d: %d conversations in %.0f s", stage, k + 1, last + 1, len(active), took)
        for i, rep in zip(active, replies, strict=True):
            rep = replace(rep)  # the client hands the same Reply to identical requests: clean a copy each
            results[i].faults.update(sanitize_reply(rep))
            results[i].replies.append(rep)
            if rep.error is None:
                results[i].messages.append({"role": "assistant", "content": rep.text})
    return results


def scripted(user_rounds: Sequence[Sequence[str]], budgets: Sequence[int]) -> tuple[Direction, list[dict]]:
    """A Direction whose round k sends conversation i its own message `user_rounds[k][i]`, with `budgets[k]`
    new tokens, and the values that fill it: replayed transcripts and benchmarks run through `run_conversations`
    like the pipeline."""
    direction = Direction(
        (), tuple(Round(f"round{k}", "{_round" + str(k) + "}", int(b)) for k, b in enumerate(budgets))
    )
    n = len(user_rounds[0]) if user_rounds else 0
    values = [{f"_round{k}": str(msgs[i]) for k, msgs in enumerate(user_rounds)} for i in range(n)]
    return direction, values
