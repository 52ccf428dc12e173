"""Who may import whom (README, "How the code is laid out"): the lab imports no runbook code, the
runbooks import neither the lab nor the benchmarks. Read from the source, imports inside
functions included. lifeboat.waiting (wait until a condition holds) is a plain helper the
lab shares: it imports nothing of Lifeboat's."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = {"flows", "tasks", "blocks", "lifeboat"}
# Saves the lab's keys as Lifeboat's Prefect blocks: runbook-side glue still kept in lab/
# (its callers: `lifeboat lab up`, the e2e fixtures, the benchmarks).
KNOWN = {("lab/credentials.py", "blocks")}


SHARED = {"lifeboat.waiting"}


def imported(path: Path) -> set[str]:
    """The modules `path` imports (for `from a.b import c`: a.b)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def imports_of(folder: str) -> set[tuple[str, str]]:
    """(file, top-level package) for every import in `folder`, shared helpers left out."""
    found = set()
    for path in sorted((ROOT / folder).rglob("*.py")):
        for name in imported(path) - SHARED:
            found.add((path.relative_to(ROOT).as_posix(), name.split(".")[0]))
    return found


def test_the_shared_helpers_import_nothing_of_lifeboat() -> None:
    for name in SHARED:
        path = ROOT / (name.replace(".", "/") + ".py")
        tops = {n.split(".")[0] for n in imported(path)}
        assert not tops & (RUNBOOK | {"lab", "bench"}), name


def test_the_lab_imports_no_runbook_code_and_no_benchmark() -> None:
    wrong = {(f, top) for f, top in imports_of("lab") if top in RUNBOOK | {"bench"}}
    assert wrong == KNOWN


def test_the_runbooks_import_neither_the_benchmarks_nor_the_lab_but_for_its_cli() -> None:
    for folder in ("flows", "tasks", "blocks", "lifeboat"):
        for f, top in imports_of(folder):
            assert top != "bench", f
            # `lifeboat lab ...` drives the local cloud; nothing below the CLI does.
            assert top != "lab" or f == "lifeboat/cli.py", f


def test_only_flows_and_the_cli_import_flows() -> None:
    """Work lives in tasks/: nothing below a flow calls up into one."""
    for folder in ("tasks", "blocks", "lab"):
        assert not [f for f, top in imports_of(folder) if top == "flows"], folder
