"""Benchmarks (not tests): each prints figures and asserts nothing. They sit above
everything else: they drive the runbooks (flows, tasks, blocks) against the local cloud
(lab). Run from the repository: `uv run python -m bench.<name> --help`."""

import os

# No network but the package registries: Prefect's temporary servers must not try to send
# telemetry (every benchmark imports this package first).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
