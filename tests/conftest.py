"""Shared test helpers: compile a spec, run it in onnxruntime, read its weights."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SPECS = ROOT / "specs"
sys.path.insert(0, str(TESTS))  # `import reference` whether or not tests/ is a package


def onnx_weights(model) -> dict[str, np.ndarray]:
    """Every initializer of a compiled model by name."""
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def ort_run(model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """All outputs of `model` in onnxruntime on CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def load_tool(name: str):
    """tools/NAME.py as a module, registered in sys.modules under its name (a tool's
    dataclasses look their module up there)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def checked_text(text: str):
    """The checked graph of a spec given as YAML text."""
    import graphcnn
    from graphcnn.spec import NetworkSpec

    return graphcnn.check(NetworkSpec.from_text(text))


def summary_output(*args) -> str:
    """What `graphcnn summary ARGS` prints (it must succeed)."""
    import contextlib
    import io

    from graphcnn.cli import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["summary", *map(str, args)]) == 0
    return buffer.getvalue()


@pytest.fixture(scope="session")
def specs_dir() -> Path:
    return SPECS


@pytest.fixture(scope="session")
def tools():
    """The helpers above, for tests that prefer a fixture to an import."""
    return type("Tools", (), {"weights": staticmethod(onnx_weights), "run": staticmethod(ort_run)})
