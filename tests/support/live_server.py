"""The app served by a real uvicorn on a free loopback port, for tests that need real HTTP."""

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn

from app.core.config import Settings
from app.main import create_app
from bench.harness import free_port


@contextmanager
def live_server(settings: Settings) -> Iterator[str]:
    """Run the app (lifespan included) in a background thread; yield its base URL."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the live server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


async def wait_until_ready(client: httpx.AsyncClient, seconds: float = 30) -> bool:
    """Poll /api/v1/health/ready (the server may not be listening yet); True once it is 200."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if (await client.get("/api/v1/health/ready")).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    return False
