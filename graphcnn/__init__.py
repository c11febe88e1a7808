"""graphcnn: a declarative graph compiler for convolutional networks.

spec (YAML or Python) -> checked layer graph -> ONNX -> onnxruntime.
"""
__version__ = "0.1.0"

from .api import check_spec, compile_spec, load_spec  # noqa: E402
from .errors import GraphCnnError, Location  # noqa: E402
from .graph import CheckedGraph, check  # noqa: E402
from .spec import NetworkSpec  # noqa: E402

__all__ = ["CheckedGraph", "GraphCnnError", "Location", "NetworkSpec", "__version__", "check",
           "check_spec", "compile_spec", "load_spec"]
