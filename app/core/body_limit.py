"""Cap request bodies while they stream in, before anything buffers them.

A declared Content-Length over the cap is refused before the body is read; a chunked body is
counted as it arrives and refused at the first byte over the cap. Both end as a 413 rendered by
the app's error handler.
"""

from types import FunctionType
from typing import cast

from python_multipart.multipart import MultipartParser
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_size: int) -> None:
        self.app = app
        self.max_body_size = max_body_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        declared = Headers(scope=scope).get("content-length")
        declared_too_large = (
            declared is not None and declared.isdigit() and int(declared) > self.max_body_size
        )
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if declared_too_large:
                raise HTTPException(status_code=413)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_size:
                    raise HTTPException(status_code=413)
            return message

        await self.app(scope, limited_receive, send)


def allow_long_part_headers(max_bytes: int) -> None:
    """Let a multipart part's header line be up to `max_bytes` long.

    python-multipart refuses a longer line than 4 KiB, a guard against unbounded buffering,
    and Starlette answers that with 400 "Invalid multipart data.". A filename of a few thousand
    characters is such a line, and it is metadata the service shortens; the body as a whole is
    capped by the middleware above. Starlette builds the parser itself with the library's
    default, so the default is what can be changed (for every parser of the process)."""
    defaults = cast(FunctionType, MultipartParser.__init__).__kwdefaults__
    if defaults is not None:
        defaults["max_header_size"] = max_bytes
