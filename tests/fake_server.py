"""A real HTTP server on 127.0.0.1 speaking the OpenAI completions protocol from scripted replies."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BLOCK = b'{"choices": "' + b"x" * ((1 << 20) - 13)  # what a "huge" reply is made of
WORDS = b"1 " * (1 << 19)  # what a "text" reply's text is made of (1 MiB; one token per "1 ")


class FakeServer:
    """``script`` is a list of actions consumed in order: ``("status", code)``, ``("sleep", seconds)``,
    ``("garbage", body)``, ``("redirect", location)`` (307), ``("echo", code)`` (the request's Authorization
    header in the body), ``("drip", seconds)`` (the whole response, status line included, one byte every
    ``seconds``), ``("huge", nbytes, declared)`` (a 200 body of ``nbytes``, its Content-Length sent only when
    ``declared``), ``("text", nbytes, chat)`` (a well-formed completion, or with ``chat`` a chat completion,
    whose text is ``nbytes`` of "1 1 1 …", streamed), ``("nested", depth)`` (``{"choices": [[[…]]]}`` nested
    ``depth`` deep); when it is empty, ``reply(payload)`` answers (a reply may hold ``float("inf")`` or
    ``float("nan")``: they go out as ``Infinity`` / ``NaN``, as Python servers send them). ``requests`` holds the
    payloads, ``headers`` each request's headers."""

    def __init__(self, reply, script=()):
        self.reply, self.script, self.requests, self.headers = reply, list(script), [], []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(payload)
                    server.headers.append(dict(self.headers))
                    action = server.script.pop(0) if server.script else None
                try:
                    self._act(action, payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up: what these tests expect
                    pass

            def _act(self, action, payload):
                kind = action[0] if action else None
                if kind in ("status", "echo", "redirect"):
                    self.send_response(307 if kind == "redirect" else action[1])
                    self.send_header("Retry-After", "0")
                    if kind == "redirect":
                        self.send_header("Location", action[1])
                    self.end_headers()
                    said = self.headers.get("Authorization") if kind == "echo" else None
                    self.wfile.write(json.dumps({"error": f"busy; you sent {said}" if said else "busy"}).encode())
                    return
                if kind == "drip":
                    body = json.dumps(server.reply(payload)).encode()
                    raw = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                    for i in range(len(raw)):
                        self.wfile.write(raw[i:i + 1])
                        self.wfile.flush()
                        time.sleep(action[1])
                    return
                if kind == "huge":
                    self.send_response(200)
                    if action[2]:
                        self.send_header("Content-Length", str(action[1]))
                    self.end_headers()
                    block = memoryview(BLOCK)  # made once: a test may measure the memory this process takes
                    for start in range(0, action[1], len(block)):
                        self.wfile.write(block[: action[1] - start])
                    return
                if kind == "text":
                    self._text(action[1], action[2])
                    return
                if kind == "sleep":
                    time.sleep(action[1])
                if kind == "nested":
                    depth = action[1]
                    kind, action = "garbage", ("garbage", b'{"choices": ' + b"[" * depth + b"]" * depth + b"}")
                body = action[1] if kind == "garbage" else json.dumps(server.reply(payload)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def _text(self, nbytes, chat):
                head = b'{"choices": [{"message": {"role": "assistant", "content": "' if chat else \
                    b'{"choices": [{"text": "'
                tail = b'"}, "finish_reason": "length"}]}' if chat else b'", "finish_reason": "length"}]}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(head) + nbytes + len(tail)))
                self.end_headers()
                self.wfile.write(head)
                block = memoryview(WORDS)
                for start in range(0, nbytes, len(block)):
                    self.wfile.write(block[: nbytes - start])
                self.wfile.write(tail)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
