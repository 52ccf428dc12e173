"""DO-style pagination: `per_page`/`page` in, `links.pages` and `meta.total` out."""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlencode

from fastapi import Request

from lab.api.errors import unprocessable

DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 200


def _positive_int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise unprocessable(f"{name} must be an integer, got {raw!r}") from None
    if value < 1:
        raise unprocessable(f"{name} must be at least 1")
    return value


def paginate(request: Request, key: str, items: list[Any]) -> dict[str, Any]:
    """Slice `items` for the requested page and add the links DO gives: first/prev when
    there is a page before, next/last when there is a page after."""
    per_page = min(_positive_int(request, "per_page", DEFAULT_PER_PAGE), MAX_PER_PAGE)
    page = _positive_int(request, "page", 1)
    total = len(items)
    last = max(1, math.ceil(total / per_page))
    start = (page - 1) * per_page

    def url(n: int) -> str:
        query = dict(request.query_params)
        query.update(page=str(n), per_page=str(per_page))
        return f"{str(request.base_url).rstrip('/')}{request.url.path}?{urlencode(query)}"

    pages: dict[str, str] = {}
    if page > 1:
        pages["first"] = url(1)
        pages["prev"] = url(min(page - 1, last))
    if page < last:
        pages["next"] = url(page + 1)
        pages["last"] = url(last)
    return {
        key: items[start : start + per_page],
        "links": {"pages": pages} if pages else {},
        "meta": {"total": total},
    }
