"""up: a stack from nothing, in order: provision, cluster, web tier (later: first backup)."""

from __future__ import annotations

from prefect import flow

from blocks.stack import StackSpec
from flows.cluster import cluster
from flows.provision import provision
from flows.wordpress import wordpress


@flow(name="up")
def up(spec: StackSpec, credentials: str = "lab") -> dict:
    hosts = provision(spec, credentials)
    report = cluster(spec, credentials)
    web = wordpress(spec, credentials)
    return {"hosts": [h.name for h in hosts], "cluster": report, "wordpress": web}
