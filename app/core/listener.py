"""The listening socket of a server with several worker processes.

uvicorn binds one socket and every worker accepts from it: a new connection goes to whichever
worker wakes first, which accepts everything waiting. A client with a few keep-alive connections
(a proxy, a load balancer, a benchmark) then often has them all on one worker while the others
idle (measured here: 9 of 9 connections on one of two workers, in two runs of three). With
SO_REUSEPORT each worker listens on a socket of its own and the kernel spreads new connections
over them.
"""

import socket
from collections.abc import Callable


def spreads_connections() -> bool:
    """Whether this platform can give each worker a socket of its own (Linux, BSD, macOS)."""
    return hasattr(socket, "SO_REUSEPORT")


class WorkerSocket(socket.socket):
    """Bound, never listening in the server process; a worker process that receives it gets a
    new socket bound to the same address (uvicorn sends sockets to its workers by pickling
    them), which the worker's server then listens on.

    Only listening sockets take connections, so none is left waiting in the server process."""

    def __reduce__(self) -> tuple[Callable[[int, tuple[str, int]], "WorkerSocket"], object]:
        return bind_worker_socket, (self.family, self.getsockname()[:2])


def bind_worker_socket(family: int, address: tuple[str, int]) -> WorkerSocket:
    sock = WorkerSocket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


def cannot_listen(host: str, port: int) -> OSError | None:
    """Why a server could not listen on `host`:`port` (bound to it the way uvicorn binds,
    then let go), or None if it could."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
    return None


def worker_socket(host: str, port: int) -> WorkerSocket:
    return bind_worker_socket(socket.AF_INET6 if ":" in host else socket.AF_INET, (host, port))
