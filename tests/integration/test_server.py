"""`lifeboat server start|status|stop` as an operator runs them: a Prefect server (SQLite
in the state directory) that outlives the command, found by the next command, stopped
with its whole process group. Each test has its own LIFEBOAT_HOME and port."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lifeboat import server
from tests.integration.postgres import free_port

ROOT = Path(__file__).resolve().parents[2]


def lifeboat(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LIFEBOAT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "lifeboat", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_start_status_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = str(free_port())
    started = lifeboat(tmp_path, "server", "start", "--port", port)
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith(f"started: UI http://127.0.0.1:{port}")
    monkeypatch.setenv("LIFEBOAT_HOME", str(tmp_path))
    info = server.running()
    try:
        assert info is not None and server.healthy(info.api_url)
        assert (tmp_path / "prefect").is_dir()  # its PREFECT_HOME, with the SQLite database
        assert server.worker_alive(info), "a process worker starts with it by default"
        again = lifeboat(tmp_path, "server", "start", "--port", port)
        assert again.stdout.startswith("already running:"), again.stdout + again.stderr
        status = lifeboat(tmp_path, "server", "status")
        assert status.returncode == 0 and f"API http://127.0.0.1:{port}/api" in status.stdout
    finally:
        stopped = lifeboat(tmp_path, "server", "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not server.healthy(info.api_url)
    for group in (info.pid, info.worker_pid):
        with pytest.raises(ProcessLookupError):
            os.killpg(group, 0)  # nothing of the server's or the worker's group is left
    status = lifeboat(tmp_path, "server", "status")
    assert status.returncode == 1 and "lifeboat server start" in status.stdout
    assert "no Lifeboat server was running" in lifeboat(tmp_path, "server", "stop").stdout


def test_a_database_url_that_is_not_postgresql_is_refused_before_starting(tmp_path: Path) -> None:
    done = lifeboat(tmp_path, "server", "start", "--database-url", "sqlite:////tmp/x.db")
    assert done.returncode == 2
    assert done.stderr.startswith("error: --database-url must be a PostgreSQL URL")
    assert not (tmp_path / "server.json").exists()


def test_the_session_server_is_seen_from_other_threads(prefect_server) -> None:
    """A runbook started in a thread beside a test (test_backup does) must use the
    session's server: a thread has no settings context of its own, and without the global
    one it would start a temporary server with its own concurrency limits."""
    import threading

    from prefect.settings import get_current_settings

    seen: list[str | None] = []
    thread = threading.Thread(target=lambda: seen.append(get_current_settings().api.url))
    thread.start()
    thread.join()
    assert seen == [prefect_server.api_url]
