"""The `q4` command line: a thin layer over the library and the AWS edges.

Each sub-command lives in its own module, which exposes ``register(subparsers)``;
the module's handler returns the process exit code. Errors that users can act on
are raised as :class:`q4.errors.Q4Error` and printed as one sentence, never a
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from q4.errors import Q4Error

# Sub-command modules, in the order `q4 --help` lists them.
_COMMAND_MODULES = ("q4.cli.run", "q4.cli.pipeline", "q4.cli.dlq", "q4.cli.local")


def build_parser() -> argparse.ArgumentParser:
    from q4 import __version__

    parser = argparse.ArgumentParser(
        prog="q4",
        description="Q4 pipeline: split a table into signal (Q1+Q4) and noise (Q2+Q3) by its two "
        "leading principal components, locally or on AWS.",
    )
    parser.add_argument("--version", action="version", version=f"q4 {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a sub-command module not written yet
            if exc.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.handler(args)
    except Q4Error as exc:
        print(f"q4: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("q4: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
