"""A real HTTP(S) server in a thread that records what webhooks post to it."""

from __future__ import annotations

import http.server
import json
import ssl
import threading


class Receiver:
    """A real HTTP server that records each POST (headers and JSON body) and answers `status`."""

    def __init__(self, port: int = 0, status: int = 200, tls: ssl.SSLContext | None = None) -> None:
        self.posts: list[tuple[dict[str, str], list[dict]]] = []
        self.status = status
        self.location = ""  # for a 3xx answer
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.append((dict(self.headers), json.loads(body)))
                self.send_response(receiver.status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def plates(self) -> list[str]:
        return [read["plate"] for _, reads in self.posts for read in reads]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
