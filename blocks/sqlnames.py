"""The one place that says which names PostgreSQL refuses for a role or a database.

RESERVED is PostgreSQL 15's reserved key words: the words `pg_get_keywords()` of
PostgreSQL 15.18 (Debian 15.18-0+deb12u1) lists with catcode 'R' (reserved) or 'T'
(reserved, can be function or type), i.e. the "reserved" entries of the PostgreSQL column
of the manual's Appendix C, "SQL Key Words", and src/include/parser/kwlist.h's
RESERVED_KEYWORD and TYPE_FUNC_NAME_KEYWORD. Unquoted, `CREATE ROLE user` is a syntax
error, and so is `CREATE DATABASE left`. tests/integration/test_sql.py compares this list
with the running server's.

Beyond the key words, PostgreSQL refuses the role names `public` and `none` and any role
named `pg_...` ("role name ... is reserved").
"""

from __future__ import annotations

import re

RESERVED: frozenset[str] = frozenset(
    """
    all analyse analyze and any array as asc asymmetric authorization binary both case cast
    check collate collation column concurrently constraint create cross current_catalog
    current_date current_role current_schema current_time current_timestamp current_user
    default deferrable desc distinct do else end except false fetch for foreign freeze from
    full grant group having ilike in initially inner intersect into is isnull join lateral
    leading left like limit localtime localtimestamp natural not notnull null offset on only
    or order outer overlaps placing primary references returning right select session_user
    similar some symmetric table tablesample then to trailing true union unique user using
    variadic verbose when where window with
    """.split()  # noqa: SIM905 - 100 words read better as text
)
RESERVED_ROLES: frozenset[str] = frozenset({"public", "none"})

# Lowercase (PostgreSQL folds unquoted names to lowercase), at most 63 bytes (NAMEDATALEN).
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def check(value: str, *, role: bool, example: str) -> str:
    """`value` if PostgreSQL takes it unquoted as a role (`role`) or database name, else a
    ValueError saying what to write instead."""
    if not _NAME.match(value):
        raise ValueError(
            f"{value!r}: use lowercase letters, digits and '_', not starting with a digit, "
            f"at most 63 characters, e.g. {example!r}"
        )
    if value in RESERVED:
        raise ValueError(
            f"{value!r} is a reserved word in PostgreSQL 15 (SQL naming it fails): "
            f"choose another name, e.g. {example!r}"
        )
    if role and (value in RESERVED_ROLES or value.startswith("pg_")):
        raise ValueError(
            f"{value!r} is a role name PostgreSQL reserves ('public', 'none', 'pg_*'): "
            f"choose another name, e.g. {example!r}"
        )
    return value
