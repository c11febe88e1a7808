"""The graphcnn command line: the argument parser and `main`; the commands are graphcnn.commands.

Exit codes: 0 success, 1 a user error (message on stderr, no traceback), 2 wrong usage,
130 interrupted. `--verbose` shows the traceback of a user error too.
"""
from __future__ import annotations

import argparse
import sys
import traceback

from .errors import GraphCnnError


def build_parser() -> argparse.ArgumentParser:
    """One subparser per registered command (graphcnn.commands.registry)."""
    from .version import __version__
    from .commands.registry import COMMANDS

    parser = argparse.ArgumentParser(prog="graphcnn", description="Declarative CNN graph compiler.")
    parser.add_argument("--version", action="version", version=f"graphcnn {__version__}")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (fn, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks of errors")
        fn.configure(p)
        p.set_defaults(handler=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    from . import commands  # noqa: F401  (registers the commands)

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args) or 0
    except GraphCnnError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; no output was changed", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
