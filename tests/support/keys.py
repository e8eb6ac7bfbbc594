"""API keys written straight into a test database (committed, as `python -m app keys` does)."""

from sqlalchemy import URL

from app.core.database import create_engine
from app.models.api_key import KeyScope
from app.services.api_keys import create_key, revoke_key


async def add_key(
    url: URL,
    name: str,
    scope: KeyScope,
    *,
    rate_limit: float | None = None,
    burst: int | None = None,
) -> str:
    """Create a key in the database at `url`; returns the key."""
    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as connection:
            _, key = await create_key(
                connection, name=name, scope=scope, rate_limit=rate_limit, burst=burst
            )
    finally:
        await engine.dispose()
    return key


async def revoke(url: URL, name: str) -> None:
    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as connection:
            assert await revoke_key(connection, name) is not None
    finally:
        await engine.dispose()
