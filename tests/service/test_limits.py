"""Request-body limits, driven with raw ASGI messages (headers no HTTP client would send)."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request

from service.limits import BodySizeLimitMiddleware


def app_with_limit(limit: int) -> BodySizeLimitMiddleware:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    return BodySizeLimitMiddleware(app, limits={"/echo": limit}, default_limit=1)


def call(app: BodySizeLimitMiddleware, headers: list[tuple[bytes, bytes]], chunks: list[bytes]):
    """(status, body) of one POST /echo whose body arrives in ``chunks``."""
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/echo",
        "raw_path": b"/echo",
        "query_string": b"",
        "headers": headers,
        "http_version": "1.1",
        "scheme": "http",
        "server": ("test", 80),
        "client": ("test", 1),
        "root_path": "",
    }
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


def test_declared_lengths() -> None:
    app = app_with_limit(10)
    assert call(app, [(b"content-length", b"10")], [b"x" * 10]) == (200, b'{"size":10}')
    assert call(app, [(b"content-length", b"11")], [b"x" * 11])[0] == 413
    assert call(app, [(b"content-length", b"9" * 5000)], [b""])[0] == 413  # no int() of it
    for bogus in (b"-1", b"ten", b"", b"1e3", b" 5"):
        assert call(app, [(b"content-length", bogus)], [b"x"])[0] == 400, bogus


def test_streamed_bodies_are_counted() -> None:
    app = app_with_limit(10)
    assert call(app, [], [b"x" * 5, b"x" * 5]) == (200, b'{"size":10}')
    status, body = call(app, [], [b"x" * 6, b"x" * 6, b"x" * 6])
    assert status == 413 and b"larger than 10 bytes" in body
    # A body that lies about its length is counted all the same.
    assert call(app, [(b"content-length", b"4")], [b"x" * 6, b"x" * 6])[0] == 413
