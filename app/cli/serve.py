"""`python -m app serve`: uvicorn, one process or WORKERS of them."""

import argparse
import errno
import sys

import uvicorn
from uvicorn.supervisors import Multiprocess

from app.core.config import get_settings
from app.core.listener import cannot_listen, spreads_connections, worker_socket
from app.core.observability import logging_config


def serve(arguments: argparse.Namespace) -> None:
    settings = get_settings()
    if settings.WORKERS > 1 and settings.external_database_url() is None:
        # Each worker would start and stop the embedded server on its own.
        sys.exit(
            "error: WORKERS > 1 needs a PostgreSQL of its own (set DATABASE_URL); "
            "the embedded one serves a single worker"
        )
    if settings.WORKERS == 1 and (error := cannot_listen(settings.HOST, settings.PORT)):
        # Checked before the database starts, so a busy port fails at once and says so. (More
        # workers bind their sockets before anything starts, below.)
        sys.exit(listen_error(settings.HOST, settings.PORT, error))
    level = "DEBUG" if settings.DEBUG else settings.LOG_LEVEL
    config = uvicorn.Config(
        "app.main:create_app",
        factory=True,
        host=settings.HOST,
        port=settings.PORT,
        # Python runs one thread at a time per process: worker processes let uploads (request
        # parsing, hashing, SQL, files) use every core, beside the decoding threads.
        workers=settings.WORKERS,
        log_level=level.lower(),
        # Applied in every worker process too; the service logs each request itself (with its
        # id), so uvicorn's access log is off.
        log_config=logging_config(level, settings.LOG_FORMAT),
        access_log=False,
        # Give in-flight requests time to finish on Ctrl-C / SIGTERM.
        timeout_graceful_shutdown=20,
    )
    if settings.WORKERS > 1:
        try:
            listener = (
                worker_socket(config.host, config.port)
                if spreads_connections()
                else config.bind_socket()
            )
        except OSError as exc:
            sys.exit(listen_error(config.host, config.port, exc))
        Multiprocess(config, sockets=[listener]).run()
        return
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        sys.exit(3)  # uvicorn's exit status for a failed start-up


def listen_error(host: str, port: int, error: OSError) -> str:
    """What went wrong binding `host`:`port`, and how to choose another port."""
    cause = (
        "the port is in use (another server, or a `make run` already running?)"
        if error.errno == errno.EADDRINUSE
        else error.strerror
    )
    alternative = port + 1 if port < 65535 else 8000
    return (
        f"error: cannot listen on {host}:{port}: {cause}. "
        f"Choose another port with PORT, e.g. `PORT={alternative} make run`"
    )
