"""`python -m lifeboat`: the `lifeboat` command."""

from lifeboat.cli import app

app(prog_name="lifeboat")
