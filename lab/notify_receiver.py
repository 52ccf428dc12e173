"""The lab's notification receiver: records what Prefect's notification block sends, so
tests can see it (lab/notifications.py starts it). In production the block posts to
Slack, e-mail or a webhook; in the local cloud it posts here.

    python -m lab.notify_receiver --bind IP --port N --file F --pid-file P

- `POST /notify`, any body: one JSON line `{"received_at": <epoch seconds>,
  "content_type": <the header or null>, "body": <the body parsed as JSON, else its text>}`
  appended to F (flushed at once), answered 204.
- `GET /notifications`: 200, the JSON list of the lines recorded in F.
- Anything else: 404 (a body over 1 MiB: 413).

Plain HTTP: it listens on the lab gateway only, an address of this machine on a bridge
whose traffic the host routes nowhere else (lab/config.py); its client, Prefect on this
machine, sends nothing secret, so TLS (a lab CA certificate the block would have to
trust) would protect nothing. `--pid-file` is where lab/notifications.py records this
process, and the marker by which `lab down` finds it.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MAX_BODY = 1 << 20  # a notification is a few lines; anything bigger is refused (413)


def read(path: Path) -> list[dict[str, Any]]:
    """The notifications recorded in `path`, oldest first ([] when there is no file)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:  # a line cut short by a kill mid-write: it was never answered 204
            continue
    return out


def _parsed(raw: bytes) -> Any:  # noqa: ANN401 - whatever JSON the sender posted
    try:
        return json.loads(raw)
    except ValueError:  # UnicodeDecodeError included
        return raw.decode("utf-8", errors="replace")


class _Handler(BaseHTTPRequestHandler):
    server: _Receiver

    def _path(self) -> str:
        return urllib.parse.urlsplit(self.path).path

    def _body(self) -> bytes | None:
        """The request's body, read whatever the answer (a client still sending when the
        connection closes may see a reset instead of it); None if too big to read."""
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length <= MAX_BODY else None

    def do_POST(self) -> None:
        raw = self._body()
        if raw is None:
            self.send_error(413)
            return
        if self._path() != "/notify":
            self.send_error(404)
            return
        self.server.record(
            {
                "received_at": time.time(),
                "content_type": self.headers.get("Content-Type"),
                "body": _parsed(raw),
            }
        )
        self.send_response(204)
        self.end_headers()

    def do_GET(self) -> None:
        if self._path() != "/notifications":
            self.send_error(404)
            return
        data = json.dumps(self.server.recorded()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _not_found(self) -> None:
        self._body()
        self.send_error(404)

    do_HEAD = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _not_found


class _Receiver(ThreadingHTTPServer):
    """Appends under a lock: concurrent posts never interleave within a line."""

    def __init__(self, address: tuple[str, int], path: Path) -> None:
        super().__init__(address, _Handler)
        self.path = path
        self.lock = threading.Lock()

    def record(self, notification: dict[str, Any]) -> None:
        with self.lock, self.path.open("a") as f:
            f.write(json.dumps(notification) + "\n")
            f.flush()

    def recorded(self) -> list[dict[str, Any]]:
        with self.lock:  # no half-written line
            return read(self.path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("bind", "file", "pid-file"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    _Receiver((args.bind, args.port), Path(args.file)).serve_forever()


if __name__ == "__main__":
    main()
