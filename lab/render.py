"""The lab's own config files (its load balancers' and Spaces' HAProxy configs), rendered
from lab/templates/ (jinja2). The lab keeps its own renderer: it imports no runbook code.

StrictUndefined: a missing context variable is an error, never an empty string."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

TEMPLATES = Path(__file__).resolve().parent / "templates"

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,
)


def render(name: str, /, **context: Any) -> str:
    """Render lab template `name` (relative to lab/templates/, e.g. "spaces.cfg.j2")."""
    return _env.get_template(name).render(**context)
