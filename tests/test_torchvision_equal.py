"""Shipped specs equal their torchvision models, weight for weight (tools/torchvision_check.py).

For every spec with a name map (tools/torchvision_maps/<name>.yaml): torchvision's model, with
random batchnorm statistics and constant-initialised parameters, is copied into the spec by the
map, and the two give the same output (max |ours - torch| / max |torch| < 1e-5) at the end and
at the map's probe node. Inputs at the map's `size` when it gives one, else the spec's own;
specs over 20M parameters checked at their own size are slow (their weights alone take
seconds to copy, write and compile). Skipped without torch and torchvision, which are not
dependencies of graphcnn (README.md: "Checking against torchvision"). The map files' own rules
are checked without torch.
"""
from __future__ import annotations

import importlib.util
import re
import sys

import numpy as np
import pytest

from conftest import ROOT, SPECS

BIG = 20_000_000  # parameters; above this a check at the spec's own size is marked slow
TOLERANCE = 1e-5


def _tool():
    spec = importlib.util.spec_from_file_location("torchvision_check",
                                                  ROOT / "tools" / "torchvision_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


tool = _tool()
NAMES = tool.mapped_names()


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
    slow = tool.read_map(name).size is None and parameters(name) > BIG
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
    print(result.line())
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


# ---- the map files themselves (no torch needed) ----------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_map_names_a_shipped_spec_and_parses(name):
    assert (SPECS / f"{name}.yaml").is_file(), f"tools/torchvision_maps/{name}.yaml has no spec"
    name_map = tool.read_map(name)
    assert name_map.rules, "a map needs rules"
    assert name_map.target("stage1.layer.0.bn.num_batches_tracked") == ""


def _map(rules, skip=()):
    return tool.NameMap([(re.compile(a), b) for a, b in rules], [re.compile(s) for s in skip])


def test_rules_first_match_wins_skip_and_size_one_axes():
    name_map = _map([(r"^layer(\d)\.(\d+)\.downsample\.0\.", r"stage\1.block\2.add.project."),
                     (r"^layer(\d)\.(\d+)\.", r"stage\1.block\2."), (r"^gamma$", "ls.init")],
                    skip=[r"\.num_batches_tracked$"])
    state = {"layer2.0.downsample.0.weight": np.ones((4, 2, 1, 1)),
             "layer2.0.conv1.weight": np.zeros((4, 2, 3, 3)),
             "layer2.0.bn1.num_batches_tracked": np.array(3),
             "gamma": np.full((4, 1, 1), 2.0)}
    expected = {"stage2.block0.add.project.weight": (4, 2, 1, 1),
                "stage2.block0.conv1.weight": (4, 2, 3, 3), "ls.init": (4,)}
    arrays = tool.spec_arrays(state, name_map, expected)
    assert {k: v.shape for k, v in arrays.items()} == expected
    assert arrays["stage2.block0.add.project.weight"].sum() == 8 and arrays["ls.init"][0] == 2


def test_a_map_that_does_not_fit_lists_every_problem():
    name_map = _map([(r"^layer(\d)\.", r"stage\1."), (r"^fc\.", "head.")])
    state = {"layer1.weight": np.zeros((3, 3)), "conv1.weight": np.zeros(2),
             "fc.weight": np.zeros(5), "layer2.weight": np.zeros((2, 2))}
    expected = {"stage1.weight": (3, 3), "stage2.weight": (2, 3), "stem.weight": (2,)}
    with pytest.raises(tool.MapError) as info:
        tool.spec_arrays(state, name_map, expected)
    text = str(info.value)
    for piece in ["keys no rule maps (1): conv1.weight",
                  "keys mapped to no spec parameter (1): fc.weight -> head.weight",
                  "shapes that differ (1): layer2.weight [2, 2] -> stage2.weight [2, 3]",
                  "spec parameters no key fills (2): stage2.weight, stem.weight"]:
        assert piece in text, text
