"""The `api_keys` table as init.sql defines it, and the scopes a key can have."""

from typing import Literal, get_args

from sqlalchemy import Column, DateTime, Float, Integer, MetaData, String, Table
from sqlalchemy.dialects.postgresql import UUID

# Each scope grants everything the ones before it grant: read (get, list, similar, search, file,
# thumbnail) < write (+ upload, delete) < admin (+ metrics, detailed health).
KeyScope = Literal["read", "write", "admin"]
SCOPES: tuple[KeyScope, ...] = get_args(KeyScope)


def grants(held: KeyScope, needed: KeyScope) -> bool:
    """Whether a key of scope `held` may make a request that needs `needed`."""
    return SCOPES.index(held) >= SCOPES.index(needed)


metadata = MetaData()

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("name", String(64), nullable=False),
    Column("scope", String(8), nullable=False),
    Column("key_digest", String(64), nullable=False, unique=True),
    Column("rate_limit", Float),
    Column("burst", Integer),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
)
