"""A real HTTP server on 127.0.0.1 speaking the OpenAI completions protocol from scripted replies."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeServer:
    """``script`` is a list of actions consumed in order: ``("status", code)``, ``("sleep", seconds)``,
    ``("garbage", body)``; when it is empty, ``reply(payload)`` answers."""

    def __init__(self, reply, script=()):
        self.reply, self.script, self.requests = reply, list(script), []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(payload)
                    action = server.script.pop(0) if server.script else None
                if action and action[0] == "status":
                    self.send_response(action[1])
                    self.send_header("Retry-After", "0")
                    self.end_headers()
                    self.wfile.write(b'{"error": "busy"}')
                    return
                if action and action[0] == "sleep":
                    import time
                    time.sleep(action[1])
                body = (action[1] if action and action[0] == "garbage"
                        else json.dumps(server.reply(payload)).encode())
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                try:
                    self.wfile.write(body)
                except BrokenPipeError:
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
