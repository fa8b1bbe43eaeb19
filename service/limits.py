"""Request-body size limits for every route, enforced before a body is buffered.

A declared ``Content-Length`` above the route's limit is answered 413 without reading anything;
a body streamed without one (chunked) is counted as it arrives and refused (413) once it passes
the limit, so no request can make the server hold more than its limit in memory.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Any route without a limit of its own. The largest legitimate other body is a batch of 1000
# user ids of 256 characters, each up to 12 bytes once JSON-escaped: about 3 MiB.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024


def _too_large(limit: int) -> str:
    return f"request body larger than {limit} bytes"


class BodySizeLimitMiddleware:
    """``limits`` maps exact paths to their limit in bytes; others get ``default_limit``."""

    def __init__(
        self,
        app: ASGIApp,
        limits: Mapping[str, int],
        default_limit: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.app = app
        self.limits = dict(limits)
        self.default_limit = default_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"], self.default_limit)
        declared = _content_length(scope)
        if declared == -1:
            await JSONResponse({"detail": "invalid Content-Length header"}, 400)(
                scope, receive, send
            )
            return
        if declared is not None and declared > limit:
            await JSONResponse({"detail": _too_large(limit)}, 413)(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the route, where the app's exception handling makes it a 413.
                    raise HTTPException(413, _too_large(limit))
            return message

        await self.app(scope, counting_receive, send)


def _content_length(scope: Scope) -> int | None:
    """The declared body length; None when absent, -1 when not a decimal number."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if not value.isdigit():
                return -1
            # int() of thousands of digits is refused (and slow); any such length is too large.
            return int(value) if len(value) <= 18 else 10**18
    return None
