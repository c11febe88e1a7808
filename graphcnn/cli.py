"""The graphcnn command line: the argument parser and `main`; the commands are graphcnn.commands.

Exit codes: 0 success, 1 a user error (message on stderr, no traceback), 2 wrong usage,
130 interrupted (SIGINT), 143 terminated (SIGTERM), 129 hung up (SIGHUP): as a shell reports a
process the signal killed. `--verbose` shows the traceback of a user error too.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
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
    from .fileio import command_inputs, stop_signal, written_files

    parser = build_parser()
    args = parser.parse_args(argv)
    with command_inputs(), signals_as_interrupts():
        try:
            declare_files(args)
            code = args.handler(args) or 0
            if stop_signal() is not None:  # its KeyboardInterrupt was swallowed on the way
                raise KeyboardInterrupt
            return code
        except GraphCnnError as exc:
            if args.verbose:
                traceback.print_exc()
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt as exc:
            signum = stop_signal() or getattr(exc, "signum", signal.SIGINT)
            written = written_files()
            print(f"{STOPPED[signum]}; " + (f"written before the stop: {', '.join(written)}"
                                           if written else "no output was changed"),
                  file=sys.stderr)
            return 128 + signum
        except BrokenPipeError:
            return 0
        except MemoryError:  # the last net: sizes are checked before allocating where known
            if args.verbose:
                traceback.print_exc()
            print("error: this machine ran out of memory for the command", file=sys.stderr)
            return 1


def declare_files(args) -> None:
    """Every argument naming an existing path is an input, unless it is an output (dest
    `output`, or typed OutputPath): a command's new input flag is covered without a line of its
    own, and an output left unmarked is refused as an input (loudly), never the other way
    round. The outputs are checked before any work (not a device, FIFO or folder; no input)."""
    from .fileio import OutputPath, UpdatedPath, check_output, note_input

    outputs = []
    for dest, value in _values(vars(args)):
        if isinstance(value, OutputPath) or (dest in OUTPUT_DESTS and isinstance(value, str)):
            outputs.append(value)
        elif isinstance(value, (str, os.PathLike)) and value and os.path.exists(value):
            note_input(value, updatable=isinstance(value, UpdatedPath))
    for path in outputs:
        check_output(path)


OUTPUT_DESTS = {"output"}  # -o/--output of every command that writes a file


def _values(namespace: dict):
    for dest, value in namespace.items():
        for item in value if isinstance(value, (list, tuple)) else (value,):
            yield dest, item


STOPPED = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated (SIGTERM)",
           signal.SIGHUP: "hung up (SIGHUP)"}


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, as Ctrl-C raises KeyboardInterrupt: the
    same `finally` blocks remove temporaries and the same handlers save what they save."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stop(signum, frame):
    """Ctrl-C raises KeyboardInterrupt, SIGTERM and SIGHUP Terminated; noted first, since
    Python swallows an exception raised inside a weakref callback or __del__."""
    from .fileio import note_stop

    note_stop(signum)
    raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)


@contextlib.contextmanager
def signals_as_interrupts():
    """SIGTERM and SIGHUP raise Terminated while a command runs (their default, dying at once,
    left the hidden temporary of an output behind), and each of them and Ctrl-C is noted
    (_raise_stop); the previous handlers come back after."""
    import threading

    if threading.current_thread() is not threading.main_thread():  # only it may set handlers
        yield
        return
    saved = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
