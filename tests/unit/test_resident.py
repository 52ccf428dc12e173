"""Which commands the resident runner may run (lifeboat/resident.py): never the ones that
start or stop long-lived processes, never when switched off or when no runner listens."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifeboat import resident


@pytest.fixture
def listening(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A LIFEBOAT_HOME whose socket file exists but that nothing listens on: a command that
    tried it would fail to connect and run itself, which `delegate` says as None too, so
    these tests check whether it tried (it computes the fingerprint first). Returns the
    list of tries."""
    monkeypatch.setenv("LIFEBOAT_HOME", str(tmp_path))
    sock = tmp_path / resident.SOCKET_NAME
    sock.touch()
    tried: list[str] = []
    monkeypatch.setattr(resident, "fingerprint", lambda: tried.append("yes") or "x")
    monkeypatch.setattr(resident.server, "use_running", lambda: None)
    return tried


@pytest.mark.parametrize(
    "argv",
    [["server", "start"], ["lab", "up"], ["--debug", "lab", "down"], ["serve", "--spec", "x"]],
)
def test_local_commands_are_never_forked(listening: list[str], argv: list[str]) -> None:
    assert resident.delegate(argv) is None
    assert listening == []


def test_switched_off(listening: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFEBOAT_RESIDENT", "off")
    assert resident.delegate(["status", "--spec", "x.yaml"]) is None
    assert listening == []


def test_no_runner_listening_means_run_here(listening: list[str]) -> None:
    assert resident.delegate(["status", "--spec", "x.yaml"]) is None
    assert listening == ["yes"]  # it did try, and fell back


def test_no_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFEBOAT_HOME", str(tmp_path))
    assert resident.delegate(["status"]) is None


def test_fingerprint_follows_the_code(tmp_path: Path) -> None:
    import os

    module = resident.ROOT / "lab" / "__init__.py"
    before = module.stat()
    first = resident.fingerprint()
    assert resident.fingerprint() == first
    os.utime(module, ns=(before.st_atime_ns, before.st_mtime_ns + 1))
    try:
        assert resident.fingerprint() != first
    finally:
        os.utime(module, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert resident.fingerprint() == first
