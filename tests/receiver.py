"""A real HTTP receiver on loopback for notification tests: records every POST (path, headers, body)
and answers 200, or a chosen status for the next N requests (a webhook that is down for a while)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Delivery:
    """One request that arrived."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        """A Slack body's text, or a JSON webhook's summary."""
        doc = self.json
        return str(doc.get("text") or doc.get("summary") or "")


class Receiver:
    """``url(path)`` to give a channel; ``fail(path, n, status)`` makes the next n requests to path fail."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deliveries: list[Delivery] = []
        self._failures: dict[str, tuple[int, int]] = {}  # path -> (remaining, status)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                status = receiver._answer(self.path)
                with receiver._lock:
                    receiver._deliveries.append(Delivery(self.path, dict(self.headers.items()), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:  # quiet
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _answer(self, path: str) -> int:
        with self._lock:
            remaining, status = self._failures.get(path, (0, 200))
            if remaining <= 0:
                return 200
            self._failures[path] = (remaining - 1, status)
            return status

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def fail(self, path: str, times: int, status: int = 500) -> None:
        """Answer ``status`` to the next ``times`` requests to ``path``."""
        with self._lock:
            self._failures[path] = (times, status)

    def received(self, path: str | None = None, *, accepted: bool = True) -> list[Delivery]:
        """What arrived (at ``path``), by default only the requests answered with 2xx."""
        with self._lock:
            found = [d for d in self._deliveries if path is None or d.path == path]
        return [d for d in found if 200 <= d.status < 300] if accepted else found

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@contextmanager
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    try:
        yield running
    finally:
        running.close()
