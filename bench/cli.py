"""Benchmark of how fast `lifeboat` commands answer with the Lifeboat server up (not a
test): prints figures only.

    uv run python -m bench.cli [--spec examples/article.yaml] [--rounds 5]

Needs a running server (`lifeboat server start`) and the stack up. Each command is timed
as an operator runs it (`.venv/bin/lifeboat ...`, a new process each time), run by the
resident runner and by itself (LIFEBOAT_RESIDENT=off), alternating, the same command on
both sides: to its exit, and to its first line of output (a long runbook's answer is that
it has started: Prefect's "Beginning flow run" line). Prints every round, the median and
spread of each side, and the ratio of the medians. `up` on a healthy stack changes
nothing, so it can be repeated.
"""

from __future__ import annotations

import argparse
import os
import select
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
        "up (a rerun: nothing to change)": ["up", "--spec", spec],
    }


def timed(argv: list[str], resident_on: bool) -> tuple[float, float, int]:
    """(seconds to exit, seconds to the first byte on stdout or stderr, exit code)."""
    env = dict(os.environ)
    env.pop("LIFEBOAT_RESIDENT", None)
    if not resident_on:
        env["LIFEBOAT_RESIDENT"] = "off"
    t = time.monotonic()
    first = None
    with subprocess.Popen(  # noqa: S603 - our own command
        [BIN, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        streams = [proc.stdout, proc.stderr]
        while streams:
            for stream in select.select(streams, [], [], 300)[0]:
                if not os.read(stream.fileno(), 65536):
                    streams.remove(stream)
                elif first is None:
                    first = time.monotonic() - t
        code = proc.wait(300)
    total = time.monotonic() - t
    return total, first if first is not None else total, code


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
        runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        codes = set()
        timed(argv, True)  # one run first: the runner may restart if the code changed
        for _ in range(args.rounds):
            for side in (True, False):  # alternating: resident, by itself, resident...
                total, first, code = timed(argv, side)
                runs[side].append((total, first))
                codes.add(code)
        print(f"\n{name} (exit codes {sorted(codes)})")
        for what, i in (("to exit", 0), ("to first output", 1)):
            on = [r[i] for r in runs[True]]
            off = [r[i] for r in runs[False]]
            for label, times in (("resident", on), ("by itself", off)):
                rounds = " ".join(f"{t:.2f}" for t in times)
                print(
                    f"  {what:15s} {label:9s} median {statistics.median(times):.2f} s "
                    f"[{min(times):.2f}-{max(times):.2f}]  rounds: {rounds}"
                )
            ratio = statistics.median(on) / statistics.median(off)
            print(
                f"  {what:15s} ratio resident/by itself {ratio:.2f}x; under 3 s: "
                f"{sum(t < 3 for t in on)}/{len(on)} resident, "
                f"{sum(t < 3 for t in off)}/{len(off)} by itself"
            )


if __name__ == "__main__":
    main()
