"""Running the command line as a user does: `python -m app ...` in a subprocess."""

import asyncio
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


async def run_cli(
    arguments: list[str], environment: dict[str, str], stream: str = "stderr"
) -> tuple[int | None, str]:
    """`python -m app ARGUMENTS`; returns the exit status and what it wrote to `stream`."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        *arguments,
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    return process.returncode, (stdout if stream == "stdout" else stderr).decode()
