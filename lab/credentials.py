"""The local cloud's credentials as Lifeboat's Prefect blocks, so runbooks run against the
lab exactly as against DigitalOcean: only the blocks' contents differ. Likewise its
notification block: Prefect's own custom webhook, posting to the lab's receiver
(lab/notifications.py) where production's would post to Slack or e-mail."""

from __future__ import annotations

from pathlib import Path

from prefect.blocks.notifications import CustomWebhookNotificationBlock

from blocks.credentials import DigitalOceanCredentials, SpacesCredentials, SSHIdentity

LAB_BLOCKS = "lab"


def save_blocks(info: dict, name: str = LAB_BLOCKS) -> str:
    """Store (or refresh) the lab's API token, Spaces keys, SSH key and notification block
    under `name`. Host keys already pinned for droplets that still exist are kept."""
    DigitalOceanCredentials(
        token=info["api_token"], api_url=info["api_url"], local_cloud=True
    ).save(name, overwrite=True)
    s3 = info["spaces"]
    SpacesCredentials(
        access_key=s3["access_key"],
        secret_key=s3["secret_key"],
        region=s3["region"],
        endpoint=s3["endpoint"],
        ca_bundle=s3["ca_cert"],
    ).save(name, overwrite=True)
    private_key = Path(info["ssh_private_key"]).read_text()
    try:
        known = SSHIdentity.load(name)
        pins = known.known_hosts if known.public_key == info["ssh_public_key"] else {}
    except ValueError:
        pins = {}
    SSHIdentity(private_key=private_key, public_key=info["ssh_public_key"], known_hosts=pins).save(
        name, overwrite=True
    )
    notification_block(info["notifications"]["url"], name).save(name, overwrite=True)
    return name


def notification_block(url: str, name: str = LAB_BLOCKS) -> CustomWebhookNotificationBlock:
    """Prefect's webhook block posting {"subject", "body"} as JSON to `url` (the block
    fills in the {{...}} placeholders at each notify)."""
    return CustomWebhookNotificationBlock(
        name=name,
        url=url,
        method="POST",
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
    )
