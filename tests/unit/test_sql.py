"""tasks/sql.py: the one psql command builder, word by word (tests/integration/test_sql.py
runs its commands against a real PostgreSQL)."""

from __future__ import annotations

import shlex

import pytest

from tasks import sql

AWKWARD = 'it\'s "quoted" $HOME `id` $$dollars$$ \\ back\nslash; -- not a comment'


def test_local_is_the_droplets_own_server_as_postgres():
    assert sql.command(sql.LOCAL, "SELECT 1") == (
        "runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -h /var/run/postgresql -c 'SELECT 1'"
    )


def test_through_haproxy_as_root_with_a_password_file_never_a_password():
    target = sql.through_haproxy(5000, "wp user", "wp;db", "/root/.pgpass")
    assert sql.command(target, file="/root/x y.sql") == (
        "env PGPASSFILE=/root/.pgpass PGCONNECT_TIMEOUT=5 psql -XAtq -v ON_ERROR_STOP=1 "
        "-h 127.0.0.1 -p 5000 -U 'wp user' -d 'wp;db' -f '/root/x y.sql'"
    )


def test_debian_cluster_and_any_sql_survive_the_shell():
    words = shlex.split(sql.command(sql.Target(cluster="15/main"), AWKWARD))
    assert words[words.index("--cluster") + 1] == "15/main" and "-h" not in words
    assert words[-2:] == ["-c", AWKWARD]
    with pytest.raises(ValueError):
        sql.command(sql.LOCAL)
    with pytest.raises(ValueError):
        sql.command(sql.LOCAL, "SELECT 1", file="/x")
    assert sql.literal("it's") == "'it''s'"
