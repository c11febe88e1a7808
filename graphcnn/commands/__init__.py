"""CLI commands, one module per area; importing a module registers its commands."""
from . import core  # noqa: F401
from . import deploy  # noqa: F401
from . import draw  # noqa: F401
from . import sizes  # noqa: F401
from . import lint  # noqa: F401
from . import train  # noqa: F401
