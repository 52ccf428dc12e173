"""Who may import whom (README, "Layout"): the local cloud imports no runbook code, the
runbooks import neither the lab nor the benchmarks. Read from the source, imports inside
functions included."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = {"flows", "tasks", "blocks", "lifeboat"}
# Saves the lab's keys as Lifeboat's Prefect blocks: runbook-side glue still kept in lab/
# (its callers: `lifeboat lab up`, the e2e fixtures, the benchmarks).
KNOWN = {("lab/credentials.py", "blocks")}


def imported_tops(path: Path) -> set[str]:
    tops = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            tops |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.split(".")[0])
    return tops


def imports_of(folder: str) -> dict[tuple[str, str], None]:
    found = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        for top in imported_tops(path):
            found[(path.relative_to(ROOT).as_posix(), top)] = None
    return found


def test_the_lab_imports_no_runbook_code_and_no_benchmark() -> None:
    wrong = {(f, top) for f, top in imports_of("lab") if top in RUNBOOK | {"bench"}}
    assert wrong == KNOWN


def test_the_runbooks_import_neither_the_benchmarks_nor_the_lab_but_for_its_cli() -> None:
    for folder in ("flows", "tasks", "blocks", "lifeboat"):
        for f, top in imports_of(folder):
            assert top != "bench", f
            # `lifeboat lab ...` drives the local cloud; nothing below the CLI does.
            assert top != "lab" or f == "lifeboat/cli.py", f
