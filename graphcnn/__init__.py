"""graphcnn: a declarative graph compiler for convolutional networks.

spec (YAML or Python) -> checked layer graph -> ONNX -> onnxruntime.
"""
from .version import __version__
from .api import (check_spec, compile_spec, load_spec, model_for, train_spec,  # noqa: E402
                  training_job)
from .errors import GraphCnnError, Location  # noqa: E402
from .graph import CheckedGraph, check  # noqa: E402
from .spec import NetworkSpec  # noqa: E402

__all__ = ["CheckedGraph", "GraphCnnError", "Location", "NetworkSpec", "__version__", "check",
           "check_spec", "compile_spec", "load_spec", "model_for", "train_spec",
           "training_job"]
