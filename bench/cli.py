"""Benchmark of how fast `lifeboat` commands answer with the Lifeboat server up (not a
test): prints figures only.

    uv run python -m bench.cli [--spec examples/article.yaml] [--rounds 5]

Needs a running server (`lifeboat server start`) and the stack up. Each command is timed
end to end as an operator runs it (`.venv/bin/lifeboat ...`, a new process each time),
run by the resident runner and by itself (LIFEBOAT_RESIDENT=off), alternating, the same
command on both sides. Prints every round, the median and spread of each side, and the
ratio of the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from lifeboat import resident, server

BIN = Path(sys.executable).parent / "lifeboat"


def commands(spec: str) -> dict[str, list[str]]:
    return {
        "status": ["status", "--spec", spec],
        "backup-health": ["backup-health", "--spec", spec],
        "drill restore, refused (no such backup)": [
            "drill",
            "restore",
            "--spec",
            spec,
            "--backup",
            "nosuch",
        ],
        "--help": ["--help"],
    }


def timed(argv: list[str], resident_on: bool) -> tuple[float, int]:
    env = dict(os.environ)
    env.pop("LIFEBOAT_RESIDENT", None)
    if not resident_on:
        env["LIFEBOAT_RESIDENT"] = "off"
    t = time.monotonic()
    done = subprocess.run([BIN, *argv], env=env, capture_output=True, timeout=300, check=False)  # noqa: S603
    return time.monotonic() - t, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", default="examples/article.yaml")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    info = server.running()
    if info is None or not resident.socket_path().exists():
        sys.exit("needs `lifeboat server start` (with its resident runner up)")
    print(f"server {info.api_url}, runner pid {info.resident_pid}, {args.rounds} rounds")
    for name, argv in commands(args.spec).items():
        on: list[float] = []
        off: list[float] = []
        codes = set()
        timed(argv, True)  # one run first: the runner may restart if the code changed
        for _ in range(args.rounds):
            for side, times in ((True, on), (False, off)):
                seconds, code = timed(argv, side)
                times.append(seconds)
                codes.add(code)
        print(f"\n{name} (exit codes {sorted(codes)})")
        for label, times in (("resident", on), ("by itself", off)):
            rounds = " ".join(f"{t:.2f}" for t in times)
            print(
                f"  {label:10s} median {statistics.median(times):.2f} s "
                f"[{min(times):.2f}-{max(times):.2f}]  rounds: {rounds}"
            )
        ratio = statistics.median(on) / statistics.median(off)
        print(
            f"  ratio resident/by itself: {ratio:.2f}x; under 3 s: {sum(t < 3 for t in on)}"
            f"/{len(on)} resident, {sum(t < 3 for t in off)}/{len(off)} by itself"
        )


if __name__ == "__main__":
    main()
