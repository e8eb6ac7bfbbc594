"""`python -m app serve | reembed`; see app/cli.py."""

from app.cli import main

main()
