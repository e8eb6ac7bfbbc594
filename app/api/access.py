"""Who may do what, and how much: decided before a request's body is read.

A route declares the scope it needs with `dependencies=[requires("write")]`; FastAPI shows the
declaration in the OpenAPI document (the security schemes, Swagger's Authorize button), and
`AccessMiddleware` enforces what the document says. It is an ASGI middleware rather than a
dependency because FastAPI parses a multipart body before it runs any dependency: a refused
upload must cost its headers only. For each request, in order:

1. the scope its operation needs (read < write < admin), from the OpenAPI document; any other
   path under /api/v1/images or /api/v1/duplicates needs `read`. Other paths (probes, /info,
   the page, the docs) need nothing;
2. if that scope is guarded (AUTH_REQUIRED, or ADMIN_TOKEN for `admin`): the caller's key or
   ADMIN_TOKEN, from `Authorization: Bearer` or `X-API-Key`: 401 `not_authorized` without,
   401 `invalid_api_key` when unknown or revoked, 403 `insufficient_scope` when too small;
3. the key's token bucket, if it has a rate: 429 `rate_limited` with Retry-After;
4. for a route that decodes an image (upload, search by upload): a place in the upload queue,
   or 503 `server_busy` with Retry-After at once.

Keys are looked up in PostgreSQL (so a key created or revoked by any process counts on every
replica) and remembered for API_KEY_CACHE_SECONDS. Neither a key nor its digest is ever logged,
counted or echoed.
"""

import hmac
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.config import Settings
from app.core.database import UNAVAILABLE_EXCEPTIONS, is_database_unavailable
from app.core.limits import TokenBucket, UploadQueue, retry_after
from app.core.observability import Metrics
from app.core.resources import Resources
from app.errors import (
    DATABASE_UNAVAILABLE,
    INSUFFICIENT_SCOPE,
    INVALID_API_KEY,
    NOT_AUTHORIZED,
    RATE_LIMITED,
    SERVER_BUSY,
    ErrorKind,
    error_response,
)
from app.models.api_key import SCOPES, KeyScope, grants
from app.services.api_keys import ApiKey, find_key, key_digest, looks_like_key

API_KEY_HEADER = "X-API-Key"
GUARDED_PREFIXES = ("/api/v1/images", "/api/v1/duplicates")
_CREDENTIALS_HELP = "Send `Authorization: Bearer <key>` or `X-API-Key: <key>`"

bearer_scheme = HTTPBearer(
    scheme_name="bearer",
    description="An API key (`python -m app keys create`) or ADMIN_TOKEN, as a bearer token",
    auto_error=False,
)
api_key_scheme = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name="apiKey",
    description="An API key, in the X-API-Key header",
    auto_error=False,
)


@dataclass(frozen=True)
class Caller:
    """Who a request was admitted as: an API key, or ADMIN_TOKEN (scope admin, no rate)."""

    name: str
    scope: KeyScope
    rate_limit: float | None = None
    burst: int | None = None

    @classmethod
    def of(cls, key: ApiKey) -> "Caller":
        return cls(key.name, key.scope, key.rate_limit, key.burst)


ADMIN_TOKEN_CALLER = Caller("ADMIN_TOKEN", "admin")


async def current_caller(
    request: Request,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    _api_key: Annotated[str | None, Security(api_key_scheme)],
) -> Caller | None:
    """Who AccessMiddleware admitted the request as (None when the route was not guarded)."""
    caller: Caller | None = getattr(request.state, "caller", None)
    return caller


def requires(scope: KeyScope) -> Any:
    """The scope an operation needs, as a route dependency (`dependencies=[requires("write")]`):
    shown in the OpenAPI document, enforced by AccessMiddleware before the body is read."""
    return Security(current_caller, scopes=[scope])


def access_rules(openapi: Mapping[str, Any]) -> list[tuple[str, str, KeyScope]]:
    """(method, path template, scope) of every operation of the document that declares a scope."""
    rules: list[tuple[str, str, KeyScope]] = []
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            scopes = {
                scope
                for requirement in operation.get("security", [])
                for scopes in requirement.values()
                for scope in scopes
            }
            if scopes:
                rules.append((method.upper(), path, max(scopes, key=SCOPES.index)))
    return rules


class KeyCache:
    """Looked-up keys (and unknown digests) for `seconds`, at most `size` of them."""

    def __init__(self, seconds: float, size: int = 10_000) -> None:
        self.seconds = seconds
        self.size = size
        self._entries: dict[str, tuple[float, Caller | None]] = {}

    def get(self, digest: str, now: float) -> tuple[bool, Caller | None]:
        """(found, caller): whether the digest was looked up less than `seconds` ago."""
        entry = self._entries.get(digest)
        if entry is None or entry[0] <= now:
            return False, None
        return True, entry[1]

    def put(self, digest: str, caller: Caller | None, now: float) -> None:
        if self.seconds <= 0:
            return
        if len(self._entries) >= self.size:
            # Unknown keys sent in bulk must not grow the memory: start afresh.
            self._entries.clear()
        self._entries[digest] = (now + self.seconds, caller)


def _credentials(headers: Headers) -> str | None:
    """The key a request presents. An Authorization header wins when there is one, and must be
    `Bearer <key>`: credentials that are sent are checked, never passed over for others."""
    authorization = headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else authorization
    return headers.get(API_KEY_HEADER.lower()) or None


