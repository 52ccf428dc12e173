"""The Patroni wheelhouse is built only from archives whose SHA-256 the pinned file names:
one hash changed (as a changed or substituted release would look) stops the build, naming
the package, and leaves no wheelhouse marked complete. Uses the package index, as the
build does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tasks import wheelhouse


def test_a_release_whose_hash_differs_stops_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = wheelhouse.REQUIREMENTS.read_text()
    # ydiff is small and has one archive: its only hash, one digit changed.
    block = re.search(r"^ydiff==\S+ \\\n    --hash=sha256:([0-9a-f]{64})", text, re.M)
    assert block, "ydiff's pin moved: pick another small package for this test"
    good = block.group(1)
    bad = good[:-1] + ("0" if good[-1] != "0" else "1")
    changed = tmp_path / "patroni-requirements.txt"
    changed.write_text(text.replace(good, bad))
    monkeypatch.setattr(wheelhouse, "REQUIREMENTS", changed)
    monkeypatch.setattr(wheelhouse, "CACHE", tmp_path / "cache")

    with pytest.raises(RuntimeError, match="(?i)hash") as failed:
        wheelhouse.build_wheelhouse()
    assert "ydiff" in str(failed.value)
    assert not list((tmp_path / "cache").glob("*/complete"))
