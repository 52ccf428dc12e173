"""One Patroni version: what the droplets run (tasks/wheelhouse.py owns the pin) is what
the unit tests validate configs with (pyproject's dev dependency must follow it)."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

from tasks.wheelhouse import PATRONI_REQUIREMENT, REQUIREMENTS

ROOT = Path(__file__).resolve().parents[2]


def test_the_test_patroni_is_the_droplet_patroni():
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]["dev"]
    assert PATRONI_REQUIREMENT in dev, "pyproject's dev patroni pin differs from the droplets'"
    assert PATRONI_REQUIREMENT.endswith("==" + version("patroni"))


def test_the_hashed_requirements_pin_the_same_patroni():
    """The wheelhouse is built from the hashed file: it must pin the same release, every
    line with a hash (pip's --require-hashes refuses otherwise), from the .in beside it."""
    source = REQUIREMENTS.with_suffix(".in").read_text().splitlines()
    assert PATRONI_REQUIREMENT in source
    text = REQUIREMENTS.read_text()
    assert "\npatroni==" + PATRONI_REQUIREMENT.split("==")[1] + " \\\n" in text
    pins = [line for line in text.splitlines() if line and not line.startswith((" ", "#"))]
    assert pins and all(line.endswith(" \\") and "==" in line for line in pins), pins
