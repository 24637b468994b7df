"""A fake OpenAI-compatible chat-completions server on 127.0.0.1 for the openai captioner's tests
(the ``server`` fixture in ``conftest.py`` runs one per test; set ``server.mode`` to choose its fault)."""

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conceptmine_assets.resources.openai_captioner import OpenAICaptioner

GOOD_ANSWER = '{"class": "construction_vehicle", "description": "a yellow excavator"}'


class _Handler(BaseHTTPRequestHandler):
    """Answers chat completions as ``server.mode`` says: good, flaky (503 twice, then good), busy (429 with
    Retry-After once, then good), slow (1 s, then good), http503, http401, malformed, empty_content."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            n = len(server.requests)
        mode = server.mode
        if mode == "flaky" and n < 3:
            mode = "http503"
        if mode == "busy" and n == 1:  # 429 with Retry-After once, then a good answer
            self.send_response(429)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if mode == "slow":
            time.sleep(1.0)
            mode = "good"
        if mode == "http503":
            self.send_error(503, "overloaded")
            return
        if mode == "http401":
            self.send_error(401, "bad key")
            return
        if mode == "malformed":
            payload = b'{"choices": [ this is not json'
        elif mode == "empty_content":
            payload = json.dumps({"choices": [{"message": {"content": "  "}}]}).encode()
        else:
            payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": GOOD_ANSWER}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@contextmanager
def fake_openai_server() -> Iterator[ThreadingHTTPServer]:
    """A running server answering well (``mode`` "good"); ``requests`` records what it received."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.mode, srv.requests, srv.lock = "good", [], threading.Lock()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def closed_port_url() -> str:
    """The URL of a port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def openai(url: str, **kw) -> OpenAICaptioner:
    """An openai captioner on ``url`` with short timeouts and backoffs (``kw`` overrides them)."""
    settings = dict(base_url=url, model="qwen2-vl", api_key="sk-test", timeout_s=0.3,
                    max_attempts=3, backoff_s=0.01, backoff_max_s=0.02, concurrency=2)
    return OpenAICaptioner(**{**settings, **kw})


def server_url(srv) -> str:
    """The base URL (``/v1``) of a fake server."""
    return f"http://127.0.0.1:{srv.server_address[1]}/v1"
