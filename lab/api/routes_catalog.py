"""Read-only catalog: regions, sizes, images, and the account."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from lab.api import catalog
from lab.api.deps import LabDep, ok
from lab.api.errors import not_found
from lab.api.pagination import paginate

router = APIRouter()
DROPLET_LIMIT = 25


@router.get("/v2/regions")
def list_regions(request: Request) -> JSONResponse:
    return ok(paginate(request, "regions", catalog.regions()))


@router.get("/v2/sizes")
def list_sizes(request: Request) -> JSONResponse:
    return ok(paginate(request, "sizes", catalog.sizes()))


@router.get("/v2/images")
def list_images(request: Request) -> JSONResponse:
    # The one image is a public distribution image without tags.
    q = request.query_params
    match = q.get("type") in (None, "distribution") and q.get("private") != "true"
    match = match and not q.get("tag_name")
    return ok(paginate(request, "images", catalog.images() if match else []))


@router.get("/v2/images/{image_id}")
def get_image(image_id: str) -> JSONResponse:
    image = catalog.image(image_id)
    if image is None:
        raise not_found()
    return ok({"image": image})


@router.get("/v2/account")
def get_account(lab: LabDep) -> JSONResponse:
    return ok(
        {
            "account": {
                "droplet_limit": DROPLET_LIMIT,
                "floating_ip_limit": 3,
                "email": "lab@lifeboat.invalid",
                "name": "Lifeboat lab",
                "uuid": lab.store.account_uuid,
                "email_verified": True,
                "status": "active",
                "status_message": "",
                "team": {"uuid": lab.store.account_uuid, "name": "Lifeboat lab"},
            }
        }
    )
