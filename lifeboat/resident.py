"""The resident command runner: a process beside the Lifeboat server that has Prefect, pydo
and the runbooks imported already, and forks a child per `lifeboat` command.

Importing them takes about 3 s of every command here, more than a status report's own
work; `lifeboat server start` starts this process, and a command run while it answers is
run by a fork of it instead (`delegate`): the command's stdin, stdout and stderr are
handed over a Unix socket (SCM_RIGHTS), the child runs the same CLI in the caller's
directory with the caller's environment, and its exit code comes back. The caller
forwards Ctrl-C (SIGINT), SIGTERM and SIGHUP to the child.

The caller runs the command itself, as without a server, when: no runner answers, the
code or the virtualenv changed since the runner started (it then starts again from the
new code), the caller's PREFECT_* settings differ from the runner's (Prefect reads them
once, at import), LIFEBOAT_RESIDENT=off, or the command is `server`, `lab` or `serve`
(they start and stop long-lived processes).

Forking is safe only while the runner has no thread: it checks that after its imports,
and it never starts one (one loop: accept, fork, reap).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import select
import signal
import socket
import sys
import sysconfig
import threading
import time
import traceback
from pathlib import Path

from lifeboat import server

SOCKET_NAME = server.RESIDENT_SOCKET
LOG_NAME = server.RESIDENT_LOG
LOCAL = frozenset({"server", "lab", "serve"})  # run by the caller, never forked
ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("lifeboat", "flows", "tasks", "blocks", "lab")
MAX_REQUEST = 1 << 20  # argv, cwd and the environment


def socket_path() -> Path:
    return server.home() / SOCKET_NAME


def fingerprint() -> str:
    """What the runner's imports were made of: the interpreter, the project's modules and
    the virtualenv's packages (its directory changes when one is added or replaced)."""
    h = hashlib.sha256(sys.prefix.encode())
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            st = path.stat()
            h.update(f"{path}:{st.st_mtime_ns}:{st.st_size}\n".encode())
    h.update(str(os.stat(sysconfig.get_paths()["purelib"]).st_mtime_ns).encode())
    return h.hexdigest()


def _prefect_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("PREFECT_")}


# --- the caller's side ----------------------------------------------------------------------


def delegate(argv: list[str]) -> int | None:
    """Run the command `argv` in a fork of the runner; its exit code, or None when this
    process must run it itself (see the module's docstring)."""
    words = [a for a in argv if not a.startswith("-")]
    if os.environ.get("LIFEBOAT_RESIDENT") == "off" or (words and words[0] in LOCAL):
        return None
    path = socket_path()
    if not path.exists() or len(str(path)) > 100:
        return None
    server.use_running()  # the PREFECT_API_URL the runner has too
    request = {
        "argv": argv,
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "fingerprint": fingerprint(),
    }
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        try:
            sock.settimeout(5)
            sock.connect(str(path))
            socket.send_fds(sock, [json.dumps(request).encode()], [0, 1, 2])
            answer = json.loads(sock.recv(65536) or b"{}")
        except (OSError, ValueError):
            return None  # no runner, or a broken one: the command runs here
        if "pid" not in answer:
            return None  # declined: stale code or other settings
        sock.settimeout(None)
        return _wait(sock, answer["pid"])


def _wait(sock: socket.socket, pid: int) -> int:
    """Forward signals to the child until it reports its exit code."""

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    data = sock.recv(65536)  # retried after a forwarded signal (PEP 475)
    if not data:
        print("error: the command's process ended without an exit code (killed?)", file=sys.stderr)
        return 1
    return int(json.loads(data)["exit"])


# --- the runner ------------------------------------------------------------------------------


def _preload() -> None:
    """Everything a command imports, so that a fork starts with it."""
    import prefect  # noqa: F401
    import prefect.client.orchestration  # noqa: F401
    import prefect.logging.handlers  # noqa: F401

    import blocks.stack  # noqa: F401
    import flows.after_failover  # noqa: F401
    import flows.backup  # noqa: F401
    import flows.drill  # noqa: F401
    import flows.failover  # noqa: F401
    import flows.recover  # noqa: F401
    import flows.service  # noqa: F401
    import flows.status  # noqa: F401
    import flows.up  # noqa: F401
    import flows.wordpress  # noqa: F401
    import lifeboat.cli  # noqa: F401
    import tasks.context  # noqa: F401

    _warm()


