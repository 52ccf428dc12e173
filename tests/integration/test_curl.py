"""tasks/curl.py: HTTP checks from a droplet, run for real with curl (invoke's local runner
stands in for the SSH connection: hosts.run calls the same `.run`) against small HTTP
servers on 127.0.0.1 and on a unix socket. Needs curl."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import invoke
import pytest

from tasks import curl


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(3)
        status = 503 if self.path == "/down" else 200
        if self.path == "/text":
            body = b"not json\n\n"
        else:
            body = json.dumps({"path": self.path, "host": self.headers.get("Host")}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):  # noqa: ANN201 - BaseHTTPRequestHandler wants an address pair
        request, _ = super().get_request()
        return request, ("local", 0)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_status_body_and_headers_come_back(base_url: str):
    conn = invoke.Context()
    answer = curl.get(conn, f"{base_url}/patroni", headers={"Host": "blog.lifeboat.test"})
    assert answer.status == 200
    assert answer.json() == {"path": "/patroni", "host": "blog.lifeboat.test"}
    down = curl.get(conn, f"{base_url}/down")
    assert down.status == 503 and down.json()["path"] == "/down"  # the body of any status
    text = curl.get(conn, f"{base_url}/text")
    assert text == curl.Answer(200, "not json\n\n") and text.json() is None


def test_no_answer_is_status_zero_never_an_error(base_url: str):
    conn = invoke.Context()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused = curl.get(conn, f"http://127.0.0.1:{port}/")
    assert refused.status == 0 and refused.json() is None
    started = time.monotonic()
    slow = curl.get(conn, f"{base_url}/slow", max_time=1)
    assert slow.status == 0 and time.monotonic() - started < 2.5


def test_a_unix_socket(tmp_path: Path):
    path = tmp_path / "agent.sock"
    server = UnixServer(str(path), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        answer = curl.get(invoke.Context(), "http://agent/health", unix_socket=str(path))
    finally:
        server.shutdown()
        server.server_close()
    assert answer.status == 200 and answer.json() == {"path": "/health", "host": "agent"}
