"""CLI commands, one module per area; importing a module registers its commands (in this order,
which is the order `graphcnn --help` lists them). Commands share only registry, output and args."""
from . import spec  # noqa: F401  check, summary
from . import model  # noqa: F401  compile, run
from . import schema  # noqa: F401
from . import deploy  # noqa: F401  bench, export-weights
from . import triton  # noqa: F401  export-triton
from . import torchcode  # noqa: F401  export-torch
from . import draw  # noqa: F401
from . import sizes  # noqa: F401
from . import lint  # noqa: F401
from . import diff  # noqa: F401
from . import train  # noqa: F401
from . import predict  # noqa: F401
