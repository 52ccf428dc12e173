"""Everything a Lifeboat run leaves for people to read, to search it for secrets: Prefect
logs, artifacts, flow and task run state messages and parameters, and the lab's own logs."""

from __future__ import annotations

import json
from pathlib import Path

from prefect.client.orchestration import get_client

from lab.config import RUN_DIR

PAGE = 200


def _paged(read, **kwargs) -> list:
    out, offset = [], 0
    while True:
        batch = read(limit=PAGE, offset=offset, **kwargs)
        out += batch
        if len(batch) < PAGE:
            return out
        offset += PAGE


def readable_texts() -> dict[str, str]:
    """name -> text, for every place a secret must never show up."""
    texts: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        for log in _paged(client.read_logs):
            texts[f"log {log.id}"] = log.message
        for art in _paged(client.read_artifacts):
            texts[f"artifact {art.key or art.id}"] = json.dumps(art.data, default=str) + str(
                art.description
            )
        for run in _paged(client.read_flow_runs):
            state = run.state.message if run.state else ""
            texts[f"flow run {run.name}"] = f"{state} {json.dumps(run.parameters, default=str)}"
        for run in _paged(client.read_task_runs):
            texts[f"task run {run.name}"] = run.state.message if run.state else ""
    for log in RUN_DIR.glob("*.log"):
        texts[f"lab log {log.name}"] = log.read_text(errors="replace")
    return texts


def leaks(secrets: dict[str, str], texts: dict[str, str]) -> list[str]:
    """Which secret shows up where (by name only: never print the secret itself)."""
    return [
        f"{name} in {where}"
        for name, value in secrets.items()
        for where, text in texts.items()
        if value and value in (text or "")
    ]


def ssh_key_fragments(private_key_path: str) -> dict[str, str]:
    """The base64 lines of a private key: any of them in a text is a leak."""
    lines = Path(private_key_path).read_text().splitlines()
    return {
        f"ssh private key line {i}": line for i, line in enumerate(lines) if "PRIVATE" not in line
    }


def stored_secrets() -> dict[str, str]:
    """Every generated secret the runs stored (Prefect Secret blocks, all stacks), by block
    name: whatever a runbook generated is covered without listing it here."""
    with get_client(sync_client=True) as client:
        docs = client.read_block_documents(include_secrets=True)
    return {
        doc.name: str(doc.data.get("value", ""))
        for doc in docs
        if doc.block_type and doc.block_type.slug == "secret" and doc.name
    }
