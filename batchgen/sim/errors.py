"""Exceptions the simulated handlers raise; app.py renders them in the flavor's body shape."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An exception as A1111's `api_middleware` sees it: class name, status, detail, str(e)."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: str = "",
        errors: str = "",
        body: str = "",
        headers: dict[str, str] | None = None,  # sent as they are (Retry-After from a proxy)
    ) -> None:
        super().__init__(errors or detail)
        self.headers = headers
        self.status = status
        self.error = error
        self.detail = detail
        self.errors = errors
        self.body = body

    @classmethod
    def http(cls, status: int, detail: str) -> ApiError:
        """A FastAPI HTTPException (str() of it is "" under starlette 0.26)."""
        return cls(status, "HTTPException", detail=detail)

    @classmethod
    def internal(cls, error: str, message: str) -> ApiError:
        """Any other exception: a 500 whose `errors` is str(e)."""
        return cls(500, error, errors=message)

    @property
    def is_http(self) -> bool:
        return self.error == "HTTPException"


class RequestInvalid(Exception):
    """A body that fails FastAPI/pydantic validation: rendered as 422 `{"detail": [...]}`."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} validation error(s)")
        self.errors = errors