class Refused(Exception):
    """A request refused before its body was read."""

    def __init__(
        self, kind: ErrorKind, detail: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.kind, self.detail, self.headers = kind, detail, dict(headers or {})


class AccessMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        metrics: Metrics,
        openapi: Callable[[], Mapping[str, Any]],
        decoding_routes: Iterable[tuple[str, str]],
    ) -> None:
        self.app = app
        self.auth_required = settings.AUTH_REQUIRED
        self.admin_token = (
            settings.ADMIN_TOKEN.get_secret_value().encode() if settings.ADMIN_TOKEN else None
        )
        self.metrics = metrics
        self._openapi = openapi
        self._rules: list[tuple[str, re.Pattern[str], KeyScope]] | None = None
        self.decoding_routes = frozenset(decoding_routes)
        self.queue = UploadQueue(slots=settings.IMAGE_WORKERS, limit=settings.UPLOAD_QUEUE_LIMIT)
        self.keys = KeyCache(settings.API_KEY_CACHE_SECONDS)
        self.buckets: dict[str, TokenBucket] = {}

    def required_scope(self, method: str, path: str) -> KeyScope | None:
        """The scope a request needs (None: anyone may make it)."""
        if self._rules is None:
            rules = access_rules(self._openapi())
            # Literal paths first: POST /search must not be taken for /{image_id}.
            rules.sort(key=lambda rule: "{" in rule[1])
            self._rules = [(m, compile_path(p)[0], scope) for m, p, scope in rules]
        method = "GET" if method == "HEAD" else method
        for rule_method, pattern, scope in self._rules:
            if rule_method == method and pattern.match(path):
                return scope
        return "read" if path.startswith(GUARDED_PREFIXES) else None

    def _guarded(self, scope: KeyScope) -> bool:
        return self.auth_required or (scope == "admin" and self.admin_token is not None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        checks_keys = self.auth_required or self.admin_token is not None
        needed = self.required_scope(method, path) if checks_keys else None
        decodes = (method, path) in self.decoding_routes
        try:
            if needed is not None and self._guarded(needed):
                caller = await self._admit(
                    Headers(scope=scope), scope["state"]["resources"], needed
                )
                # A state of this request's own (a test's lifespan state is one shared dict).
                scope["state"] = {**scope["state"], "caller": caller}
            if decodes and not self.queue.try_enter():
                self.metrics.shed.labels("server_busy").inc()
                raise Refused(
                    SERVER_BUSY,
                    "Too many images are waiting to be decoded; retry later",
                    {"Retry-After": str(self.queue.retry_after())},
                )
        except Refused as refused:
            await self._refuse(scope, receive, send, refused)
            return
        if not decodes:
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        self.metrics.uploads_in_progress.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.queue.leave(time.monotonic() - started)
            self.metrics.uploads_in_progress.dec()

    async def _admit(self, headers: Headers, resources: Resources, needed: KeyScope) -> Caller:
        given = _credentials(headers)
        if given is None:
            raise Refused(NOT_AUTHORIZED, f"This request needs an API key. {_CREDENTIALS_HELP}")
        caller = await self._identify(given, resources)
        if caller is None:
            raise Refused(INVALID_API_KEY, "The API key is unknown or has been revoked")
        if not grants(caller.scope, needed):
            raise Refused(
                INSUFFICIENT_SCOPE,
                f"This request needs a key of scope {needed}; the key {caller.name!r} has "
                f"scope {caller.scope}",
            )
        if caller.rate_limit is not None:
            bucket = self.buckets.get(caller.name)
            if bucket is None or bucket.rate != caller.rate_limit:
                bucket = TokenBucket(caller.rate_limit, caller.burst or 1)
                self.buckets[caller.name] = bucket
            wait = bucket.take(time.monotonic())
            if wait > 0:
                self.metrics.shed.labels("rate_limited").inc()
                raise Refused(
                    RATE_LIMITED,
                    f"The key {caller.name!r} may make {caller.rate_limit:g} requests a second",
                    {"Retry-After": str(retry_after(wait))},
                )
        return caller

    async def _identify(self, given: str, resources: Resources) -> Caller | None:
        """The caller these credentials belong to, or None (unknown, revoked, malformed)."""
        if self.admin_token is not None and hmac.compare_digest(given.encode(), self.admin_token):
            return ADMIN_TOKEN_CALLER
        if not looks_like_key(given):
            return None
        digest = key_digest(given)
        now = time.monotonic()
        found, caller = self.keys.get(digest, now)
        if found:
            return caller
        try:
            async with resources.engine.connect() as connection:
                key = await find_key(connection, digest)
        except UNAVAILABLE_EXCEPTIONS as exc:
            if not is_database_unavailable(exc):
                raise
            raise Refused(
                DATABASE_UNAVAILABLE, "The database is unavailable; retry shortly"
            ) from None
        caller = None if key is None else Caller.of(key)
        self.keys.put(digest, caller, now)
        return caller

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, refused: Refused) -> None:
        headers = dict(refused.headers)
        if Headers(scope=scope).get("expect", "").lower() == "100-continue":
            # The client holds its body back until told to send it, and never will be; the
            # connection cannot carry another request after a body that was announced.
            headers["Connection"] = "close"
        response = error_response(Request(scope), refused.kind, refused.detail, headers=headers)
        await response(scope, receive, send)
