"""The README's "Try it" commands, run verbatim with curl against a real server."""

import asyncio
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.app import DatabaseFactory, settings_on_new_database
from tests.support.images import jpeg_bytes
from tests.support.live_server import live_server

README = Path(__file__).resolve().parents[1] / "README.md"


def tried_commands() -> str:
    text = README.read_text()
    section = text.split("<!-- readme-test:begin -->")[1].split("<!-- readme-test:end -->")[0]
    return "\n".join(re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL))


async def test_readme_curl_examples_run_as_written(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    settings, _ = await settings_on_new_database(create_database, tmp_path, "readme")
    (tmp_path / "sample_image.jpg").write_bytes(jpeg_bytes(320, 240))
    commands = tried_commands()
    assert "curl -X POST" in commands and "$ID/similar?limit=5&threshold=0.8" in commands

    with live_server(settings) as base_url:
        # The README's own lines, with only the host and port swapped; curl fails on 4xx/5xx.
        script = "set -euo pipefail\n" + commands.replace("http://localhost:8000", base_url)
        process = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            script,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "CURL_HOME": str(tmp_path)},
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    output = stdout.decode()
    assert process.returncode == 0, output + stderr.decode()
    assert '"message":"Image uploaded and processed successfully"' in output
    assert '"query_image_id"' in output
    assert '"total":1' in output
    assert '"status":"healthy"' in output
    assert "HTTP/1.1 200" in output
    assert '"query_image_id":null' in output  # the search by an uploaded image
    assert "image_uploads_total" in output  # the metrics
    assert (tmp_path / "original.jpg").read_bytes() == (tmp_path / "sample_image.jpg").read_bytes()
    assert (tmp_path / "thumbnail.jpg").read_bytes().startswith(b"\xff\xd8")


@pytest.fixture(autouse=True)
def _curl_fails_on_http_errors(tmp_path: Path) -> None:
    # curl reads $CURL_HOME/.curlrc: make every README command fail on an HTTP error status.
    (tmp_path / ".curlrc").write_text("--fail-with-body\n--silent\n--show-error\n")
