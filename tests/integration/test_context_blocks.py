"""Opening a stack context with credentials blocks that are not stored fails before
anything is created, naming the block and how to save it (a real Prefect server)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from blocks.stack import StackSpec
from tasks.context import ClusterError, StackContext, check_blocks

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_missing_blocks_are_named_before_anything_runs(prefect_server: None) -> None:
    name = f"missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ClusterError, match=rf"no .* block named '{name}'.*lifeboat lab blocks"):
        check_blocks(name)
    with pytest.raises(ClusterError, match=name):
        StackContext.open(StackSpec.from_yaml(EXAMPLES / "compact.yaml"), name)
