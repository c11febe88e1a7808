"""Shipped specs equal their torchvision models, weight for weight (tools/torchvision_check.py).

For every spec with a case (tools/torchvision_cases/<name>.yaml): torchvision's model, with
random batchnorm statistics and constant-initialised parameters, is saved with torch.save and
loaded into the spec by graphcnn's importer through the spec's `weights: torchvision` map, and
the two give the same output (max |ours - torch| / max |torch| < 1e-5) at the end and at the
case's probe node. Inputs at the case's `size` when it gives one, else the spec's own;
specs over 20M parameters checked at their own size are slow (their weights alone take
seconds to copy, write and compile). Skipped without torch and torchvision, which are not
dependencies of graphcnn (README.md: "Checking against torchvision"). The maps themselves are
checked without torch in tests/test_weights_import.py.
"""
from __future__ import annotations

import re

import pytest

from conftest import ROOT, SPECS, load_tool

BIG = 20_000_000  # parameters; above this a check at the spec's own size is marked slow
TOLERANCE = 1e-5


def _tool():
    return load_tool("torchvision_check")


tool = _tool()
NAMES = tool.case_names()


def parameters(name: str) -> int:
    """The spec's parameter count, from its summary golden where there is one (cheaper than
    checking the spec at collection)."""
    golden = ROOT / "tests" / "golden" / f"{name}.txt"
    found = re.search(r"Total params: ([\d,]+)", golden.read_text()) if golden.exists() else None
    if found:
        return int(found.group(1).replace(",", ""))
    import graphcnn

    return graphcnn.check_spec(SPECS / f"{name}.yaml").total_params


def case(name: str):
    slow = tool.read_case(name).size is None and parameters(name) > BIG
    return pytest.param(name, marks=[pytest.mark.slow] if slow else [])


@pytest.fixture(scope="session")
def tv():
    pytest.importorskip("torch")
    try:
        return tool.import_torchvision()
    except tool.Missing as exc:
        pytest.skip(f"torchvision: {exc}")


@pytest.mark.parametrize("name", [case(n) for n in NAMES])
def test_spec_equals_torchvision(tv, name):
    result = tool.check(name, tolerance=TOLERANCE, tv=tv)
    print(result.load_report)
    print(result.line())
    assert result.load_report.startswith("loaded ") and \
        "(map: torchvision)" in result.load_report, result.load_report
    assert result.torch_params == result.spec_params, result.line()
    assert result.output_diff < TOLERANCE, result.line()
    assert result.probe is None or result.probe_diff < TOLERANCE, result.line()


def test_dynamic_fcn_equals_torchvision_at_another_size(tv):
    """fcn_resnet50 compiled once with symbolic H, W (at its 520 x 520) runs at 61 x 93 and
    equals torchvision there: the logits' resize reads the input's size at run time."""
    result = tool.check("fcn_resnet50", size=(61, 93), tolerance=TOLERANCE, tv=tv, dynamic=True)
    print(result.line())
    assert result.output_shape == (1, 21, 61, 93) and result.ok, result.line()


@pytest.mark.slow
def test_deeplab_equals_torchvision_where_every_atrous_rate_reaches_past_the_centre(tv):
    """At 300 x 316 the features are 38 x 40, so the ASPP's 3x3 convs at rates 24 and 36 also
    read off-centre taps (at the map's quicker size only the centre tap lies inside); the
    logits' resize from 38 x 40 is no whole factor."""
    result = tool.check("deeplabv3_resnet50", size=(300, 316), tolerance=TOLERANCE, tv=tv)
    print(result.line())
    assert result.ok, result.line()
