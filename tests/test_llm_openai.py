"""The OpenAI-compatible backend against a real HTTP server on 127.0.0.1 speaking the chat-completions wire format:
normal replies, timeouts, 5xx, 429, malformed bodies, auth, bounded concurrency, top-k entropies."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from eatlab.errors import ConfigError
from eatlab.llm.base import GenerationSettings
from eatlab.llm.cache import ResponseCache
from eatlab.llm.client import LLMClient
from eatlab.llm.conversation import run_conversations, scripted
from eatlab.llm.openai_http import OpenAIBackend

GREEDY = GenerationSettings(max_new_tokens=32)


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.attempts: dict[str, int] = {}
        self.bodies: list[dict] = []
        self.headers_seen: list[dict] = []
        self.inflight = 0
        self.max_inflight = 0

    def handle_error(self, request, client_address):  # a client that gave up (timeout) is expected
        pass


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _leave(self):
        """This request stops counting as in flight: before its reply is written (a client that has its reply
        may send the next request at once), or when it ends without one."""
        if getattr(self, "_inflight", False):
            self._inflight = False
            with self.server.lock:
                self.server.inflight -= 1

    def _send(self, status: int, body: bytes, headers: dict | None = None):
        self._leave()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        srv: FakeServer = self.server  # type: ignore[assignment]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        with srv.lock:
            srv.bodies.append(body)
            srv.headers_seen.append(dict(self.headers))
            n = srv.attempts[prompt] = srv.attempts.get(prompt, 0) + 1
            srv.inflight += 1
            srv.max_inflight = max(srv.max_inflight, srv.inflight)
        self._inflight = True
        try:
            self._answer(body, prompt, n)
        finally:
            self._leave()

    def _answer(self, body, prompt, n):
        if self.path != "/v1/chat/completions":
            return self._send(404, b'{"error": "not found"}')
        if prompt.startswith("slow") and (prompt == "slow always" or n == 1):
            time.sleep(1.0)
        if prompt == "500 once" and n == 1:
            return self._send(500, b'{"error": "internal"}')
        if prompt == "503 always":
            return self._send(503, b'{"error": "overloaded"}')
        if prompt == "429 once" and n == 1:
            return self._send(429, b'{"error": "rate limited"}', {"Retry-After": "0"})
        if prompt == "malformed always" or (prompt == "malformed once" and n == 1):
            return self._send(200, b'{"id": "chatcmpl-1", "choices": [')
        if prompt == "no choices":
            return self._send(200, b'{"id": "chatcmpl-1", "object": "chat.completion"}')
        if prompt == "bad request":
            return self._send(400, b'{"error": {"message": "context too long"}}')
        if prompt == "unauthorized":
            return self._send(401, b'{"error": "bad key"}')
        time.sleep(0.05)  # long enough for concurrent requests to overlap
        content = "  padded reply \n" if prompt == "padded" else f"echo: {prompt}"
        choice = {"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": None,
                  "finish_reason": "stop"}  # fmt: skip
        if body.get("logprobs"):
            top = [[0.5, 0.25, 0.25], [0.5]]  # exact entropy 1.5 ln 2; lower bound ln 2 (the 0.5 left over)
            choice["logprobs"] = {"content": [
                {"token": f"t{i}", "logprob": math.log(ps[0]), "bytes": [116],
                 "top_logprobs": [{"token": f"a{j}", "logprob": math.log(p), "bytes": [97]} for j, p in enumerate(ps)]}
                for i, ps in enumerate(top)]}  # fmt: skip
        data = {"id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
                "choices": [choice],
                "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}}  # fmt: skip
        self._send(200, json.dumps(data).encode())


@pytest.fixture()
def server():
    srv = FakeServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def make(server, **kw) -> OpenAIBackend:
    opts = {"timeout_s": 0.4, "max_retries": 2, "backoff_s": 0.01, "concurrency": 4} | kw
    return OpenAIBackend(f"http://127.0.0.1:{server.server_address[1]}/v1", "served-model", **opts)


def conv(text: str):
    return [{"role": "system", "content": "sys"}, {"role": "user", "content": text}]


def test_normal_replies_in_order_with_bounded_concurrency(server):
    b = make(server, concurrency=3)
    prompts = [f"sentence {i}" for i in range(12)]
    replies = b.generate([conv(p) for p in prompts], GREEDY)
    assert [r.text for r in replies] == [f"echo: {p}" for p in prompts]
    assert all(r.error is None and r.finish_reason == "stop" for r in replies)
    assert (replies[0].prompt_tokens, replies[0].completion_tokens) == (11, 2)
    assert replies[0].entropies is None
    assert 2 <= server.max_inflight <= 3
    body = server.bodies[0]
    assert body["model"] == "served-model" and body["max_tokens"] == 32 and body["temperature"] == 0.0
    assert body["repetition_penalty"] == 1.0 and "logprobs" not in body
    assert body["messages"] == conv(body["messages"][-1]["content"])


def test_sampling_parameters_on_the_wire(server):
    settings = GenerationSettings(max_new_tokens=8, do_sample=True, temperature=0.7, top_p=0.8, top_k=20,
                                  repetition_penalty=1.05, seed=3)  # fmt: skip
    make(server).generate([conv("hi")], settings)
    body = server.bodies[-1]
    assert (body["temperature"], body["top_p"], body["top_k"], body["seed"]) == (0.7, 0.8, 20, 3)
    assert body["repetition_penalty"] == 1.05
    make(server, extra_sampling_params=False).generate([conv("hi")], settings)
    assert "top_k" not in server.bodies[-1] and "repetition_penalty" not in server.bodies[-1]


def test_retries_timeout_5xx_429_and_malformed_then_success(server):
    b = make(server)
    prompts = ["slow once", "500 once", "429 once", "malformed once"]
    replies = b.generate([conv(p) for p in prompts], GREEDY)
    assert [r.text for r in replies] == [f"echo: {p}" for p in prompts]
    assert all(r.error is None for r in replies)
    assert all(server.attempts[p] == 2 for p in prompts)


def test_persistent_failures_become_error_replies(server):
    b = make(server, max_retries=1)
    prompts = ["malformed always", "no choices", "503 always", "slow always", "bad request", "fine"]
    replies = b.generate([conv(p) for p in prompts], GREEDY)
    for r in replies[:5]:
        assert r.text == "" and r.error
    assert "malformed" in replies[0].error and "malformed" in replies[1].error
    assert "503" in replies[2].error and "timeout" in replies[3].error and "400" in replies[4].error
    assert replies[5].text == "echo: fine"
    assert server.attempts["malformed always"] == 2 and server.attempts["bad request"] == 1  # 4xx: no retry


def test_connection_refused_is_an_error_reply():
    b = OpenAIBackend("http://127.0.0.1:9/v1", "m", timeout_s=0.3, max_retries=1, backoff_s=0.01)
    (r,) = b.generate([conv("x")], GREEDY)
    assert r.error and "connection" in r.error


def test_api_key_from_env_only_in_header(server, monkeypatch):
    monkeypatch.setenv("EATLAB_TEST_KEY", "sk-secret-123")
    b = make(server, api_key_env="EATLAB_TEST_KEY")
    b.generate([conv("hi")], GREEDY)
    assert server.headers_seen[-1]["Authorization"] == "Bearer sk-secret-123"
    assert "sk-secret" not in repr(b) and "sk-secret" not in json.dumps(server.bodies[-1])
    monkeypatch.delenv("EATLAB_TEST_KEY")
    make(server, api_key_env="EATLAB_TEST_KEY").generate([conv("hi")], GREEDY)
    assert "Authorization" not in server.headers_seen[-1]
    with pytest.raises(ConfigError, match="api_key_env"):
        b.generate([conv("unauthorized")], GREEDY)
    with pytest.raises(ConfigError, match="404"):
        OpenAIBackend(f"http://127.0.0.1:{server.server_address[1]}/wrong", "m").generate([conv("x")], GREEDY)


def test_top_logprobs_give_approximate_entropies(server):
    (r,) = make(server, logprobs=True, top_logprobs=5).generate([conv("hi")], GREEDY)
    assert server.bodies[-1]["logprobs"] is True and server.bodies[-1]["top_logprobs"] == 5
    assert r.entropy_approx
    assert r.entropies == pytest.approx([1.5 * math.log(2), math.log(2)])


def test_client_caches_answers_not_errors_and_strips_rounds(server, tmp_path, monkeypatch):
    cache = ResponseCache(tmp_path / "c.sqlite")
    client = LLMClient(make(server, max_retries=0), cache)
    first = client.chat([conv("a"), conv("b"), conv("a"), conv("503 always")], GREEDY)
    assert [r.text for r in first[:3]] == ["echo: a", "echo: b", "echo: a"] and first[3].error
    assert client.counters["forward"].llm_calls == 3  # the duplicate was sent once
    assert client.counters["forward"].llm_errors == 1
    second = client.chat([conv("a"), conv("b"), conv("503 always")], GREEDY)
    assert [r.cached for r in second] == [True, True, False]  # the failure was not cached: asked again
    assert client.counters["forward"].llm_calls == 4 and client.counters["forward"].llm_cache_hits == 2

    direction, values = scripted([["padded", "503 always"], ["next", "next"]], [GREEDY.max_new_tokens, 4])
    prefixes = [[{"role": "system", "content": "sys"}]] * 2
    monkeypatch.setattr("eatlab.llm.conversation.SLOW_ROUND_S", 0.0)  # every round is "slow": logged
    # a handler on the logger itself: earlier tests' Hydra logging config may change what reaches the root
    logger, progress = logging.getLogger("eatlab.llm.conversation"), []
    handler = logging.Handler()
    handler.emit = lambda record: progress.append(record.getMessage().split(" in ")[0])
    monkeypatch.setattr(logger, "level", logging.INFO)
    monkeypatch.setattr(logger, "disabled", False)
    logger.addHandler(handler)
    try:
        ok, failed = run_conversations(client, prefixes, direction, values, {}, "backward")
    finally:
        logger.removeHandler(handler)
    assert progress == ["backward round 1/2: 2 conversations", "backward round 2/2: 1 conversations"]
    assert ok.messages[2] == {"role": "assistant", "content": "padded reply"}  # cleaned before appending
    assert [r.text for r in ok.replies] == ["padded reply", "echo: next"]
    assert failed.failed and len(failed.replies) == 1  # a failed conversation stops: its round 2 is not sent
    assert len(failed.messages) == 2
    assert client.counters_dict()["backward"]["llm_calls"] == 3
