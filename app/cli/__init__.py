"""The command line: `python -m app COMMAND`.

Each command's module is imported only when that command runs, so `--help` and the remote
commands start without loading numpy, Pillow, SQLAlchemy or uvicorn.
"""

import argparse
import importlib
import os
import sys

DEFAULT_URL = "http://127.0.0.1:8000"
INTERRUPTED = 130  # the shell's status for a command stopped by Ctrl-C (128 + SIGINT)
# The key the remote commands send when --api-key is not given.
API_KEY_VARIABLE = "IMAGE_SERVICE_API_KEY"
SCOPES = ("read", "write", "admin")  # as app.models.api_key.SCOPES, without importing it


def _add_keys_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    keys = commands.add_parser(
        "keys", help="create, list and revoke API keys (in the service's database)"
    )
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser(
        "create", help="create a key; it is printed once, alone on the last line"
    )
    create.add_argument("--name", required=True, help="letters, digits, . _ - (at most 64)")
    create.add_argument(
        "--scope", required=True, choices=SCOPES, help="read < write (+upload, delete) < admin"
    )
    create.add_argument(
        "--rate", type=float, default=None, help="requests a second (per server process)"
    )
    create.add_argument(
        "--burst", type=int, default=None, help="requests at once before --rate applies"
    )
    create.set_defaults(handler="keys:create")
    listing = actions.add_parser("list", help="list active keys (never the keys themselves)")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    listing.set_defaults(handler="keys:list_keys_command")
    revoke = actions.add_parser("revoke", help="revoke the active key named NAME")
    revoke.add_argument("name")
    revoke.set_defaults(handler="keys:revoke")


def _add_remote_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DEFAULT_URL, help=f"default {DEFAULT_URL}")
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_VARIABLE),
        help=f"the key to send (default: ${API_KEY_VARIABLE})",
    )


def _add_duplicates_command(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]",
) -> None:
    duplicates = commands.add_parser(
        "duplicates",
        help="print the duplicate groups of a running service; --rebuild: find every image's "
        "links again (in the service's database), after a model or threshold change",
    )
    _add_remote_options(duplicates)
    duplicates.add_argument("--json", action="store_true", help="print the groups as JSON")
    duplicates.add_argument(
        "--rebuild",
        action="store_true",
        help="rebuild the groups in the database (resumable: run it again after a stop)",
    )
    duplicates.add_argument(
        "--batch-size", type=int, default=500, help="--rebuild: images per commit"
    )
    duplicates.add_argument(
        "--concurrency", type=int, default=2, help="--rebuild: searches at once"
    )
    duplicates.set_defaults(handler="duplicates:duplicates")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the API on HOST:PORT (starts the embedded PostgreSQL if DATABASE_URL is unset)",
    )
    serve.add_argument(
        "--ctrl-c-status",
        type=int,
        default=INTERRUPTED,
        help=f"exit status after Ctrl-C (default {INTERRUPTED}, as a shell reports it; `make run` "
        "uses 0, so that make, stopped by the same Ctrl-C, reports no error)",
    )
    serve.set_defaults(handler="serve:serve")
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
    _add_remote_options(import_parser)
    import_parser.add_argument("--concurrency", type=int, default=4, help="uploads at once")
    import_parser.add_argument("--recursive", action="store_true", help="include subfolders")
    import_parser.set_defaults(handler="remote:import_directory")
    search = commands.add_parser(
        "search", help="list the stored images most similar to FILE (FILE is not stored)"
    )
    search.add_argument("file")
    _add_remote_options(search)
    search.add_argument("--limit", type=int, default=10, help="most results (1..100)")
    search.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="lowest cosine similarity (-1..1; default: the service's SIMILARITY_THRESHOLD)",
    )
    search.set_defaults(handler="remote:search")
    _add_duplicates_command(commands)
    _add_keys_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    arguments = build_parser().parse_args(argv)
    # `handler` names `module:function` under app.cli, imported only now.
    module_name, function_name = arguments.handler.split(":")
    try:
        module = importlib.import_module(f"app.cli.{module_name}")
        getattr(module, function_name)(arguments)
    except KeyboardInterrupt:
        # Ctrl-C is how a person stops a command: one line, no traceback. (`serve` ends here
        # after its graceful shutdown; the batch commands print their partial summary first.)
        print(f"{arguments.command}: stopped by Ctrl-C", file=sys.stderr)
        sys.exit(getattr(arguments, "ctrl_c_status", INTERRUPTED))
    except BrokenPipeError:
        # The output's reader went away (`| head`): stop quietly, as other command-line tools
        # do. stdout goes to /dev/null so that Python's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
