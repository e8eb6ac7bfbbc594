"""API keys: created, listed, revoked, and looked up by the digest of the key a request carries.

A key is `isk_` and 43 URL-safe characters: 256 random bits (`secrets.token_urlsafe(32)`). Only
its SHA-256 digest is stored. A key that random needs no slow password hash (there is no
dictionary to try against a leaked digest), and a lookup by digest tells a timing observer
nothing about the key; the final comparison is constant-time all the same.
"""

import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from app.errors import KeyNameTaken
from app.models.api_key import KeyScope, api_keys

KEY_PREFIX = "isk_"
_KEY_PATTERN = re.compile(rf"^{KEY_PREFIX}[A-Za-z0-9_-]{{43}}$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ApiKey:
    """A key's record (never the key itself)."""

    id: uuid.UUID
    name: str
    scope: KeyScope
    rate_limit: float | None  # requests per second per server process; None: unlimited
    burst: int | None  # requests a key may make at once before its rate applies
    created_at: datetime
    revoked_at: datetime | None


_RECORD = (
    api_keys.c.id,
    api_keys.c.name,
    api_keys.c.scope,
    api_keys.c.rate_limit,
    api_keys.c.burst,
    api_keys.c.created_at,
    api_keys.c.revoked_at,
)


def _record(row: object) -> ApiKey:
    mapping = row._mapping  # type: ignore[attr-defined]
    return ApiKey(**{column.name: mapping[column.name] for column in _RECORD})


def key_digest(key: str) -> str:
    """The SHA-256 hex digest stored for `key`."""
    return hashlib.sha256(key.encode()).hexdigest()


def looks_like_key(candidate: str) -> bool:
    """Whether `candidate` has the shape of a key (so anything else costs no lookup)."""
    return _KEY_PATTERN.match(candidate) is not None


async def create_key(
    connection: AsyncConnection,
    *,
    name: str,
    scope: KeyScope,
    rate_limit: float | None = None,
    burst: int | None = None,
) -> tuple[ApiKey, str]:
    """Store a new key; returns its record and the key, which exists nowhere else afterwards.

    `burst` defaults to one second's worth of `rate_limit` (at least 1). Raises KeyNameTaken
    when an active key already has this name."""
    if rate_limit is not None and burst is None:
        burst = max(1, round(rate_limit))
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    statement = (
        insert(api_keys)
        .values(
            id=uuid.uuid4(),
            name=name,
            scope=scope,
            key_digest=key_digest(key),
            rate_limit=rate_limit,
            burst=burst,
            created_at=func.now(),
        )
        .on_conflict_do_nothing(
            index_elements=[api_keys.c.name], index_where=api_keys.c.revoked_at.is_(None)
        )
        .returning(*_RECORD)
    )
    row = (await connection.execute(statement)).one_or_none()
    if row is None:
        raise KeyNameTaken(name)
    return _record(row), key


async def list_keys(connection: AsyncConnection, *, include_revoked: bool = False) -> list[ApiKey]:
    """Keys by name (active ones only unless `include_revoked`), oldest first within a name."""
    query = select(*_RECORD).order_by(api_keys.c.name, api_keys.c.created_at)
    if not include_revoked:
        query = query.where(api_keys.c.revoked_at.is_(None))
    return [_record(row) for row in await connection.execute(query)]


async def revoke_key(connection: AsyncConnection, name: str) -> ApiKey | None:
    """Revoke the active key named `name`; its record, or None if there is none."""
    statement = (
        update(api_keys)
        .where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=func.now())
        .returning(*_RECORD)
    )
    row = (await connection.execute(statement)).one_or_none()
    return None if row is None else _record(row)


async def find_key(connection: AsyncConnection, digest: str) -> ApiKey | None:
    """The active key with this digest, or None (unknown or revoked)."""
    query = select(*_RECORD, api_keys.c.key_digest).where(
        api_keys.c.key_digest == digest, api_keys.c.revoked_at.is_(None)
    )
    row = (await connection.execute(query)).one_or_none()
    if row is None or not hmac.compare_digest(cast(str, row.key_digest), digest):
        return None
    return _record(row)
