"""DigitalOcean's error bodies, raised from anywhere in the stand-in."""

from __future__ import annotations

from fastapi.responses import JSONResponse

NOT_FOUND = "The resource you were accessing could not be found."
UNAUTHORIZED = "Unable to authenticate you."

_IDS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    422: "unprocessable_entity",
    500: "server_error",
}


class ApiError(Exception):
    """An error answered with DO's `{"id", "message"}` body."""

    def __init__(self, status: int, message: str, error_id: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_id = error_id or _IDS.get(status, "error")

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.error_id)


def error_response(status: int, message: str, error_id: str | None = None) -> JSONResponse:
    body = {"id": error_id or _IDS.get(status, "error"), "message": message}
    return JSONResponse(body, status_code=status)


def not_found() -> ApiError:
    return ApiError(404, NOT_FOUND)


def unprocessable(message: str) -> ApiError:
    return ApiError(422, message)
