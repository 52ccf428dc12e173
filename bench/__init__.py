"""Benchmarks (not tests): each prints figures and asserts nothing. They sit above
everything else: they drive the runbooks (flows, tasks, blocks) against the local cloud
(lab). Run from the repository: `uv run python -m bench.<name> --help`."""
