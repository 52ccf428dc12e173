"""`python -m lifeboat`: the `lifeboat` command."""

from lifeboat.cli import main

main()
