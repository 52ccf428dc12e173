"""up: a stack from nothing, in order: provision, cluster, web tier, and the first backup
(only when the catalog has none of the running cluster, so a rerun takes none)."""

from __future__ import annotations

from prefect import flow

from blocks.stack import StackSpec
from flows.backup import backup, first_backup_needed
from flows.cluster import cluster
from flows.provision import provision
from flows.wordpress import wordpress


@flow(name="up")
def up(spec: StackSpec, credentials: str = "lab") -> dict:
    hosts = provision(spec, credentials)
    report = cluster(spec, credentials)
    web = wordpress(spec, credentials)
    first = (
        backup(spec, credentials)
        if first_backup_needed(spec, credentials)
        else {"skipped": "the catalog already has a backup of this cluster"}
    )
    return {"hosts": [h.name for h in hosts], "cluster": report, "wordpress": web, "backup": first}
