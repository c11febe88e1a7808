"""Running models in onnxruntime: sessions (providers, threads, spinning), feeds, model loading.

The NCHWc rewrite lives in `graphcnn.runtime.blocked`; it is not imported here because it
needs onnx and the lowering, which a plain `graphcnn run` of an .onnx file does not.
"""
from .feeds import RunResult, check_feeds, dynamic_sizes, random_inputs, run
from .modelio import check_external_paths, existing_file, load_model
from .sessions import PROVIDER_ALIASES, resolve_provider, session, session_options

__all__ = ["PROVIDER_ALIASES", "RunResult", "check_external_paths", "check_feeds",
           "dynamic_sizes", "existing_file", "load_model", "random_inputs", "resolve_provider",
           "run", "session", "session_options"]