def _warm() -> None:
    """What each command would otherwise build on first use: boto3's S3 model (~0.5 s, kept
    by its default session) and Prefect's parameter encoder. No connection is made."""
    import boto3

    from blocks.stack import StackSpec
    from flows.status import stack_status

    boto3.client(
        "s3",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9",  # never asked: creating a client sends nothing
        aws_access_key_id="warm",
        aws_secret_access_key="warm",  # noqa: S106 - not a secret, nothing is signed
    )
    example = ROOT / "examples" / "compact.yaml"
    if example.exists():
        spec = StackSpec.from_yaml(example)
        stack_status.serialize_parameters({"spec": spec, "credentials": "lab", "stack": None})


def _log(line: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}", flush=True)


def serve_forever() -> None:
    made = fingerprint()  # before the imports: a change while they run counts as a change
    _preload()
    if threading.active_count() != 1:
        names = [t.name for t in threading.enumerate()]
        _log(f"not serving: threads after the imports ({names}); a fork would inherit locks")
        sys.exit(1)
    env = _prefect_env(dict(os.environ))
    path = socket_path()
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old_umask = os.umask(0o077)  # the socket is the operator's alone
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_umask)
    listener.listen(16)
    _log(f"serving commands on {path} (pid {os.getpid()})")
    stale = False
    while not stale:
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        if not select.select([listener], [], [], 1.0)[0]:
            continue
        conn, _ = listener.accept()
        try:
            stale = _handle(conn, listener, made, env)
        except Exception:  # noqa: BLE001 - one bad request must not end the runner
            _log(f"request failed: {traceback.format_exc(limit=3)}")
        finally:
            conn.close()
    listener.close()
    path.unlink(missing_ok=True)
    _log("the code changed: starting again from it")
    os.execv(sys.executable, [sys.executable, "-m", "lifeboat.resident"])  # noqa: S606


def _handle(conn: socket.socket, listener: socket.socket, made: str, env: dict[str, str]) -> bool:
    """Fork a child for one request; True when the code changed (the runner restarts)."""
    data, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST, 3)
    try:
        request = json.loads(data)
        words = " ".join(a for a in request["argv"][:3] if not a.startswith("-"))
        why = ""
        if request["fingerprint"] != made:
            why = "the code or the virtualenv changed since this runner started"
        elif _prefect_env(request["env"]) != env:
            why = "its PREFECT_* settings differ from this runner's"
        if why or len(fds) != 3:
            conn.send(json.dumps({"declined": why or "no stdio"}).encode())
            _log(f"declined `lifeboat {words}`: {why or 'no stdio'}")
            return request["fingerprint"] != made
        pid = os.fork()
        if pid == 0:
            listener.close()
            _child(conn, fds, request)  # never returns
        _log(f"pid {pid}: lifeboat {words}")
        return False
    finally:
        for fd in fds:
            os.close(fd)


def _child(conn: socket.socket, fds: list[int], request: dict) -> None:
    """Become the caller's command: its stdio, directory and environment; run the CLI;
    report the exit code; exit (Prefect's exit handlers first: they send queued logs)."""
    code: int = 1
    try:
        os.setpgid(0, 0)  # stopping the runner's group leaves running commands alone
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["lifeboat", *request["argv"]]
        conn.send(json.dumps({"pid": os.getpid()}).encode())
        from lifeboat.cli import app

        try:
            app(prog_name="lifeboat", args=request["argv"])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except KeyboardInterrupt:
            code = 130
    except BaseException:  # noqa: BLE001 - reported on the caller's stderr, then exit 1
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        with contextlib.suppress(OSError):
            conn.send(json.dumps({"exit": code}).encode())
        os._exit(code)


if __name__ == "__main__":
    serve_forever()
