"""The failover drill's partitions are nftables scripts the real `nft` accepts (checked,
not applied: `nft --check`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tasks.failover import partition_rules
from tests.integration.test_templates import tool


@pytest.mark.parametrize(
    ("fault", "peers"), [("partition", []), ("etcd-partition", ["10.10.0.3", "10.10.0.4"])]
)
def test_nft_accepts_the_partition(fault: str, peers: list[str], tmp_path: Path) -> None:
    nft = tool("nft", "nftables")
    script = tmp_path / "partition.nft"
    script.write_text(partition_rules(fault, peers))
    done = subprocess.run([nft, "--check", "-f", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_nft_check_catches_a_bad_script(tmp_path: Path) -> None:
    nft = tool("nft", "nftables")
    script = tmp_path / "bad.nft"
    script.write_text(partition_rules("etcd-partition", ["10.10.0.300"]))
    done = subprocess.run([nft, "--check", "-f", str(script)], capture_output=True, text=True)
    assert done.returncode != 0
