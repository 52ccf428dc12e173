"""One Patroni version: what the droplets run (tasks/wheelhouse.py owns the pin) is what
the unit tests validate configs with (pyproject's dev dependency must follow it)."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

from tasks.wheelhouse import PATRONI_REQUIREMENT

ROOT = Path(__file__).resolve().parents[2]


def test_the_test_patroni_is_the_droplet_patroni():
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]["dev"]
    assert PATRONI_REQUIREMENT in dev, "pyproject's dev patroni pin differs from the droplets'"
    assert PATRONI_REQUIREMENT.endswith("==" + version("patroni"))
