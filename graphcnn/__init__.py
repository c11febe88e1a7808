"""graphcnn: a declarative graph compiler for convolutional networks.

spec (YAML or Python) -> checked layer graph -> ONNX -> onnxruntime.
"""
from .version import __version__
from .api import (check_spec, compile_spec, load_spec, model_for, train_spec,
                  training_job)
from .deploy.predictor import Predictor
from .errors import GraphCnnError, Location
from .graph import CheckedGraph, check
from .spec import NetworkSpec

__all__ = ["CheckedGraph", "GraphCnnError", "Location", "NetworkSpec", "Predictor",
           "__version__", "check", "check_spec", "compile_spec", "load_spec", "model_for",
           "train_spec", "training_job"]
