"""Running the command line as a user does: `python -m app ...` (or `make ...`) in a
subprocess, stopped with Ctrl-C as a terminal sends it."""

import asyncio
import fcntl
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.harness import free_port

ROOT = Path(__file__).resolve().parents[2]


def server_environment(
    database_url: str, tmp_path: Path, **extra: str
) -> tuple[dict[str, str], int]:
    """The environment of a `serve` (or `make run`) on `database_url` and a free port, with
    its files under `tmp_path`: (environment, port)."""
    port = free_port()
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PORT": str(port),
        "DATA_DIR": str(tmp_path / "data"),
        **extra,
    }
    return environment, port


def make_run_command() -> list[str]:
    """`make` on this interpreter's environment, taken as installed (-o: never reinstalled by a
    test)."""
    venv = Path(sys.prefix)
    return ["make", "--no-print-directory", "-o", f"{venv}/.installed", f"VENV={venv}"]


async def run_cli(
    arguments: list[str], environment: dict[str, str], stream: str = "stderr"
) -> tuple[int | None, str]:
    """`python -m app ARGUMENTS`; returns the exit status and what it wrote to `stream`."""
    process = await start(arguments, environment)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    return process.returncode, (stdout if stream == "stdout" else stderr).decode()


async def start(
    arguments: list[str], environment: dict[str, str], *, program: list[str] | None = None
) -> asyncio.subprocess.Process:
    """`python -m app ARGUMENTS` (or `program ARGUMENTS`) started in a process group of its
    own, as a shell starts a command, with Ctrl-C acting on it as in a terminal; its output
    piped."""
    return await asyncio.create_subprocess_exec(
        *(program or [sys.executable, "-m", "app"]),
        *arguments,
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        # A test run started in the background (`nohup`, `cmd &` in a script) ignores SIGINT,
        # and children inherit that; an interactive shell gives commands the default action.
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def press_ctrl_c(process: asyncio.subprocess.Process) -> tuple[int | None, str, str]:
    """SIGINT to the process group, as Ctrl-C in a terminal sends it; then (status, stdout,
    stderr) once the process has ended."""
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    return process.returncode, stdout.decode(), stderr.decode()


async def run_with_a_terminal_as_stderr(command: list[str]) -> tuple[int, str]:
    """Run `command` with its stderr on a pseudo-terminal of 100 columns, as in a terminal
    window; returns the exit status and what it drew there."""
    return await asyncio.to_thread(_run_on_a_terminal, command)


def _run_on_a_terminal(command: list[str]) -> tuple[int, str]:
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=secondary, stdin=subprocess.DEVNULL
    )
    os.close(secondary)
    drawn = bytearray()
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # EIO: the process has closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    os.close(primary)
    return process.wait(timeout=120), drawn.decode()


async def poll_until(condition: Callable[[], Awaitable[bool]], seconds: float = 60) -> None:
    """Wait until `condition()` holds, checking every 20 ms; TimeoutError after `seconds`."""
    deadline = time.monotonic() + seconds
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"still not true after {seconds} s")
        await asyncio.sleep(0.02)
