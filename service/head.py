"""HEAD answered like GET, without the body (RFC 9110 §9.3.2).

FastAPI registers a ``@router.get`` route for GET alone, so a HEAD request (a load balancer's or
uptime checker's probe, ``curl -I``) got a 405. Rather than declaring HEAD on every route (which
would double the OpenAPI operations), this outermost middleware hands the app a GET and sends on
its status and headers (``Content-Length`` included, as GET's) but no body bytes. Everything
behind it, the fast lane of ``GET /recommendations/{user_id}`` included, sees a plain GET; a
route without GET still answers 405.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGetMiddleware:
    """Serves HEAD with the GET route's status and headers and an empty body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                # The server still sees a HEAD request (the scope is copied below), so it frames
                # the answer itself; only the bytes are withheld.
                message = {**message, "body": b""}
            await send(message)

        # A copy: the server's own scope keeps "HEAD".
        await self.app({**scope, "method": "GET"}, receive, send_without_body)
