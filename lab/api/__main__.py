"""`python -m lab.api --host H --port P --token-file F --state-file S`: serve the stand-in
over the lab's real machine layer."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import uvicorn

from lab.api.app import create_app
from lab.config import API_PORT, GATEWAY, STATE_FILE


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.api", description=__doc__)
    parser.add_argument("--host", default=str(GATEWAY))
    parser.add_argument("--port", type=int, default=API_PORT)
    parser.add_argument("--token-file", type=Path, required=True)
    parser.add_argument("--state-file", type=Path, default=STATE_FILE)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    token = args.token_file.read_text().strip()
    if not token:
        parser.error(f"{args.token_file} is empty")

    from lab.machine import MachineCloud  # written alongside; imported late on purpose

    app = create_app(MachineCloud(), token, args.state_file)
    # The access log shows paths and statuses only, never the Authorization header.
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
