"""`lifeboat server start|status|stop` as an operator runs them: a Prefect server (SQLite
in the state directory) that outlives the command, found by the next command, stopped
with its whole process group. Each test has its own LIFEBOAT_HOME and port."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lifeboat import resident, server
from lifeboat.waiting import NotYet, wait_until
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
    for group in (info.pid, info.worker_pid, info.resident_pid):
        with pytest.raises(ProcessLookupError):
            os.killpg(group, 0)  # nothing of the server's, worker's or runner's group is left
    assert not resident.socket_path().exists()
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


def _served(home: Path) -> int:
    """How many commands the resident runner has forked so far (its log)."""
    log = home / resident.LOG_NAME
    return log.read_text().count(": lifeboat ") if log.exists() else 0


def _serving(home: Path, times: int = 1) -> None:
    def up() -> bool:
        text = (home / resident.LOG_NAME).read_text() if (home / resident.LOG_NAME).exists() else ""
        if text.count("serving commands on") < times or not (home / "commands.sock").exists():
            raise NotYet(text[-300:] or "no log yet")
        return True

    wait_until("the resident runner", up, timeout=90, every=0.5)


def test_commands_run_in_the_resident_runner_as_they_run_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the server up, a command is forked from the runner (Prefect imported already):
    same output, same exit code, in the caller's directory and environment; declined (and
    run by the caller) when the caller's PREFECT_* settings differ or the code changed, and
    the runner then starts again from the new code."""
    port = str(free_port())
    assert lifeboat(tmp_path, "server", "start", "--port", port, "--no-worker").returncode == 0
    try:
        _serving(tmp_path)
        bad = tmp_path / "bad.yaml"
        bad.write_text("name: x\nnodes: [\n")
        alone = subprocess.run(
            [sys.executable, "-m", "lifeboat", "status", "--spec", "bad.yaml"],
            cwd=tmp_path,
            env={**os.environ, "LIFEBOAT_HOME": str(tmp_path), "LIFEBOAT_RESIDENT": "off"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        env = {**os.environ, "LIFEBOAT_HOME": str(tmp_path)}
        env.pop("PREFECT_API_URL", None)

        def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "lifeboat", *args],
                cwd=tmp_path,  # a relative spec path is the caller's
                env={**env, **extra},
                capture_output=True,
                text=True,
                timeout=120,
            )

        forked = run("status", "--spec", "bad.yaml")
        assert _served(tmp_path) == 1
        assert (forked.returncode, forked.stdout, forked.stderr) == (
            alone.returncode,
            alone.stdout,
            alone.stderr,
        )
        assert forked.returncode == 2 and forked.stderr.startswith("error: ")
        helped = run("drill", "--help")
        assert helped.returncode == 0 and "restore" in helped.stdout
        assert _served(tmp_path) == 2
        # The caller's environment reaches the command: an unknown credentials name is
        # refused naming the LIFEBOAT_HOME-independent block it looked for.
        spec = ROOT / "examples" / "compact.yaml"
        missing = run("status", "--spec", str(spec), "--credentials", "nosuch")
        assert missing.returncode == 2 and "nosuch" in missing.stderr, missing.stderr
        assert _served(tmp_path) == 3

        other = run("status", "--spec", "bad.yaml", PREFECT_LOGGING_LEVEL="DEBUG")
        assert other.returncode == 2 and _served(tmp_path) == 3
        assert "PREFECT_* settings differ" in (tmp_path / resident.LOG_NAME).read_text()

        # The code changed (a module's mtime): declined, run here, and the runner restarts.
        module = ROOT / "lab" / "__init__.py"
        before = module.stat()
        os.utime(module, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
        try:
            stale = run("status", "--spec", "bad.yaml")
        finally:
            os.utime(module, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert stale.returncode == 2 and _served(tmp_path) == 3
        assert "the code or the virtualenv changed" in (tmp_path / resident.LOG_NAME).read_text()
        # It restarted from the touched code, maybe before the mtime was put back: then
        # it restarts once more. Either way it serves again.
        _serving(tmp_path, times=2)

        def served_again() -> bool:
            assert run("status", "--spec", "bad.yaml").returncode == 2
            if _served(tmp_path) < 4:
                raise NotYet("declined: the runner is starting from the restored code")
            return True

        wait_until("a command served by the restarted runner", served_again, 90, every=1)
    finally:
        lifeboat(tmp_path, "server", "stop")
