"""The one shell of every command-line entry point (stages, flows, registry, assets, client).

Each entry point builds an argparse parser (with sub-commands where it has several jobs) and hands it
with its handler to `run_cli`, so all of them share: `--help`, `--verbose`, one logging set-up (the
project's INFO lines; other libraries' INFO chatter only with --verbose), and expected errors
(TransferlineError) as one `error: ...` line on stderr with exit status 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from transferline.errors import TransferlineError

log = logging.getLogger("transferline")

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
USER_ERROR_EXIT = 2  # a stage that exits 2 explained its failure: flows/dvc_stage.py does not retry it
INTERRUPTED_EXIT = 130

Handler = Callable[[argparse.Namespace], "int | None"]


def cli_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the options every entry point has."""
    parser = argparse.ArgumentParser(prog=_program_name(), description=description)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="also show debug lines and other libraries' info lines"
    )
    return parser


def _program_name() -> str | None:
    """`python -m package.module` in usage lines, rather than the bare file name argparse would show."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return f"python -m {spec.name}" if spec is not None and spec.name else None


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = cli_parser(description)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)")
    return parser


def add_command(
    commands: argparse._SubParsersAction, name: str, handler: Handler, help: str
) -> argparse.ArgumentParser:
    """A sub-command whose arguments `run_cli` hands to `handler`."""
    command = commands.add_parser(name, help=help, description=help)
    command.set_defaults(handler=handler)
    return command


def configure_logging(verbose: bool = False) -> None:
    """The project's loggers (`transferline.*`) at INFO; every other library at WARNING, so their INFO chatter
    (e.g. the ONNX exporter's per-initializer lines) is debug output, shown only with --verbose."""
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)  # no-op where a framework set up logging
    if verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    logging.getLogger("transferline").setLevel(logging.DEBUG if verbose else logging.INFO)


def run_command(main: Handler | None, parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse args, set up logging, run `main` (or the chosen sub-command's handler); returns the exit status:
    the handler's own (None: 0), 2 for a TransferlineError (its message on stderr), 130 when interrupted."""
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "verbose", False))
    handler = main if main is not None else args.handler
    try:
        status = handler(args)
    except TransferlineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USER_ERROR_EXIT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
    return 0 if status is None else int(status)


def run_cli(main: Handler | None, parser: argparse.ArgumentParser, argv: list[str] | None = None) -> NoReturn:
    """`run_command`, then exit with its status: the whole `if __name__ == "__main__":` of an entry point."""
    sys.exit(run_command(main, parser, argv))
