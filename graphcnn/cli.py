"""The graphcnn command line: thin commands over the public API.

Exit codes: 0 success, 1 a user error (message on stderr, no traceback), 2 wrong usage,
130 interrupted. `--verbose` shows the traceback of a user error too.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from .errors import GraphCnnError, RunError

COMMANDS = {}


def command(name: str, help: str):
    def wrap(fn):
        COMMANDS[name] = (fn, help)
        return fn
    return wrap


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

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


def configure(fn):
    """Attach an argparse configuration function to a command handler."""
    def decorator(setup):
        fn.configure = setup
        return fn
    return decorator


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


def out(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def print_json(data) -> None:
    out(json.dumps(data, indent=2))


def existing_file(path: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise RunError(f"no such file: {path}")
    return p


if __name__ == "__main__":
    # Run as `python -m graphcnn.cli`: this module is __main__, while the commands register
    # with graphcnn.cli, so call that module's main.
    from graphcnn.cli import main as _main

    sys.exit(_main())
