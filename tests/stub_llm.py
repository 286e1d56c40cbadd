"""A small OpenAI-compatible chat server on 127.0.0.1, for driving LiteLLM and openai over real HTTP.

Answers come from `answer_for(prompt)`, or from `respond(body)` where it returns a text (an int
is an HTTP status to fail with; None falls back to `answer_for`); special prompts trigger failures:
  "FAIL-500" / "FAIL-429" -> that HTTP status; "TRUNCATE" -> finish_reason "length";
  "CUT-STREAM" -> a stream that stops without a finish chunk; "SLOW" -> sleeps 5 s;
  "DRIP" -> a stream that sends one word every 0.2 s.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _first_word(text: str) -> str:
    return text.split()[0].strip(",.").lower()


def default_answer(prompt: str) -> str:
    if "Reply with exactly YES or NO" in prompt:  # judge prompts: same first word means same answer
        a, b = _first_word(prompt.split("Answer A:")[1]), _first_word(prompt.split("Answer B:")[1])
        return "YES" if a == b else "NO"
    if "Reply with its number only, or NONE" in prompt:  # the judge asked of several: the first alike
        a = _first_word(prompt.split("Answer A:")[1])
        listed = re.findall(r"^\[(\d+)\] (.*)$", prompt, re.MULTILINE)
        return next((number for number, text in listed if _first_word(text) == a), "NONE")
    return f"Answer to: {prompt}"


PAIR_ONE = re.compile(r'\[1\] Request: .*\n    Answer: (".*")')


def two_models(body: dict):
    """`respond` for a server playing two models by name: "cheap-model" (or "gpt-4o-mini", a name
    LiteLLM prices) names pair 1 of the cheap
    prompt and repeats its answer, unless the request says CHEAP-FAIL (HTTP 500), CHEAP-ABSTAIN
    or CHEAP-GARBAGE (a reply that does not parse), and replies after 0.5 s to CHEAP-DELAY; any other
    model is the default strong one."""
    if body.get("model") not in ("cheap-model", "gpt-4o-mini"):
        return None
    user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
    if "CHEAP-FAIL" in user:
        return 500
    if "CHEAP-ABSTAIN" in user:
        return '{"memory": null}'
    if "CHEAP-GARBAGE" in user:
        return "I would say 42."
    if "CHEAP-DELAY" in user:
        time.sleep(0.5)
    answer = json.loads(PAIR_ONE.search(body["messages"][0]["content"]).group(1))
    return json.dumps({"memory": 1, "answer": answer})


class StubLLM:
    def __init__(self, answer_for=default_answer, port: int = 0, respond=None) -> None:
        self.answer_for = answer_for
        self.respond = respond
        self.calls: list[dict] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self._json(200, {"object": "list", "data": [{"id": "stub", "object": "model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with stub._lock:
                    stub.calls.append(body)
                prompt = next((m["content"] for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")
                if isinstance(prompt, list):
                    prompt = " ".join(p.get("text", "") for p in prompt if isinstance(p, dict))
                if "FAIL-500" in prompt:
                    return self._json(500, {"error": {"message": "upstream exploded", "type": "server_error"}})
                if "FAIL-429" in prompt:
                    return self._json(429, {"error": {"message": "slow down", "type": "rate_limit"}})
                if "SLOW" in prompt:
                    time.sleep(5)
                answer = stub.respond(body) if stub.respond is not None else None
                if isinstance(answer, int):
                    return self._json(answer, {"error": {"message": "the model failed", "type": "server_error"}})
                answer = stub.answer_for(prompt) if answer is None else answer
                finish = "length" if "TRUNCATE" in prompt else "stop"
                if body.get("stream"):
                    return self._stream(body, answer, finish, cut="CUT-STREAM" in prompt)
                self._json(
                    200,
                    {
                        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", "stub"),
                        "choices": [
                            {"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": answer}}
                        ],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
                    },
                )

            def _json(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, body: dict, answer: str, finish: str, cut: bool) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                cid = f"chatcmpl-{uuid.uuid4().hex[:12]}"
                words = answer.split(" ")
                for i, word in enumerate(words):
                    if cut and i == len(words) // 2:
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    chunk = {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": int(time.time()),
                        "model": body.get("model", "stub"),
                        "choices": [
                            {"index": 0, "delta": {"content": (" " if i else "") + word}, "finish_reason": None}
                        ],
                    }
                    try:
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                    except OSError:  # the client went away
                        return
                    if "DRIP" in answer:
                        time.sleep(0.2)
                done = {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": body.get("model", "stub"),
                    "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
                }
                self.wfile.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())
                self.wfile.flush()
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> StubLLM:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
