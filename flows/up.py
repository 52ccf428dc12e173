"""up: a stack from nothing, in order: provision, cluster, web tier, and the first backup
(only when the catalog has none of the running cluster, so a rerun takes none). One stack
context for the whole run: the subflows get it, and new host keys are saved once, at the
end."""

from __future__ import annotations

from prefect import flow

from blocks.stack import StackSpec
from flows.backup import backup
from flows.cluster import cluster
from flows.provision import provision
from flows.wordpress import wordpress
from tasks.backup import first_backup_needed
from tasks.context import opened


@flow(name="up")
def up(spec: StackSpec, credentials: str = "lab") -> dict:
    with opened(spec, credentials) as stack:
        hosts = provision(spec, credentials, stack=stack)
        report = cluster(spec, credentials, stack=stack)
        web = wordpress(spec, credentials, stack=stack)
        first = (
            backup(spec, credentials, stack=stack)
            if first_backup_needed(stack)
            else {"skipped": "the catalog already has a backup of this cluster"}
        )
    return {"hosts": [h.name for h in hosts], "cluster": report, "wordpress": web, "backup": first}
