"""tasks/sql.py run for real: invoke's local runner stands in for the SSH connection
(hosts.run calls the same `.run`), against a PostgreSQL 15 on a unix socket and 127.0.0.1.
Needs postgresql-15 and root (psql runs as postgres through runuser, as on a droplet)."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import invoke
import pytest

from tasks import sql
from tests.integration.postgres import BIN, running_postgres
from tests.unit.test_sql import AWKWARD


@dataclass
class Server:
    base: Path
    port: int

    def target(self, **kwargs: object) -> sql.Target:
        return sql.Target(host=str(self.base), port=self.port, psql=str(BIN / "psql"), **kwargs)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """Peer (trust) on its socket, a password over TCP on 127.0.0.1."""
    with running_postgres("lifeboat-sql-") as (base, port):
        yield Server(base, port)


def test_rows_fields_and_awkward_sql_come_back_intact(server: Server):
    conn = invoke.Context()
    literal = sql.literal(AWKWARD)
    assert sql.query(conn, f"SELECT {literal}", server.target()) == AWKWARD
    assert sql.query(conn, "SELECT 1, 'a' UNION ALL SELECT 2, 'b'", server.target()) == "1|a\n2|b"
    assert sql.query(conn, "SELECT current_user", server.target()) == "postgres"  # runuser
    assert sql.psql(conn, "CHECKPOINT", server.target()).stdout == ""  # no command tags


def test_failures_raise_or_come_back_with_warn(server: Server):
    conn = invoke.Context()
    with pytest.raises(invoke.UnexpectedExit):
        sql.query(conn, "SELECT nonsense", server.target())
    res = sql.psql(conn, "SELECT nonsense", server.target(), warn=True)
    assert not res.ok and "nonsense" in res.stderr


def test_a_script_stops_at_its_first_error(server: Server):
    conn = invoke.Context()
    script = server.base / "script.sql"  # where postgres can read it
    script.write_text(
        "CREATE TABLE first_one (k int);\nSELECT nonsense;\nCREATE TABLE after (k int);\n"
    )
    script.chmod(0o644)
    res = sql.psql(conn, target=server.target(), file=str(script), warn=True)
    assert not res.ok and "nonsense" in res.stderr
    found = sql.query(
        conn,
        "SELECT string_agg(relname, ',') FROM pg_class WHERE relname IN ('first_one', 'after')",
        server.target(),
    )
    assert found == "first_one"


def test_a_password_travels_in_the_password_file_only(server: Server, tmp_path: Path):
    """As root over TCP, the way WordPress's role and HAProxy's checks connect."""
    conn = invoke.Context()
    password = "pw:with'quote"
    sql.query(conn, f"CREATE ROLE tester LOGIN PASSWORD {sql.literal(password)}", server.target())
    passfile = tmp_path / "pgpass"
    fd = os.open(passfile, os.O_WRONLY | os.O_CREAT, 0o600)
    escaped = password.replace(":", "\\:")  # pgpass's own escaping
    os.write(fd, f"127.0.0.1:{server.port}:*:tester:{escaped}\n".encode())
    os.close(fd)
    target = sql.through_haproxy(server.port, "tester", "postgres", str(passfile))
    target = replace(target, psql=str(BIN / "psql"))
    command = sql.command(target, "SELECT current_user")
    assert password not in command
    assert sql.query(conn, "SELECT current_user", target) == "tester"
    wrong = tmp_path / "wrong"
    fd = os.open(wrong, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, f"127.0.0.1:{server.port}:*:tester:nope\n".encode())
    os.close(fd)
    denied = replace(target, passfile=str(wrong))
    res = sql.psql(conn, "SELECT 1", denied, warn=True)
    assert not res.ok and "password authentication failed" in res.stderr


def test_a_password_set_as_its_scram_verifier_logs_in_and_matches_postgresqls(
    server: Server, tmp_path: Path
):
    """PostgreSQL's own verifier for a password, rebuilt with its salt and iterations, is
    ours byte for byte; a role given only our verifier logs in with the password."""
    conn = invoke.Context()
    password = "Gen3rated-Passw0rd_x"
    sql.query(conn, f"CREATE ROLE scram1 LOGIN PASSWORD {sql.literal(password)}", server.target())
    stored = sql.query(
        conn, "SELECT rolpassword FROM pg_authid WHERE rolname = 'scram1'", server.target()
    )
    iterations, salt = stored.split("$")[1].split(":")
    assert sql.scram_verifier(password, base64.b64decode(salt), int(iterations)) == stored
    assert sql.scram_matches(stored, password)
    assert not sql.scram_matches(stored, password + "x")
    assert not sql.scram_matches("md5" + "0" * 32, password)

    verifier = sql.scram_verifier(password)
    assert password not in verifier
    sql.query(conn, f"CREATE ROLE scram2 LOGIN PASSWORD {sql.literal(verifier)}", server.target())
    passfile = tmp_path / "pgpass"
    fd = os.open(passfile, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, f"127.0.0.1:{server.port}:*:scram2:{password}\n".encode())
    os.close(fd)
    target = replace(
        sql.through_haproxy(server.port, "scram2", "postgres", str(passfile)),
        psql=str(BIN / "psql"),
    )
    assert sql.query(conn, "SELECT current_user", target) == "scram2"


def test_the_spec_refuses_exactly_postgresqls_reserved_words(server: Server):
    """blocks/sqlnames.py's list is the server's own; each word fails as a role name."""
    from blocks.sqlnames import RESERVED

    conn = invoke.Context()
    words = sql.query(
        conn, "SELECT word FROM pg_get_keywords() WHERE catcode IN ('R', 'T')", server.target()
    )
    assert set(words.split()) == RESERVED
    for word in ("user", "select", "left"):
        with pytest.raises(invoke.UnexpectedExit):
            sql.psql(conn, f"CREATE DATABASE {word}", server.target())
