"""What a request must carry before a write is considered: an API key, a JSON content type.

- ``key_checker``: header ``X-API-Key`` equal to a configured key, compared in constant time
  (the admin endpoints' ``CCD_API_KEY``, the optional ``CCD_EVENTS_API_KEY`` of POST /events).
- ``require_json``: ``Content-Type: application/json``. A browser sends a cross-site form post
  or a "simple" fetch without asking the server first (no CORS preflight) only with
  ``text/plain``, ``application/x-www-form-urlencoded``, ``multipart/form-data`` or no content
  type; insisting on ``application/json`` makes every such write fail with a 415.
"""

# No `from __future__ import annotations`: FastAPI resolves the dependencies' signatures.

import hmac
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader
from pydantic import SecretStr

from service.schemas import ErrorMessage

API_KEY_HEADER = "X-API-Key"
JSON_MEDIA_TYPE = "application/json"
# Characters of a refused Content-Type echoed in the 415 (a header can be kilobytes long).
MAX_ECHOED_CONTENT_TYPE = 100

UNSUPPORTED_MEDIA_TYPE = {
    415: {"model": ErrorMessage, "description": "Content-Type is not application/json"}
}


def configured_key(secret: SecretStr | None) -> bytes | None:
    """The configured key's bytes; None when unset or empty (an empty key would match an empty
    header)."""
    key = secret.get_secret_value() if secret is not None else ""
    return key.encode() if key else None


def key_checker(
    expected: bytes | None, header: APIKeyHeader, disabled_detail: str = "disabled"
) -> Callable[[str | None], None]:
    """A dependency that lets a request through only with ``header`` equal to ``expected``
    (401 otherwise); ``expected`` None means the endpoints are disabled (403 with
    ``disabled_detail``), never open."""

    def require_api_key(given: Annotated[str | None, Depends(header)]) -> None:
        if expected is None:
            raise HTTPException(403, disabled_detail)
        # Header values arrive decoded as latin-1; encoding back gives the bytes that were sent.
        if given is None or not hmac.compare_digest(given.encode("latin-1"), expected):
            raise HTTPException(
                401,
                f"missing or wrong {API_KEY_HEADER} header",
                headers={"WWW-Authenticate": API_KEY_HEADER},
            )

    return require_api_key


def is_json(content_type: str | None) -> bool:
    """``application/json``, with or without parameters (``; charset=utf-8``)."""
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() == JSON_MEDIA_TYPE


async def require_json(request: Request) -> None:
    """415 unless the request declares a JSON body (async: no thread-pool handoff)."""
    content_type = request.headers.get("content-type")
    if not is_json(content_type):
        shown = "none" if content_type is None else repr(content_type[:MAX_ECHOED_CONTENT_TYPE])
        raise HTTPException(
            415,
            f"{request.method} {request.url.path} takes a JSON body: send header "
            f"'Content-Type: {JSON_MEDIA_TYPE}' (got {shown})",
        )
