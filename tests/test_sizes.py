"""`graphcnn sizes` against brute force: the full checker (graphcnn.graph.check on the spec with
the sizes written in) at every size of the range; the static-size error; symbolic checks."""
from __future__ import annotations

import json

import pytest

from conftest import SPECS
from graphcnn.api import load_spec
from graphcnn.cli import main
from graphcnn.errors import GraphCnnError, ShapeError
from graphcnn.graph import check
from graphcnn.graph.sweep import Sweep
from graphcnn.shapes.sizes import admissible

STRIDED_1D = """
name: strided1d
inputs: {signal: [2, L]}
nodes:
  - {id: c1, op: conv1d, channels: 4, kernel: 5, stride: 2}
  - {id: p1, op: maxpool1d, kernel: 3, stride: 2, padding: 1}
  - {id: c2, op: conv1d, channels: 8, kernel: 3, stride: 3, padding: same}
  - {id: p2, op: avgpool1d, kernel: 2, ceil_mode: true}
"""


@pytest.fixture
def no_nearest(monkeypatch):
    """Brute force checks hundreds of sizes that fail; skip the nearest-size search of the
    error message (it does not decide what fits)."""
    import graphcnn.graph.input_sizes as input_sizes

    monkeypatch.setattr(input_sizes, "_nearest", lambda sweep: [])


def brute_force(spec, name, shape_at, low, high):
    """{size: output shape} for every size the checker accepts."""
    found = {}
    for n in range(low, high + 1):
        try:
            checked = check(spec.model_copy(update={"inputs": {name: shape_at(n)}}))
        except GraphCnnError:
            continue
        found[n] = checked.shape_of(checked.outputs[0])
    return found


@pytest.mark.parametrize("path, name, channels, low, high", [
    ("unet.yaml", "image", 1, 150, 460),
    ("resnet18.yaml", "image", 3, 1, 48),
])
def test_sizes_equal_brute_force(no_nearest, path, name, channels, low, high):
    spec = load_spec(SPECS / path)
    report = admissible(Sweep.of_spec(spec), low, high)
    want = brute_force(spec, name, lambda n: [channels, n, n], low, high)
    assert report.sizes == sorted(want)
    assert {n: report.shapes[n][report.outputs[0]] for n in report.sizes} == want


def test_strided_1d_equals_brute_force(no_nearest):
    spec = load_spec_text(STRIDED_1D)
    report = admissible(Sweep.of_spec(spec), 1, 200)
    want = brute_force(spec, "signal", lambda n: [2, n], 1, 200)
    assert report.sizes == sorted(want) and report.sizes[0] == 5  # ceil mode: torch's rule
    assert [report.output_size(n) for n in report.sizes] == [want[n][1] for n in sorted(want)]
    assert report.rule_text() == "input >= 5, output = floor((input + 19)/24)"
    assert all((n + 19) // 24 == want[n][1] for n in want)  # the stated rule, checked


def load_spec_text(text):
    from graphcnn.spec import NetworkSpec

    return NetworkSpec.from_text(text)


def test_unet_cli_lists_572_not_570(capsys):
    assert main(["sizes", str(SPECS / "unet.yaml")]) == 0
    text = capsys.readouterr().out
    assert "572 -> 388" in text and "570 ->" not in text
    assert "rule: input = 188 + 16k (k >= 0), output = input - 184" in text
    assert main(["sizes", str(SPECS / "unet.yaml"), "--range", "500:700", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    pairs = {a["input"]: a["output"]["classes"] for a in data["admissible"]}
    assert pairs[572] == [2, 388, 388] and 570 not in pairs
    assert data["input_rule"] == {"first": 508, "step": 16}
    assert data["output_rule"] == "input - 184"


def test_axis_varies_one_axis(capsys):
    assert main(["sizes", str(SPECS / "unet.yaml"), "--axis", "W", "--range", "550:600"]) == 0
    text = capsys.readouterr().out
    assert "with W = n" in text and "572 -> 388 " in text and "556 -> 388x372" in text
    assert "rule: input = 556 + 16k (k >= 0), output = 388 x (input - 184)" in text


def test_static_size_error_names_node_and_nearest_sizes():
    text = (SPECS / "unet.yaml").read_text().replace("[1, 572, 572]", "[1, 570, 570]")
    from graphcnn.spec import NetworkSpec

    spec = NetworkSpec.from_yaml(SPECS / "unet.yaml", text=text)
    with pytest.raises(ShapeError) as err:
        check(spec)
    message = str(err.value)
    where = f"{SPECS / 'unet.yaml'}:8:10"  # the input's shape in the spec
    assert message.startswith(f"{where}: input 570 x 570 does not fit: dec4.crop")
    assert message.splitlines()[0].endswith("nearest admissible sizes: 556, 572")
    assert err.value.node == "dec4.crop"


def test_size_independent_errors_are_unchanged():
    spec = load_spec_text(STRIDED_1D.replace("[2, L]", "[2, 40]").replace(
        "kernel: 2, ceil_mode: true}", "kernel: 2, ceil_mode: true}\n  - {op: add, skip: c1}"))
    with pytest.raises(ShapeError) as err:
        check(spec)
    assert "nearest admissible" not in str(err.value)


def test_symbolic_spec_checks_at_smallest_size(capsys, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(STRIDED_1D)
    assert main(["check", str(path)]) == 0
    text = capsys.readouterr().out
    assert "checked at L = 5, its smallest admissible size" in text
    assert "output p2 [N, 8, 1]" in text


def test_parameters_that_follow_the_size_are_noted(tmp_path, capsys):
    path = tmp_path / "fc.yaml"
    path.write_text("name: fc\ninputs: {image: [3, 8, 8]}\nnodes:\n"
                    "  - {id: c, op: conv2d, channels: 2, kernel: 3}\n"
                    "  - {op: flatten}\n  - {id: fc, op: linear, features: 4}\n")
    assert main(["sizes", str(path), "--range", "1:12"]) == 0
    text = capsys.readouterr().out
    assert "admissible: 10 sizes: 3, 4, ..., 12" in text
    assert "note: the parameter shapes of linear 'fc' change with the input size" in text
