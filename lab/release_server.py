"""The lab's release server: static files over HTTPS (lab/releases.py starts it).

    python -m lab.release_server --bind IP --port N --dir D --cert C --key K --pid-file F

Files under D are served below /releases/; nothing else answers. `--pid-file` is where
lab/releases.py records this process, and the marker by which `lab down` finds it.
"""

from __future__ import annotations

import argparse
import functools
import ssl
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class _Handler(SimpleHTTPRequestHandler):
    def translate_path(self, path: str) -> str:
        if not path.startswith("/releases/"):
            return "/nonexistent"
        return super().translate_path(path.removeprefix("/releases"))

    def list_directory(self, path):  # type: ignore[no-untyped-def]
        self.send_error(404)
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("bind", "dir", "cert", "key", "pid-file"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    handler = functools.partial(_Handler, directory=args.dir)
    server = ThreadingHTTPServer((args.bind, args.port), handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
