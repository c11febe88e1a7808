"""CLI commands, one module per area; importing a module registers its commands."""
from . import core  # noqa: F401
