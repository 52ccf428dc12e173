"""What the lab offers: regions (one per default VPC range), a few real sizes, one image."""

from __future__ import annotations

import copy
from typing import Any

from lab.config import DEFAULT_VPC_RANGES

REGION_NAMES = {"nyc3": "New York 3", "fra1": "Frankfurt 1", "ams3": "Amsterdam 3"}
REGION_FEATURES = ["backups", "ipv6", "metadata", "install_agent", "storage", "image_transfer"]

# Slug -> (memory MiB, vcpus, disk GiB, transfer TiB, price per month USD); DO's 2024 list.
_SIZES: dict[str, tuple[int, int, int, float, float]] = {
    "s-1vcpu-1gb": (1024, 1, 25, 1.0, 6.0),
    "s-1vcpu-2gb": (2048, 1, 50, 2.0, 12.0),
    "s-2vcpu-2gb": (2048, 2, 60, 3.0, 18.0),
    "s-2vcpu-4gb": (4096, 2, 80, 4.0, 24.0),
    "s-4vcpu-8gb": (8192, 4, 160, 5.0, 48.0),
}
HOURS_PER_MONTH = 672  # DO bills a month as at most 672 hours

IMAGE_ID = 159651797  # fixed, like a public base image's id on DO
IMAGE_SLUG = "debian-12-x64"


def region_slugs() -> list[str]:
    return list(DEFAULT_VPC_RANGES)


def size(slug: str) -> dict[str, Any] | None:
    spec = _SIZES.get(slug)
    if spec is None:
        return None
    memory, vcpus, disk, transfer, monthly = spec
    return {
        "slug": slug,
        "memory": memory,
        "vcpus": vcpus,
        "disk": disk,
        "transfer": transfer,
        "price_monthly": monthly,
        "price_hourly": round(monthly / HOURS_PER_MONTH, 5),
        "regions": region_slugs(),
        "available": True,
        "description": "Basic",
        "disk_info": [{"type": "local", "size": {"amount": disk, "unit": "gib"}}],
    }


def sizes() -> list[dict[str, Any]]:
    return [s for slug in _SIZES if (s := size(slug)) is not None]


def region(slug: str) -> dict[str, Any] | None:
    if slug not in DEFAULT_VPC_RANGES:
        return None
    return {
        "name": REGION_NAMES.get(slug, slug),
        "slug": slug,
        "features": list(REGION_FEATURES),
        "available": True,
        "sizes": list(_SIZES),
    }


def regions() -> list[dict[str, Any]]:
    return [r for slug in region_slugs() if (r := region(slug)) is not None]


_IMAGE = {
    "id": IMAGE_ID,
    "name": "12 x64",
    "type": "base",
    "distribution": "Debian",
    "slug": IMAGE_SLUG,
    "public": True,
    "regions": [],  # filled from region_slugs() on the way out
    "created_at": "2024-06-10T19:47:37Z",
    "min_disk_size": 15,
    "size_gigabytes": 0.98,
    "description": "Debian 12 x64",
    "tags": [],
    "status": "available",
    "error_message": "",
}


def image(ref: str | int) -> dict[str, Any] | None:
    """An image by id or slug, as `image` in POST /v2/droplets or GET /v2/images/{id}."""
    if str(ref) not in (str(IMAGE_ID), IMAGE_SLUG):
        return None
    out = copy.deepcopy(_IMAGE)
    out["regions"] = region_slugs()
    return out


def images() -> list[dict[str, Any]]:
    return [i for i in (image(IMAGE_ID),) if i is not None]
