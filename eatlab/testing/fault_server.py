"""A real OpenAI-compatible chat server on 127.0.0.1 that answers deterministically and injects faults on demand.

Why: the HTTP backend's retries, the failed-sample accounting and resume after a kill are shown against a real
server and a real socket, not mocks. Answers are a pure function of the conversation (so an interrupted and a
resumed run get the same answers), and with `OracleModel` they are the gold entities of the sentences, so that
a clean run predicts exactly `OracleModel.placed` (the gold spans, unless the gold tags a later occurrence of an
entity's text: see `placed_spans`), scores `OracleModel.ceiling` (1.0 when every gold span is placed) and every
fault shows up as a precise loss.

Faults (`FaultRule.kind`):
- HTTP: "timeout" (answers after `delay_s`), "429", "500", "503", "malformed" (a 200 whose body is not JSON),
  "no_choices" (valid JSON without choices), "drop" (closes the connection without answering).
- Model: "empty" (""), "length" (a long answer with finish_reason "length"), "wrong_script" (an answer in a
  script the request does not expect), "control" (the answer with NULs, bells and terminal escapes inside),
  "ignore_grammar" (a server that does not know the request's grammar parameter drops it and answers as a
  free model would: the English phrase echoed back; requests without a grammar are answered as usual).
- Server: `shutdown_after=N` stops the server after N requests: later requests find the connection refused.
- Tests: `block_when=predicate` holds the `block_nth` request matching it until `release()` (or the server
  stops), so that a test can kill the client at a known point (`blocked` is set then); `requests` records every
  request (body hash, stage, fault, whether it was answered, the authorization header seen).

    python -m eatlab.testing.fault_server --port 8123 --data-root DIR --language zh --fault 503:first=2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HTTP_FAULTS = ("timeout", "429", "500", "503", "malformed", "no_choices", "drop")
MODEL_FAULTS = ("empty", "length", "wrong_script", "control", "ignore_grammar")
GRAMMAR_PARAMS = ("grammar", "guided_grammar", "structured_outputs")  # backend.constraint_param's values

_FINAL_FORWARD = ("only the final English translation", "Output only the translation")
_FINAL_BACKWARD = ("Give me only the final", "Output only that phrase")


@dataclass
class RequestInfo:
    """One request as the server saw it."""

    index: int  # 1-based, over the server's life
    attempt: int  # 1-based: how many times this exact body has been received
    body_sha: str
    messages: list[dict]
    stage: str  # forward | backward | ner | direct | other
    sentence: str | None
    phrase: str | None
    final: bool  # the last round of its conversation (the answer the pipeline keeps)
    authorization: str | None = None
    fault: str | None = None
    blocked: bool = False
    answered: bool = False  # a 200 with a model answer was sent
    params: dict = field(default_factory=dict)  # the body's other fields (sampling, grammar, ...)


@dataclass
class FaultRule:
    """Inject `kind` into requests for which `when(info)` is true.

    `attempts`: only the first N attempts of a matching request are faulted (a transient fault that retries
    cure); None: every attempt (a persistent fault: the sample ends up failed).
    """

    kind: str
    when: Callable[[RequestInfo], bool] = lambda info: True
    attempts: int | None = None
    delay_s: float = 2.0  # for "timeout"

    def __post_init__(self):
        if self.kind not in HTTP_FAULTS + MODEL_FAULTS:
            raise ValueError(f"unknown fault {self.kind!r}: {', '.join(HTTP_FAULTS + MODEL_FAULTS)}")

    def applies(self, info: RequestInfo) -> bool:
        return (self.attempts is None or info.attempt <= self.attempts) and bool(self.when(info))


def _first_user(messages: list[dict]) -> str:
    return next((m.get("content", "") for m in messages if m.get("role") == "user"), "")


def classify(messages: list[dict]) -> tuple[str, str | None, str | None, bool]:
    """(stage, sentence, phrase, final) of an eatlab prompt (prompts=eatlab); ("other", None, None, True) else."""
    first = _first_user(messages)
    last = messages[-1].get("content", "") if messages else ""
    m = re.search(r"English phrase: (.*)\n.*? sentence: (.*)\n", first)
    if m:
        return "backward", m.group(2), m.group(1), any(k in last for k in _FINAL_BACKWARD)
    if "named entities of this English sentence" in first:
        m = re.search(r"\nSentence: (.*)$", first, re.S)
        return "ner", m.group(1) if m else None, None, True
    if "Copy each entity exactly" in first:
        m = re.search(r"\nSentence: (.*)$", first, re.S)
        return "direct", m.group(1) if m else None, None, True
    m = re.search(r"sentence:\n(.*)\nList the named entities", first) or re.search(
        r"into English\. Output only the translation, without any other words\.\n(.*)$", first, re.S
    )
    if m:
        return "forward", m.group(1), None, any(k in last for k in _FINAL_FORWARD)
    return "other", None, None, True


class OracleModel:
    """Answers an eatlab conversation as a perfect model would, from the gold entities of known sentences.

    forward: the final answer is the sentence romanised (anyascii: Latin script, one "English" text per
    sentence); ner: the gold entities, romanised, as `(TYPE, entity)` pairs; backward: the gold entity whose
    romanisation is the phrase, verbatim from the sentence. Earlier rounds get a short deterministic remark.
    Answers name entities, not positions: a clean run predicts `placed` (from `from_sentences`), which is the
    gold but for entities whose text occurs earlier in the sentence untagged, and scores `ceiling` entity F1
    (1.0 without such entities); every injected fault shows up as a precise loss from there.
    """

    def __init__(self, gold: dict[str, list[tuple[str, str]]] | None = None):
        self.gold = dict(gold or {})
        self.source_of = {self.english(text): text for text in self.gold}
        self.placed: dict[str, list] = {}  # sentence text -> the spans a clean run predicts (from_sentences)
        self.ceiling: float | None = None  # the entity F1 of a clean run (from_sentences)

    @staticmethod
    def english(text: str) -> str:
        from anyascii import anyascii

        return " ".join(anyascii(text).split())

    @classmethod
    def from_sentences(cls, sentences) -> OracleModel:
        from eatlab.data.bio import spans_to_tags, tags_to_spans
        from eatlab.eval.entity import entity_counts, entity_scores

        sentences = list(sentences)
        gold = {}
        for s in sentences:
            spans = tags_to_spans(s.tags)
            gold[s.text] = [
                (sp.type, s.text[s.offsets[sp.start][0] : s.offsets[sp.end - 1][1]]) for sp in spans
            ]
        model = cls(gold)
        model.placed = {s.text: placed_spans(s) for s in sentences}
        pred = [spans_to_tags(model.placed[s.text], len(s.tokens)) for s in sentences]
        model.ceiling = entity_scores(entity_counts([s.tags for s in sentences], pred))["entity_f1"]
        return model

    def answer(self, info: RequestInfo) -> str:
        sentence = info.sentence or ""
        if info.stage == "forward":
            if info.final:
                return self.english(sentence)
            return (
                "Entities: "
                + (", ".join(self.english(p) for _, p in self.gold.get(sentence, [])) or "none")
                + "."
            )
        if info.stage == "ner":
            ents = self.gold.get(self.source_of.get(sentence, ""), [])
            return ", ".join(f"({t}, {self.english(p)})" for t, p in ents) or "none"
        if info.stage == "direct":
            return ", ".join(f"({t}, {p})" for t, p in self.gold.get(sentence, [])) or "none"
        if info.stage == "backward":
            src = next(
                (p for _, p in self.gold.get(sentence, []) if self.english(p) == info.phrase), info.phrase
            )
            return src or "" if info.final else f'The phrase is "{src}".'
        return "ok"


def placed_spans(sentence) -> list:
    """The spans a clean run with the oracle behind it predicts: each gold entity's text, in order, recovered as
    the pipeline recovers an answer (eatlab.eat.recovery: the earliest occurrence whose tokens are free).

    An answer names an entity, not a position. When the gold tags a later occurrence of the text and not the
    first (WikiANN tags linked mentions: zh-test-6 tags the second of seven 辛巴威, the first is inside the
    untagged title 辛巴威議會), the span lands on the first: a miss and a false positive that no model can avoid.
    """
    from eatlab.data.bio import tags_to_spans
    from eatlab.eat.recovery import recover_span

    gold = tags_to_spans(sentence.tags)
    placed: list = []
    for sp in gold:
        text = sentence.text[sentence.offsets[sp.start][0] : sentence.offsets[sp.end - 1][1]]
        rec = recover_span(text, sentence, sp.type, placed, n_entities=len(gold))
        if rec.span is not None:
            placed.append(rec.span)
    return placed


def _apply_model_fault(kind: str, text: str, info: RequestInfo) -> tuple[str, str]:
    """(text, finish_reason) of a model fault."""
    if kind == "empty":
        return "", "stop"
    if kind == "length":
        return (text + " ") + " ".join(["and so on"] * 200), "length"
    if kind == "wrong_script":
        cyrillic = info.stage in ("forward", "ner") or not any(c.isascii() and c.isalpha() for c in text)
        return ("Москва и Санкт-Петербург" if cyrillic else "北京和上海"), "stop"
    if kind == "ignore_grammar":
        dropped = any(p in info.params for p in GRAMMAR_PARAMS)
        return (info.phrase if dropped and info.phrase else text), "stop"
    if kind == "control":
        mid = len(text) // 2
        return "\x00\x1b[31m" + text[:mid] + "\x07\x08" + text[mid:] + "\x1b[0m\x7f", "stop"
    return text, "stop"


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    seen: Counter = field(default_factory=Counter)
    requests: list[RequestInfo] = field(default_factory=list)
    answered: int = 0


class FaultServer:
    """`with FaultServer(model, rules) as srv:` ... `backend.base_url=srv.base_url`."""

    def __init__(
        self,
        model: OracleModel | None = None,
        rules: list[FaultRule] | None = None,
        *,
        port: int = 0,
        shutdown_after: int | None = None,
        block_when: Callable[[RequestInfo], bool] | None = None,
        block_nth: int = 1,
    ):
        self.model = model or OracleModel()
        self.rules = list(rules or [])
        self.shutdown_after = shutdown_after
        self.block_when = block_when
        self._block_left = int(block_nth)
        self.blocked = threading.Event()  # set when request `block_at` arrives
        self._release = threading.Event()
        self._down = threading.Event()
        self._state = _State()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[RequestInfo]:
        with self._state.lock:
            return list(self._state.requests)

    def start(self) -> FaultServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fault-server", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        self._release.set()

    def stop(self) -> None:
        """Stop answering and close the socket: new connections are refused, open ones are dropped."""
        if self._down.is_set():
            return
        self._down.set()
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------ handling
    def _register(self, body: bytes, payload: dict, auth: str | None) -> RequestInfo:
        messages = payload.get("messages") or []
        stage, sentence, phrase, final = classify(messages)
        sha = hashlib.sha256(body).hexdigest()
        with self._state.lock:
            self._state.seen[sha] += 1
            info = RequestInfo(
                len(self._state.requests) + 1, self._state.seen[sha], sha, messages, stage, sentence, phrase,
                final, auth,
            )  # fmt: skip
            info.params = {k: v for k, v in payload.items() if k != "messages"}
            info.fault = next((r.kind for r in self.rules if r.applies(info)), None)
            self._state.requests.append(info)
            if self.block_when is not None and self._block_left > 0 and self.block_when(info):
                self._block_left -= 1
                info.blocked = self._block_left == 0
        return info

    def _delay(self, info: RequestInfo) -> float:
        return next((r.delay_s for r in self.rules if r.kind == "timeout" and r.applies(info)), 0.0)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def handle(self):
                try:
                    super().handle()
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout, kill): fine
                    self.close_connection = True

            def _send(self, code: int, body: bytes, ctype: str = "application/json", headers=None):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if server._down.is_set():
                    self.close_connection = True
                    return
                try:
                    payload = json.loads(body)
                except ValueError:
                    self._send(400, b'{"error": "bad json"}')
                    return
                if not self.path.endswith("/chat/completions"):
                    self._send(404, b'{"error": "not found"}')
                    return
                info = server._register(body, payload, self.headers.get("Authorization"))
                if info.blocked:
                    server.blocked.set()
                    server._release.wait()
                    if server._down.is_set():
                        self.close_connection = True
                        return
                if server.shutdown_after is not None:
                    # take a slot before answering, so concurrent requests never overshoot the limit
                    with server._state.lock:
                        if server._state.answered >= server.shutdown_after:
                            self.close_connection = True
                            return
                        server._state.answered += 1
                        done = server._state.answered
                    self._answer(info, payload)
                    info.answered = info.fault not in HTTP_FAULTS
                    if done >= server.shutdown_after:
                        threading.Thread(target=server.stop, daemon=True).start()
                    return
                self._answer(info, payload)
                info.answered = info.fault not in HTTP_FAULTS
                with server._state.lock:
                    server._state.answered += 1

            def _answer(self, info: RequestInfo, payload: dict):
                fault = info.fault
                if fault == "timeout":
                    time.sleep(server._delay(info))
                elif fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                elif fault in ("429", "500", "503"):
                    self._send(int(fault), b'{"error": "injected"}', headers={"Retry-After": "0"})
                    return
                elif fault == "malformed":
                    self._send(200, b'{"choices": [{"message": {"content": "trunc')
                    return
                elif fault == "no_choices":
                    self._send(200, b'{"object": "chat.completion", "choices": []}')
                    return
                text = server.model.answer(info)
                finish = "stop"
                if fault in MODEL_FAULTS:
                    text, finish = _apply_model_fault(fault, text, info)
                prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in info.messages)
                out = {
                    "id": f"chatcmpl-{info.index}",
                    "object": "chat.completion",
                    "model": payload.get("model"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": finish,
                        }
                    ],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split())},
                }
                self._send(200, json.dumps(out, ensure_ascii=False).encode("utf-8"))

        return Handler


def main(argv: list[str] | None = None) -> int:
    """Serve the oracle model (gold entities of one language's split) with faults, until interrupted."""
    p = argparse.ArgumentParser(
        prog="python -m eatlab.testing.fault_server", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--port", type=int, default=8123)
    p.add_argument("--language", default="zh")
    p.add_argument("--split", default="test")
    p.add_argument("--data-root", default=None, help="WikiANN copy (default: the in-repo samples)")
    p.add_argument(
        "--fault", action="append", default=[], help="KIND[:first=N] for every request, e.g. 503:first=2"
    )
    p.add_argument("--shutdown-after", type=int, default=None)
    args = p.parse_args(argv)
    from eatlab.data.loader import select_sentences

    model = OracleModel.from_sentences(select_sentences(args.language, args.split, args.data_root).sentences)
    rules = []
    for spec in args.fault:
        kind, _, opt = spec.partition(":")
        first = int(opt.split("=", 1)[1]) if opt.startswith("first=") else None
        rules.append(FaultRule(kind, attempts=first))
    srv = FaultServer(model, rules, port=args.port, shutdown_after=args.shutdown_after).start()
    print(
        f"serving {srv.base_url} ({len(model.gold)} sentences of {args.language}/{args.split}; a clean run "
        f"scores entity F1 {model.ceiling:.4f}); Ctrl-C stops"
    )
    try:
        while not srv._down.is_set():
            time.sleep(0.5)
    except KeyboardInterrupt:
        srv.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
