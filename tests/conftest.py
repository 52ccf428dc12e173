"""Test ordering: tests that take the whole lab down and up run last."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("lab_lifecycle") is not None)
