"""`python -m app keys create | list | revoke`: API keys, in the database the service uses.

Like the other admin commands, they open the configured database (the embedded one under
DATA_DIR when DATABASE_URL is unset, shared with a running service). Every server process reads
keys from there, so a key works, or stops working, everywhere without a restart (within
API_KEY_CACHE_SECONDS).
"""

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.config import get_settings
from app.core.database import open_database
from app.errors import KeyNameTaken
from app.services.api_keys import NAME_PATTERN, ApiKey, create_key, list_keys, revoke_key

T = TypeVar("T")


def _on_database(work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    settings = get_settings()
    logging.basicConfig(level=logging.WARNING)

    async def run() -> T:
        async with (
            open_database(settings, prepare_index=False) as database,
            database.engine.connect() as connection,
        ):
            return await work(connection)

    return asyncio.run(run())


def _rate(key: ApiKey) -> str:
    return "unlimited" if key.rate_limit is None else f"{key.rate_limit:g}/s burst {key.burst}"


def create(arguments: argparse.Namespace) -> None:
    if not NAME_PATTERN.match(arguments.name):
        sys.exit("error: a key name is 1 to 64 letters, digits, '.', '_' or '-'")
    if arguments.rate is not None and not arguments.rate > 0:
        sys.exit("error: --rate must be more than 0")
    if arguments.burst is not None and (arguments.rate is None or arguments.burst < 1):
        sys.exit("error: --burst needs --rate, and is at least 1")
    try:
        key, secret = _on_database(
            lambda connection: create_key(
                connection,
                name=arguments.name,
                scope=arguments.scope,
                rate_limit=arguments.rate,
                burst=arguments.burst,
            )
        )
    except KeyNameTaken as exc:
        sys.exit(f"error: {exc}")
    print(f"created key {key.name!r}: scope {key.scope}, rate {_rate(key)}")
    print("It is shown only this once; only its SHA-256 digest is stored:")
    print(secret)


def list_keys_command(arguments: argparse.Namespace) -> None:
    keys = _on_database(lambda connection: list_keys(connection, include_revoked=arguments.all))
    print(f"{'name':<24} {'scope':<6} {'rate':<22} {'created':<20} revoked")
    for key in keys:
        revoked = key.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if key.revoked_at else "-"
        print(
            f"{key.name:<24} {key.scope:<6} {_rate(key):<22} "
            f"{key.created_at:%Y-%m-%d %H:%M:%S}  {revoked}"
        )
    print(f"{len(keys)} key(s)")


def revoke(arguments: argparse.Namespace) -> None:
    key = _on_database(lambda connection: revoke_key(connection, arguments.name))
    if key is None:
        sys.exit(f"error: no active key is named {arguments.name!r}")
    print(f"revoked key {key.name!r} (scope {key.scope})")
