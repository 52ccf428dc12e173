"""A Prefect server that stays up (`lifeboat server start|status|stop`), so runs, logs and
artifacts outlive the command that made them and the UI has something to show.

Its state lives in one directory (`LIFEBOAT_HOME`, default `~/.lifeboat`): `server.json`
(address, PID, database), `server.log`, and `prefect/` (the server's PREFECT_HOME, with
its SQLite database unless a PostgreSQL URL is given). Every `lifeboat` command uses the
server recorded there when it answers (`use_running`); without one, Prefect starts a
throwaway server per command, and the CLI says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from lifeboat.waiting import NotYet, WaitTimeout, wait_until

DEFAULT_PORT = 4200
WORK_POOL = "lifeboat"  # the process work pool of deployments/prefect.yaml
STARTUP_TIMEOUT = 120  # first start migrates a fresh database: ~10-20 s here
RESIDENT_SOCKET = "commands.sock"  # lifeboat/resident.py listens here, in home()
RESIDENT_LOG = "resident.log"


class ServerError(Exception):
    """The server could not be started or stopped: what to do about it."""


def home() -> Path:
    return Path(os.environ.get("LIFEBOAT_HOME") or Path.home() / ".lifeboat")


def _state_file() -> Path:
    return home() / "server.json"


@dataclass(frozen=True)
class ServerInfo:
    pid: int
    host: str
    port: int
    database: str  # "sqlite" or the PostgreSQL URL without its password
    started_at: float
    worker_pid: int | None = None  # the process worker on WORK_POOL, when started with one
    resident_pid: int | None = None  # lifeboat.resident: runs the commands, imports done

    @property
    def ui_url(self) -> str:
        # Listening on every address: this machine's clients use loopback.
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host  # noqa: S104
        return f"http://{host}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.ui_url}/api"


def recorded() -> ServerInfo | None:
    try:
        return ServerInfo(**json.loads(_state_file().read_text()))
    except (OSError, ValueError, TypeError):
        return None


def healthy(api_url: str, timeout: float = 2) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as answer:  # noqa: S310 - our own http URL
            return answer.status == 200
    except (OSError, urllib.error.URLError):
        return False


def running() -> ServerInfo | None:
    """The recorded server, when its process lives and its API answers."""
    info = recorded()
    if info is None or not _alive(info.pid) or not healthy(info.api_url):
        return None
    return info


def use_running() -> ServerInfo | None:
    """Point this process's Prefect client at the running server (unless PREFECT_API_URL
    already names one). Must run before Prefect is imported: its settings are read then."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    info = running()
    if info is not None:
        os.environ["PREFECT_API_URL"] = info.api_url
    return info


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _redacted(url: str) -> str:
    """A database URL without its password (it goes into server.json and messages)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def start(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    database_url: str | None = None,
    worker: bool = False,
) -> ServerInfo:
    """Start the server in its own session (it outlives this command); return once its API
    answers. With `worker`, a process worker on the "lifeboat" pool too (deployed runs,
    the automations' runs). A server already running is left as it is (a worker added
    when asked for and not running)."""
    info = running()
    if info is not None:
        if worker and not (info.worker_pid and _alive(info.worker_pid)):
            info = replace(info, worker_pid=_start_worker(info))
        if not (info.resident_pid and _alive(info.resident_pid)):
            info = replace(info, resident_pid=_start_resident(info))
        _state_file().write_text(json.dumps(asdict(info)))
        return info
    if database_url is not None and not database_url.startswith("postgresql+asyncpg://"):
        raise ServerError(
            "--database-url must be a PostgreSQL URL for asyncpg, e.g. "
            "postgresql+asyncpg://prefect:PASSWORD@db.example:5432/prefect"
        )
    state = home()
    (state / "prefect").mkdir(parents=True, exist_ok=True, mode=0o700)
    env = {
        **os.environ,
        "PREFECT_HOME": str(state / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": host,
        "PREFECT_SERVER_API_PORT": str(port),
    }
    planned = ServerInfo(0, host, port, _redacted(database_url or "sqlite"), 0.0)
    env["PREFECT_UI_API_URL"] = planned.api_url  # where the UI in a browser calls the API
    env.pop("PREFECT_API_URL", None)
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    log = (state / "server.log").open("ab")
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter, fixed arguments
        [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    info = replace(planned, pid=proc.pid, started_at=time.time())

    def answering() -> bool:
        if proc.poll() is not None:
            raise ServerError(
                f"the Prefect server exited with code {proc.returncode} while starting: "
                f"see {state / 'server.log'} (is port {port} taken? `--port` picks another)"
            )
        if not healthy(info.api_url):
            raise NotYet(f"{info.api_url}/health does not answer yet")
        return True

    try:
        wait_until("the Prefect server", answering, timeout=STARTUP_TIMEOUT, every=0.5)
    except WaitTimeout as exc:
        _terminate(proc.pid)
        raise ServerError(f"{exc}; see {state / 'server.log'}") from None
    if worker:
        info = replace(info, worker_pid=_start_worker(info))
    info = replace(info, resident_pid=_start_resident(info))
    _state_file().write_text(json.dumps(asdict(info)))
    return info


def _start_beside(info: ServerInfo, log_name: str, *args: str) -> int:
    """`python args...` in its own session (it outlives this command), talking to the
    server, logging beside it, from this checkout. Not waited for."""
    env = {**os.environ, "PREFECT_API_URL": info.api_url}
    with (home() / log_name).open("ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter, fixed arguments
            [sys.executable, *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
    return proc.pid


def _start_worker(info: ServerInfo) -> int:
    """`prefect worker start` on the pool."""
    name = f"lifeboat-{os.uname().nodename}"
    args = ["-m", "prefect", "worker", "start", "--pool", WORK_POOL, "--type", "process"]
    return _start_beside(info, "worker.log", *args, "--name", name)


def _start_resident(info: ServerInfo) -> int:
    """The command runner (lifeboat/resident.py): until its socket exists, commands run as
    without it."""
    return _start_beside(info, RESIDENT_LOG, "-m", "lifeboat.resident")


def resident_alive(info: ServerInfo) -> bool:
    return bool(info.resident_pid) and _alive(info.resident_pid or 0)


def worker_alive(info: ServerInfo) -> bool:
    return bool(info.worker_pid) and _alive(info.worker_pid or 0)


def stop(timeout: float = 30) -> ServerInfo | None:
    """Stop the recorded server (its whole process group); None when none was running."""
    info = recorded()
    if info is None:
        return None
    for helper in (info.worker_pid, info.resident_pid):
        if helper and _alive(helper):
            _terminate(helper, timeout)
    (home() / RESIDENT_SOCKET).unlink(missing_ok=True)
    if _alive(info.pid):
        _terminate(info.pid, timeout)
    _state_file().unlink(missing_ok=True)
    return info


def _terminate(pid: int, timeout: float = 30) -> None:
    # The server runs in its own session: its group holds uvicorn and the services.
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not _alive(pid):
                return
            time.sleep(0.2)
