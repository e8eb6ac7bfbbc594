"""The command line: `python -m app COMMAND`.

Each command's module is imported only when that command runs, so `--help` and the remote
commands start without loading numpy, Pillow, SQLAlchemy or uvicorn.
"""

import argparse
import importlib

DEFAULT_URL = "http://127.0.0.1:8000"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "serve",
        help="run the API on HOST:PORT (starts the embedded PostgreSQL if DATABASE_URL is unset)",
    ).set_defaults(handler="serve:serve")
    reembed = commands.add_parser(
        "reembed",
        help="recompute the embeddings of stored images made with another EMBEDDING_MODEL",
    )
    reembed.add_argument("--batch-size", type=int, default=100, help="rows per commit")
    reembed.set_defaults(handler="admin:reembed")
    check = commands.add_parser(
        "check",
        help="compare stored files (local or S3) with rows; --repair removes files without rows",
    )
    check.add_argument("--repair", action="store_true", help="remove orphan files")
    check.add_argument(
        "--min-age",
        type=float,
        default=None,
        help="leave files younger than this many seconds (uploads in flight on any replica; "
        "default STORAGE_GRACE_SECONDS)",
    )
    check.set_defaults(handler="admin:check")
    commands.add_parser(
        "reindex",
        help="rebuild the vector index per VECTOR_INDEX (IVFFlat: after the collection has grown)",
    ).set_defaults(handler="admin:reindex")
    import_parser = commands.add_parser(
        "import", help="upload every image under DIRECTORY to a running service"
    )
    import_parser.add_argument("directory")
    import_parser.add_argument("--url", default=DEFAULT_URL, help=f"default {DEFAULT_URL}")
    import_parser.add_argument("--concurrency", type=int, default=4, help="uploads at once")
    import_parser.add_argument("--recursive", action="store_true", help="include subfolders")
    import_parser.set_defaults(handler="remote:import_directory")
    search = commands.add_parser(
        "search", help="list the stored images most similar to FILE (FILE is not stored)"
    )
    search.add_argument("file")
    search.add_argument("--url", default=DEFAULT_URL, help=f"default {DEFAULT_URL}")
    search.add_argument("--limit", type=int, default=10, help="most results (1..100)")
    search.set_defaults(handler="remote:search")
    return parser


def main(argv: list[str] | None = None) -> None:
    arguments = build_parser().parse_args(argv)
    # `handler` names `module:function` under app.cli, imported only now.
    module_name, function_name = arguments.handler.split(":")
    module = importlib.import_module(f"app.cli.{module_name}")
    getattr(module, function_name)(arguments)
