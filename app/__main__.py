"""`python -m app COMMAND`; see app/cli/__init__.py."""

from app.cli import main

main()
