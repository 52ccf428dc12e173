"""Compare a PostgreSQL setting as written in a spec ('8MB', 100, true, '5min') with what
the server reports in pg_settings (`setting` in the parameter's base `unit`), so a run can
tell "applied" from "not yet" without string tricks ('8MB' == 8192 kB == 1024 x 8kB)."""

from __future__ import annotations

import re

_MEMORY = {"B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
_TIME = {"us": 0.001, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
_NUMBER = re.compile(r"^\s*(-?[0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")
_TRUE = {"on", "true", "yes", "1", "t", "y"}
_FALSE = {"off", "false", "no", "0", "f", "n"}


def _unit_scale(unit: str | None) -> tuple[dict[str, float], float] | None:
    """The unit family of a pg_settings unit ('8kB', 'kB', 'ms', 'min'...) and the size of
    one such unit in the family's smallest terms."""
    if not unit:
        return None
    match = re.match(r"^([0-9]*)([A-Za-z]+)$", unit)
    if not match:
        return None
    count = int(match[1] or 1)
    for family in (_MEMORY, _TIME):
        if match[2] in family:
            return family, count * family[match[2]]
    return None


def as_base(value: object, unit: str | None) -> float | None:
    """`value` (spec form) in multiples of `unit` (pg_settings form), or None if it is not a
    number this unit can express."""
    text = str(value)
    match = _NUMBER.match(text)
    if not match:
        return None
    number, suffix = float(match[1]), match[2]
    scale = _unit_scale(unit)
    if not suffix:
        return number  # a bare number is already in the parameter's unit
    if scale is None:
        return None
    family, size = scale
    if suffix not in family:
        return None
    return number * family[suffix] / size


def _bool(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    return True if text in _TRUE else False if text in _FALSE else None


def matches(wanted: object, setting: str, unit: str | None, vartype: str) -> bool:
    """Does pg_settings' (setting, unit, vartype) say the server runs with `wanted`?"""
    if vartype == "bool":
        return _bool(wanted) is not None and _bool(wanted) == _bool(setting)
    if vartype in ("integer", "real"):
        want = as_base(wanted, unit)
        try:
            have = float(setting)
        except ValueError:
            return False
        if want is None:
            return False
        return abs(want - have) < 1e-9 * max(1.0, abs(have)) or (
            vartype == "integer" and round(want) == have
        )
    return str(wanted).strip().lower() == setting.strip().lower()
