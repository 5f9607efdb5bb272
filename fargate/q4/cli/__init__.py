"""The `q4` command line: a thin layer over the library and the AWS edges.

Each sub-command lives in its own module, which exposes ``register(subparsers)``;
the module's handler returns the process exit code. Errors that users can act on
are raised as :class:`q4.errors.Q4Error` and printed as one sentence followed by its
code (``q4: error: <sentence> [<code>]``, docs/contract.md, "Error codes"), never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from q4.errors import Q4Error
from q4.nopandas import keep_pandas_out

# Sub-command modules, in the order `q4 --help` lists them. `q4 local` and `q4 demo` come from the local
# stack (local/q4_local), which only a clone of the repository has (it needs moto, a dev dependency).
_COMMAND_MODULES = (
    "q4.cli.run",
    "q4.cli.submit",
    "q4.cli.status",
    "q4.cli.runs",
    "q4.cli.fetch",
    "q4.cli.dlq",
    "q4.cli.logs",
    "q4.cli.cancel",
)
_LOCAL_STACK_MODULE = "q4_local.cli"
_LOCAL_STACK_COMMANDS = ("local", "demo")


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The sub-command ``argv`` names (its first argument not starting with ``-``), when q4 has it."""
    first = next((a for a in argv if not a.startswith("-")), None)
    known = {m.rsplit(".", 1)[-1] for m in _COMMAND_MODULES} | set(_LOCAL_STACK_COMMANDS)
    return first if first in known else None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every sub-command, or (``command`` given) of that one only: each sub-command's module
    is imported only when it is registered, so ``q4 run`` does not pay for boto3 (~0.35 s) and the rest
    of the AWS commands, while ``q4 --help`` and an unknown command still list them all."""
    from q4 import __version__

    parser = argparse.ArgumentParser(
        prog="q4",
        description="Q4 pipeline: split a table into signal (Q1+Q4) and noise (Q2+Q3) by its two "
        "leading principal components, locally or on AWS.",
    )
    parser.add_argument("--version", action="version", version=f"q4 {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        if command is None or name.rsplit(".", 1)[-1] == command:
            importlib.import_module(name).register(subparsers)
    if command is not None and command not in _LOCAL_STACK_COMMANDS:
        return parser
    try:
        local_stack = importlib.import_module(_LOCAL_STACK_MODULE)
    except ModuleNotFoundError as exc:  # an installed wheel (the task image): no local stack
        if exc.name not in ("q4_local", _LOCAL_STACK_MODULE):
            raise
        for command in _LOCAL_STACK_COMMANDS:
            stub = subparsers.add_parser(command, help="(only in a clone of the repository: the local stack)")
            stub.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            stub.set_defaults(handler=_no_local_stack)
    else:
        local_stack.register(subparsers)
    return parser


def _no_local_stack(args: argparse.Namespace) -> int:
    raise Q4Error(
        "local_stack_missing",
        f"'q4 {args.command}' runs the local stack, which this installation does not include; "
        "run it from a clone of the repository with 'uv run q4 ...'.",
    )


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # the console script: its own process (q4.nopandas)
        keep_pandas_out()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_chosen_command(argv))
    args = parser.parse_args(argv)
    try:
        code = args.handler(args)
    except Q4Error as exc:
        print(f"q4: error: {exc.message} [{exc.code}]", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("q4: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
