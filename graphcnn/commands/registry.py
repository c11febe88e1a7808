"""The command registry: each command module registers its handlers here when imported, and
graphcnn.cli builds one subparser per entry, in registration order (the order `--help` lists)."""
from __future__ import annotations

COMMANDS = {}


def command(name: str, help: str):
    """Register the decorated handler as the command `name`, described by `help`."""
    def wrap(fn):
        COMMANDS[name] = (fn, help)
        return fn
    return wrap


def configure(fn):
    """Attach an argparse configuration function to a command handler."""
    def decorator(setup):
        fn.configure = setup
        return fn
    return decorator
