"""A developer's webhook receiver on loopback, for tests: it records every request and answers
as told (`plan`): a status, a hang past the sender's deadline, or a redirect. It verifies
signatures the way the README tells developers to (`verify`)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.time)

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def delivery_id(self) -> str:
        return self.headers["timepoint-delivery-id"]


def verify(secret: str, header: str, body: bytes, tolerance: int = 300) -> bool:
    """What a receiver does: `t` is recent and one `v1` is HMAC-SHA256(secret, "<t>.<body>")."""
    items = [item.split("=", 1) for item in header.split(",") if "=" in item]
    stamps = [value for name, value in items if name == "t"]
    signatures = [value for name, value in items if name == "v1"]
    if len(stamps) != 1 or not stamps[0].isdigit() or abs(time.time() - int(stamps[0])) > tolerance:
        return False
    expected = hmac.new(secret.encode(), f"{stamps[0]}.".encode() + body, hashlib.sha256)
    return any(hmac.compare_digest(expected.hexdigest(), value) for value in signatures)


class WebhookReceiver:
    """`plan` is consumed one answer per request, then `default` applies: an int status, or
    `("hang", seconds)`, or `("redirect", location)`."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.received: list[Received] = []
        self.plan: list[Any] = []
        self.default: Any = 200
        self._lock = threading.Lock()
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                answer = receiver._record(self.path, self.headers, body)
                if isinstance(answer, tuple) and answer[0] == "hang":
                    receiver._release.wait(float(answer[1]))
                    answer = 200
                if isinstance(answer, tuple) and answer[0] == "redirect":
                    self.send_response(302)
                    self.send_header("Location", str(answer[1]))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                payload = json.dumps({"received": True, "status": answer}).encode()
                self.send_response(int(answer))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _record(self, path: str, headers: Any, body: bytes) -> Any:
        with self._lock:
            self.received.append(Received(path, {k.lower(): v for k, v in headers.items()}, body))
            return self.plan.pop(0) if self.plan else self.default

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()  # hanging handlers answer and end
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, (
                f"the receiver got {len(self.received)} requests, expected {count}"
            )
            time.sleep(0.02)
        return list(self.received)
