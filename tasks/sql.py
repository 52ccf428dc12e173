"""SQL on a droplet: the one way Lifeboat builds a psql command line and runs it over SSH.

Every query goes through `psql -XAtq -v ON_ERROR_STOP=1`: no ~/.psqlrc, unaligned rows,
fields split by '|', no headers, footers or command tags, and a script (`-f`) stops at
its first error with a non-zero exit instead of carrying on. Everything that varies
(socket or address, port, role, database, the OS user psql runs as, the password file)
is a `Target`; every word of the command is quoted with shlex, so SQL travels intact
whatever quotes, dollars or newlines it holds.

Passwords never appear on a command line: a password reaches psql through a 0600 password
file named by PGPASSFILE (placed with `tasks.hosts.put`), and SQL that carries one is run
from a 0600 file with `file=`. Nor in SQL PostgreSQL could log (a failing statement is
logged whole): a role's password is set as its SCRAM-SHA-256 verifier (`scram_verifier`),
which lets the server check a login but not log in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import shlex
from dataclasses import dataclass

from fabric import Connection
from invoke.runners import Result

from tasks.hosts import run, secret_file

SOCKET_DIR = "/var/run/postgresql"  # Debian's, where Patroni's PostgreSQL listens too
FLAGS = ("-XAtq", "-v", "ON_ERROR_STOP=1")


@dataclass(frozen=True)
class Target:
    """Where psql connects, and as whom."""

    host: str = SOCKET_DIR  # a socket directory, or an address
    port: int | None = None  # None: psql's default (5432)
    user: str | None = None  # -U; None: the OS user's name (peer authentication)
    database: str | None = None  # -d; None: the role's name
    os_user: str | None = "postgres"  # psql runs as this user (runuser); None: the SSH user
    passfile: str | None = None  # PGPASSFILE
    connect_timeout: int | None = None  # PGCONNECT_TIMEOUT, seconds
    cluster: str | None = None  # Debian's `--cluster VERSION/NAME` instead of host and port
    psql: str = "psql"  # Debian's wrapper, or a version's own binary


# The droplet's own PostgreSQL (Patroni's), as postgres over its unix socket.
LOCAL = Target()


def through_haproxy(port: int, user: str, database: str, passfile: str) -> Target:
    """HAProxy's port on this droplet, as `user` (as root, the password from `passfile`)."""
    return Target(
        host="127.0.0.1",
        port=port,
        user=user,
        database=database,
        os_user=None,
        passfile=passfile,
        connect_timeout=5,
    )


def command(target: Target, sql: str | None = None, file: str | None = None) -> str:
    """The shell command that runs `sql` (or the script at `file`, on the droplet)."""
    if (sql is None) == (file is None):
        raise ValueError("give psql either sql or file")
    words: list[str] = []
    if target.os_user:
        words += ["runuser", "-u", target.os_user, "--"]
    env = {"PGPASSFILE": target.passfile, "PGCONNECT_TIMEOUT": target.connect_timeout}
    if any(v is not None for v in env.values()):
        words += ["env", *(f"{k}={v}" for k, v in env.items() if v is not None)]
    words += [target.psql, *FLAGS]
    if target.cluster:
        words += ["--cluster", target.cluster]
    else:
        words += ["-h", target.host]
        if target.port is not None:
            words += ["-p", str(target.port)]
    if target.user:
        words += ["-U", target.user]
    if target.database:
        words += ["-d", target.database]
    words += ["-c", sql] if sql is not None else ["-f", file]  # type: ignore[list-item]
    return shlex.join(words)


def psql(
    conn: Connection,
    sql: str | None = None,
    target: Target = LOCAL,
    *,
    file: str | None = None,
    timeout: int = 30,
    warn: bool = False,
) -> Result:
    """Run it on the droplet; the Result (with `warn`, a failure is returned, not raised)."""
    return run(conn, command(target, sql, file), timeout=timeout, warn=warn)


def query(conn: Connection, sql: str, target: Target = LOCAL, timeout: int = 30) -> str:
    """One query's output, stripped (rows by newline, fields by '|'); raises on failure."""
    return psql(conn, sql, target, timeout=timeout).stdout.strip()


def literal(value: str) -> str:
    """A SQL string literal (standard_conforming_strings, PostgreSQL's default)."""
    return "'" + value.replace("'", "''") + "'"


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 secret PostgreSQL stores for `password` (its `scram_build_secret`,
    RFC 5802/7677; 4096 iterations and a 16-byte salt, as libpq's PQencryptPasswordConn).
    `ALTER ROLE r PASSWORD '<verifier>'` stores it as is, so the password itself never
    reaches the server. PostgreSQL normalises the password with SASLprep first; for ASCII
    that is the identity, and the generated passwords are ASCII (others are refused)."""
    if not password.isascii():
        raise ValueError("a role password must be ASCII here (SASLprep is not applied)")
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def scram_matches(verifier: str, password: str) -> bool:
    """Whether a stored SCRAM-SHA-256 verifier (pg_authid.rolpassword) is `password`'s:
    rebuilt with its own salt and iterations, so a rerun can tell a role's password is in
    step without logging in (or setting it again)."""
    try:
        method, rest = verifier.split("$", 1)
        iterations, salt = rest.split("$", 1)[0].split(":", 1)
        if method != "SCRAM-SHA-256":
            return False
        rebuilt = scram_verifier(password, base64.b64decode(salt, validate=True), int(iterations))
    except ValueError:  # not a SCRAM verifier (md5, none): not in step
        return False
    return hmac.compare_digest(rebuilt, verifier)


SCRIPT = "/var/lib/postgresql/.lifeboat-secret.sql"  # postgres's home: only it reads it


def run_secret_script(conn: Connection, sql: str) -> None:
    """SQL that carries a password's verifier (never the password), on the droplet's own
    PostgreSQL (LOCAL): from a 0600 file of postgres's, removed at once, never on a
    command line."""
    with secret_file(conn, SCRIPT, sql + "\n", owner="postgres:postgres"):
        res = psql(conn, file=SCRIPT, timeout=60, warn=True)
    if not res.ok:
        reason = (res.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"psql script on {conn.host} failed: {reason}")


LOGIN_ONLY = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"


def ensure_login_role(conn: Connection, role: str, password: str) -> list[str]:
    """On the droplet's own PostgreSQL (the primary, over its socket as postgres): `role`
    may log in and nothing else, and its stored verifier is `password`'s (compared with
    `scram_matches`, so a rerun changes nothing). Returns what changed."""
    row = query(
        conn,
        "SELECT rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication OR rolbypassrls "
        "OR NOT rolcanlogin, coalesce(rolpassword, '') FROM pg_authid "
        f"WHERE rolname = {literal(role)}",
    )
    verifier = literal(scram_verifier(password))
    if not row:
        run_secret_script(conn, f"CREATE ROLE {role} {LOGIN_ONLY} PASSWORD {verifier};")
        return [f"created role {role}"]
    flags, stored = row.split("|", 1)
    done = []
    if flags == "t":
        query(conn, f"ALTER ROLE {role} {LOGIN_ONLY}")
        done.append(f"reset role {role} to login only")
    if not scram_matches(stored, password):
        run_secret_script(conn, f"ALTER ROLE {role} PASSWORD {verifier};")
        done.append(f"set {role}'s password from the Secret block")
    return done
