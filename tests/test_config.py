"""Settings: parsed as documented, and every one of them documented."""

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.core.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_in_env_example_and_the_readme() -> None:
    example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        assert re.search(rf"^#? ?{name}=", example, re.MULTILINE), f"{name} not in .env.example"
        assert f"| `{name}` |" in readme, f"{name} not in the README's configuration table"


def test_env_example_parses_to_the_defaults() -> None:
    from_example = Settings(_env_file=ROOT / ".env.example")
    defaults = Settings.model_validate({})
    assert from_example.model_dump(exclude={"IMAGE_WORKERS"}) == defaults.model_dump(
        exclude={"IMAGE_WORKERS"}
    )


def test_comma_separated_lists_and_case_insensitive_log_level() -> None:
    settings = Settings.model_validate(
        {
            "CORS_ORIGINS": "http://a.test, http://b.test",
            "ALLOWED_EXTENSIONS": ".PNG,jpg",
            "LOG_LEVEL": "debug",
        }
    )
    assert settings.CORS_ORIGINS == ["http://a.test", "http://b.test"]
    assert settings.ALLOWED_EXTENSIONS == [".png", ".jpg"]
    assert settings.LOG_LEVEL == "DEBUG"
    assert settings.allowed_formats == {"JPEG", "PNG"}


def test_unknown_extensions_and_out_of_range_values_are_refused() -> None:
    for values in (
        {"ALLOWED_EXTENSIONS": ".jxl"},
        {"SIMILARITY_THRESHOLD": 2},
        {"MAX_FILE_SIZE": 0},
    ):
        with pytest.raises(ValidationError):
            Settings.model_validate(values)


def test_database_url_choices() -> None:
    embedded = Settings.model_validate({})
    plain = Settings.model_validate({"DATABASE_URL": "postgresql://u:p@db:5432/x"})
    parts = Settings.model_validate({"POSTGRES_HOST": "db", "POSTGRES_PASSWORD": "pw"})

    assert embedded.external_database_url() is None
    assert plain.external_database_url().drivername == "postgresql+asyncpg"  # type: ignore[union-attr]
    url = parts.external_database_url()
    assert url is not None
    assert (url.host, url.port, url.database, url.password) == (
        "db",
        5432,
        "image_processing",
        "pw",
    )
    assert "pw" not in repr(parts)
