"""The README's "Try it" commands, run verbatim (curl against a real server), and what the
README says they answer."""

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.app import DatabaseFactory, settings_on_new_database
from tests.support.live_server import live_server

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def tried_section() -> str:
    text = README.read_text()
    return text.split("<!-- readme-test:begin -->")[1].split("<!-- readme-test:end -->")[0]


def tried_commands() -> str:
    return "\n".join(re.findall(r"```bash\n(.*?)```", tried_section(), flags=re.DOTALL))


def shown_similar_answer() -> dict[str, Any]:
    """The similar-images answer the README shows."""
    blocks = re.findall(r"```json\n(.*?)```", tried_section(), flags=re.DOTALL)
    answer: dict[str, Any] = next(
        json.loads(block) for block in blocks if '"similar_images"' in block
    )
    return answer


def similar_answer_in(output: str) -> dict[str, Any]:
    """The answer of `/similar` among curl's outputs, which follow each other unseparated."""
    start = output.index('{"query_image_id":"')
    answer: dict[str, Any] = json.JSONDecoder().raw_decode(output, start)[0]
    return answer


def git_ignored(names: list[str]) -> list[str]:
    """Which of `names`, at the top of the checkout, git ignores."""
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", *names],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.split()


async def test_readme_try_it_runs_as_written_and_answers_as_shown(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    settings, _ = await settings_on_new_database(create_database, tmp_path, "readme")
    # The commands run in a checkout and name its environment, .venv.
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / ".venv").symlink_to(Path(sys.prefix))
    commands = tried_commands()
    assert "curl -X POST" in commands and "$ID/similar?limit=5&threshold=0.8" in commands

    with live_server(settings) as base_url:
        # The README's own lines, with only the host and port swapped; curl fails on 4xx/5xx.
        script = "set -euo pipefail\n" + commands.replace("http://localhost:8000", base_url)
        process = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            script,
            cwd=checkout,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "CURL_HOME": str(tmp_path)},
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    output = stdout.decode()
    assert process.returncode == 0, output + stderr.decode()
    assert '"message":"Image uploaded and processed successfully"' in output
    assert '"total":2' in output  # the sample and its edited copy
    assert '"status":"healthy"' in output
    assert "HTTP/1.1 200" in output
    assert '"query_image_id":null' in output  # the search by an uploaded image
    assert "image_uploads_total" in output  # the metrics
    # The duplicates: the sample and its copy, one group, the sample its suggested keeper.
    assert '"size":2,"suggested_keeper":"' in output and '"rebuild_needed":false' in output
    assert (checkout / "original.jpg").read_bytes() == (checkout / "sample_image.jpg").read_bytes()
    assert (checkout / "thumbnail.jpg").read_bytes().startswith(b"\xff\xd8")

    # The answer the README shows is the one the reader gets (ids and times aside).
    shown, got = shown_similar_answer(), similar_answer_in(output)
    assert got.keys() == shown.keys()
    assert got["total_results"] == shown["total_results"] == len(got["similar_images"]) == 1
    [got_match], [shown_match] = got["similar_images"], shown["similar_images"]
    assert got_match.keys() == shown_match.keys()
    for key in ("filename", "content_type", "match"):
        assert got_match[key] == shown_match[key]
    assert shown_match["match"] == "near_duplicate"
    assert abs(got_match["similarity_score"] - shown_match["similarity_score"]) < 0.002

    # What the walkthrough leaves in the checkout is git-ignored.
    written = sorted(set(os.listdir(checkout)) - {".venv"})
    assert written == ["edited_copy.jpg", "original.jpg", "sample_image.jpg", "thumbnail.jpg"]
    assert git_ignored(written) == written


@pytest.fixture(autouse=True)
def _curl_fails_on_http_errors(tmp_path: Path) -> None:
    # curl reads $CURL_HOME/.curlrc: make every README command fail on an HTTP error status.
    (tmp_path / ".curlrc").write_text("--fail-with-body\n--silent\n--show-error\n")
