"""A small OpenAI-compatible server that misbehaves on demand, for the openai backend's tests.

Behaviour is chosen by a marker word in the user's message of an *answer* request (evolve and
equality requests always succeed): RATE -> 429 twice, then an answer; BROKEN -> 500 always;
SLOW -> answers after `slow_seconds`; GARBLED -> 200 with a body that is not JSON;
AUTH -> 401 whose message echoes the Authorization header (as real servers do with keys).
`outage`: a test may set a predicate on the prompt; while it holds, the request gets a 503 (an endpoint
that is down for a while, then recovers).

`RateLimitedServer` answers every request like the flaky one's plain answers, under a hard limit of
requests and tokens per minute, enforced over a sliding window (429 beyond it), with OpenAI's
x-ratelimit-* headers on every response.
"""
from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from evol.templates import ORIGINAL_MARKER


class FlakyOpenAIServer:
    def __init__(self, slow_seconds: float = 3.0):
        self.hits: Counter = Counter()  # (marker, prompt) -> requests received
        self.authorization: set[str] = set()
        self.slow_seconds = slow_seconds
        self.outage = None  # a predicate on the prompt: True -> 503
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.handle(self, body)

        self.httpd = _Listener(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()

    def handle(self, request, body: dict) -> None:
        prompt = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
        self.authorization.add(request.headers.get("Authorization", ""))
        if self.outage is not None and self.outage(prompt):
            return send_json(request, 503, {"error": {"message": "service unavailable", "type": "server_error"}})
        marker = next((m for m in ("RATE", "BROKEN", "SLOW", "GARBLED", "AUTH") if m in prompt), None)
        if ORIGINAL_MARKER in prompt or "First instruction:" in prompt:
            marker = None
        with self.lock:
            self.hits[(marker, prompt)] += 1
            seen = self.hits[(marker, prompt)]
        if marker == "RATE" and seen <= 2:
            return send_json(request, 429, {"error": {"message": "slow down", "type": "rate_limit"}},
                         {"retry-after-ms": "20"})
        if marker == "BROKEN":
            return send_json(request, 500, {"error": {"message": "internal failure", "type": "server_error"}})
        if marker == "AUTH":
            key = request.headers.get("Authorization", "").removeprefix("Bearer ")
            return send_json(request, 401, {"error": {"message": f"Incorrect API key provided: {key}",
                                                  "type": "invalid_request_error"}})
        if marker == "GARBLED":
            return send_raw(request, 200, b'{"id": "x", "choices": [{"index": 0, "mess')
        if marker == "SLOW":
            time.sleep(self.slow_seconds)
        send_json(request, 200, completion_body(body, _answer(prompt)))


def _answer(prompt: str) -> str:
    if ORIGINAL_MARKER in prompt:
        instruction = prompt.split(ORIGINAL_MARKER)[1].split("\n\n#")[0].strip()
        return f"{instruction} Give two examples."
    if "First instruction:" in prompt:
        return "Not Equal"
    return "Here is a careful answer with several useful words about the question."


class _Listener(ThreadingHTTPServer):
    # A real endpoint's listen backlog is hundreds; socketserver's default of 5 drops connections when a
    # burst of requests meets a moment when this process does not accept (a pause of a long pytest run,
    # such as a GC), and a dropped SYN costs the client a second: a timeout that no server error caused.
    request_queue_size = 128
    daemon_threads = True


def completion_body(body: dict, text: str, prompt_tokens: int = 11) -> dict:
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
             "total_tokens": prompt_tokens + len(text.split())}
    if "messages" in body:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        return {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [choice], "usage": usage}
    return {"id": "c1", "object": "text_completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "text": text, "finish_reason": "stop"}], "usage": usage}


def send_json(request, status: int, payload: dict, headers: dict | None = None) -> None:
    send_raw(request, status, json.dumps(payload).encode(), headers)


def send_raw(request, status: int, data: bytes, headers: dict | None = None) -> None:
    request.send_response(status)
    request.send_header("Content-Type", "application/json")
    request.send_header("Content-Length", str(len(data)))
    for key, value in (headers or {}).items():
        request.send_header(key, value)
    request.end_headers()
    request.wfile.write(data)


class RateLimitedServer(FlakyOpenAIServer):
    """At most `requests_per_minute * window_s / 60` requests and as many tokens (prompt + completion,
    the usage it reports) in any `window_s` seconds; beyond that a 429 with retry-after-ms. Every
    response carries x-ratelimit-limit/remaining/reset headers (`headers=False`: none), per minute as
    OpenAI's are (remaining: the limit less the window's use scaled to a minute).
    `admitted` and `rejected` hold the monotonic times of each (admitted with its tokens)."""

    def __init__(self, requests_per_minute: int, tokens_per_minute: int | None = None, window_s: float = 1.0,
                 headers: bool = True):
        super().__init__()
        self.limits = {"requests": requests_per_minute, "tokens": tokens_per_minute}
        self.window_s, self.send_limits = window_s, headers
        self.window: deque = deque()  # (time, tokens) of the admitted requests still in the window
        self.admitted: list[tuple[float, int]] = []
        self.rejected: list[float] = []

    def allowance(self, kind: str) -> float:
        limit = self.limits[kind]
        return math.inf if limit is None else limit * self.window_s / 60.0

    def handle(self, request, body: dict) -> None:
        prompt = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
        text = _answer(prompt)
        tokens = -(-len(prompt) // 4) + len(text.split())
        with self.lock:
            now = time.monotonic()
            while self.window and self.window[0][0] <= now - self.window_s:
                self.window.popleft()
            used = {"requests": len(self.window), "tokens": sum(t for _, t in self.window)}
            full = used["requests"] >= self.allowance("requests") or used["tokens"] >= self.allowance("tokens")
            if full:
                self.rejected.append(now)
            else:
                self.window.append((now, tokens))
                self.admitted.append((now, tokens))
                used = {"requests": used["requests"] + 1, "tokens": used["tokens"] + tokens}
            reset = self.window[0][0] + self.window_s - now if self.window else 0.0
        headers = self.limit_headers(used, reset)
        if full:
            return send_json(request, 429, {"error": {"message": "rate limit reached", "type": "requests"}},
                             headers | {"retry-after-ms": str(int(reset * 1000) + 1)})
        send_json(request, 200, completion_body(body, text, prompt_tokens=tokens - len(text.split())), headers)

    def limit_headers(self, used: dict, reset: float) -> dict:
        if not self.send_limits:
            return {}
        headers = {}
        for kind, limit in self.limits.items():
            if limit is not None:
                headers |= {f"x-ratelimit-limit-{kind}": str(limit), f"x-ratelimit-reset-{kind}": f"{reset:.3f}s",
                            f"x-ratelimit-remaining-{kind}": str(max(0, int(limit - used[kind] * 60 / self.window_s)))}
        return headers
