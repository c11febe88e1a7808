"""`check` means checked: what can be known before running is refused by `graphcnn check`, at
the file:line:col of the offending key. The spec's `training:` section and every layer's
numeric fields are validated when the spec is read, not when it is compiled or trained."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import graphcnn
from conftest import ROOT, SPECS
from graphcnn.cli import main
from graphcnn.errors import GraphCnnError
from graphcnn.spec import NetworkSpec
from graphcnn.spec.schema import json_schema
from graphcnn.train.recipe import Recipe, recipe_of

HEAD = "name: t\ninputs: {x: [3, 8, 8], v: [12]}\nnodes:\n  - {id: a, op: identity}\n"


def refused(tmp_path, capsys, text: str) -> str:
    """`graphcnn check` on `text`: exit 1 and the error line (without the file name)."""
    path = tmp_path / "t.yaml"
    path.write_text(text)
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}:") and "Traceback" not in err
    return err.strip().removeprefix(f"error: {path}:")


def test_training_section_is_refused_by_check_with_its_location(tmp_path, capsys):
    text = HEAD + "training: {optimiser: adam, lr: -1}\n"
    assert refused(tmp_path, capsys, text).startswith(
        "5:12: unknown field 'optimiser' in training; did you mean 'optimizer'?; expected one "
        "of: loss, optimizer, lr, momentum, weight_decay, betas, eps, epochs, batch, data, seed")
    text = HEAD + "training: {optimizer: adam, lr: -1}\n"
    assert refused(tmp_path, capsys, text) == (
        "5:29: bad value for 'training.lr': Input should be greater than 0; received -1")


@pytest.mark.parametrize("section, message", [
    ("{lr: .inf}", "5:12: bad value for 'training.lr': Input should be a finite number"),
    ("{momentum: 1}", "5:12: bad value for 'training.momentum': Input should be less than 1"),
    ("{betas: [0.9, 1.0]}", "5:25: bad value for 'training.betas.1': Input should be less than 1"),
    ("{epochs: true}", "5:12: bad value for 'training.epochs': Value error, true/false is not a "
                       "number here"),
    ("{loss: hinge}", "5:12: bad value for 'training.loss': Input should be 'cross_entropy' or "
                      "'mse'"),
    ("{batch: 0}", "5:12: bad value for 'training.batch': Input should be greater than or equal "
                   "to 1"),
], ids=lambda v: v.split(":")[0].strip("{") if v.startswith("{") else "")
def test_training_values_out_of_range(tmp_path, capsys, section, message):
    assert refused(tmp_path, capsys, HEAD + f"training: {section}\n").startswith(message)


def test_cli_exits_1_without_traceback(tmp_path):
    """As a user runs it: a subprocess, the error on stderr."""
    path = tmp_path / "t.yaml"
    path.write_text(HEAD + "  - {id: d, op: dropout, rate: 1.5}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "graphcnn.cli", "check", str(path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"error: {path}:5:26: d: bad value for 'rate': Input should "
                                   "be less than 1; received 1.5")


# (input, node fields, field, its column in `  - {id: n, <fields>}`, pydantic's message)
OUT_OF_RANGE = [
    ("x", "op: dropout, rate: 1", "rate", "Input should be less than 1"),
    ("x", "op: dropout, rate: -0.1", "rate", "Input should be greater than or equal to 0"),
    ("x", "op: leaky_relu, alpha: .nan", "alpha", "Input should be a finite number"),
    ("x", "op: batchnorm2d, eps: 0", "eps", "Input should be greater than 0"),
    ("x", "op: batchnorm2d, eps: .inf", "eps", "Input should be a finite number"),
    ("x", "op: batchnorm2d, momentum: 1.5", "momentum", "Input should be less than or equal to 1"),
    ("x", "op: batchnorm2d, momentum: -0.1", "momentum",
     "Input should be greater than or equal to 0"),
    ("x", "op: lrn, size: 3, k: 0", "k", "Input should be greater than 0"),
    ("x", "op: lrn, size: 3, alpha: -1", "alpha", "Input should be greater than 0"),
    ("x", "op: lrn, size: 3, beta: .nan", "beta", "Input should be a finite number"),
    ("v", "op: linear, features: 0", "features", "Input should be greater than or equal to 1"),
    ("x", "op: highway, skip: x, gate_kernel: 0", "gate_kernel",
     "Input should be greater than or equal to 1"),
    ("x", "op: highway, skip: x, gate_bias: .inf", "gate_bias", "Input should be a finite number"),
    ("x", "op: yolo_decode, score_threshold: .nan", "score_threshold",
     "Input should be a finite number"),
]


@pytest.mark.parametrize("inp, fields, field, message", OUT_OF_RANGE,
                         ids=[f"{c[1].split(',')[0][4:]}-{c[2]}" for c in OUT_OF_RANGE])
def test_layer_field_out_of_range_is_refused_at_the_field(tmp_path, capsys, inp, fields, field,
                                                          message):
    line = f"  - {{id: n, {fields}, inputs: [{inp}]}}\n"
    col = line.index(f" {field}:") + 2
    assert refused(tmp_path, capsys, HEAD + line).startswith(
        f"5:{col}: n: bad value for '{field}': {message}; received ")


def test_layer_field_in_a_block_is_refused_at_the_instance():
    text = ("name: t\ninputs: {x: [3, 8, 8]}\nblocks:\n  drop:\n    params: {p: 0.5}\n"
            "    nodes:\n      - {id: d, op: dropout, rate: p}\n"
            "nodes:\n  - {id: b, block: drop, args: {p: 2}}\n")
    with pytest.raises(graphcnn.GraphCnnError) as info:
        graphcnn.check(NetworkSpec.from_text(text, "b.yaml"))
    assert "bad value for 'rate': Input should be less than 1" in str(info.value)
    assert str(info.value).startswith("b.yaml:")


def test_ranges_are_in_the_json_schema():
    schema = json_schema()
    assert schema["properties"]["training"]["anyOf"][0] == {"$ref": "#/$defs/TrainingSection"}
    assert schema["$defs"]["TrainingSection"]["properties"]["lr"]["exclusiveMinimum"] == 0
    rate = schema["$defs"]["Dropout"]["properties"]["rate"]
    assert (rate["minimum"], rate["exclusiveMaximum"]) == (0, 1)
    assert json.loads((SPECS / "schema.json").read_text()) == schema


def test_to_yaml_writes_only_the_training_keys_written():
    """The spec text embedded in ONNX metadata: defaults the user left out stay out."""
    spec = NetworkSpec.from_yaml(SPECS / "mnist1d_cnn.yaml")
    line = next(ln for ln in spec.to_yaml().splitlines() if ln.startswith("training:"))
    assert line == ("training: {loss: cross_entropy, optimizer: adam, lr: 0.003, epochs: 100, "
                    "batch: 100, data: mnist1d, seed: 0}")
    text = HEAD + "training: {lr: 0.01, optimizer: sgd}\n"
    assert "training: {optimizer: sgd, lr: 0.01}" in NetworkSpec.from_text(text).to_yaml()
    assert "training: {}" in NetworkSpec.from_text(HEAD + "training: {}\n").to_yaml()


def test_recipe_is_the_section_with_its_defaults():
    spec = NetworkSpec.from_text(HEAD + "training: {optimizer: adam, epochs: 3}\n")
    recipe = recipe_of(spec)
    assert isinstance(recipe, Recipe)
    assert (recipe.optimizer, recipe.epochs, recipe.lr, recipe.batch) == ("adam", 3, 0.01, 100)
    assert recipe_of(NetworkSpec.from_text(HEAD)) == Recipe()
    assert recipe.override(lr=0.5, batch=None).lr == 0.5


def test_unused_nodes_get_one_warning_and_are_left_out(tmp_path, capsys):
    """`outputs:` naming an inner node: one located line for all the nodes cut off (not one
    per node), and the compiled model holds only what reaches the output."""
    import onnx

    from graphcnn.cli import main

    spec = tmp_path / "cut.yaml"
    spec.write_text("name: cut\ninputs: {x: [3, 16, 16]}\nnodes:\n"
                    "  - {id: c1, op: conv2d, channels: 4, kernel: 3}\n  - {id: r1, op: relu}\n"
                    + "".join(f"  - {{id: c{i}, op: conv2d, channels: 4, kernel: 3}}\n"
                              for i in range(2, 7))
                    + "outputs: [r1]\n")
    assert main(["check", str(spec)]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if "warning" in l]
    assert lines == [f"{spec}:6:5: warning: 5 nodes reach no output (c2, c3, c4 and 2 more); "
                     "compiled models leave them out"]
    out = tmp_path / "cut.onnx"
    assert main(["compile", str(spec), "-o", str(out)]) == 0
    assert "left out 5 node(s) that reach no output" in capsys.readouterr().out
    model = onnx.load(str(out))
    assert [n.name for n in model.graph.node] == ["c1", "r1"]
    assert [t.name for t in model.graph.initializer] == ["c1.weight", "c1.bias"]


@pytest.mark.parametrize("merge", ["{id: a, op: add, inputs: [c, g]}",
                                   "{id: a, op: highway, inputs: [g, c]}"])
def test_merge_of_a_broadcast_shape_names_the_axes_not_the_input_size(tmp_path, merge):
    """[N, C, H, W] with a pooled [N, C, 1, 1]: at input size 1 both would be 1 x 1, but the
    size is not the cause; the error says which axes disagree and points at `mul`."""
    spec = tmp_path / "bc.yaml"
    spec.write_text("name: bc\ninputs: {x: [8, 16, 16]}\nnodes:\n"
                    "  - {id: c, op: conv2d, channels: 8, kernel: 3, padding: same}\n"
                    "  - {id: g, op: global_avgpool, keepdims: true}\n  - " + merge + "\n")
    with pytest.raises(GraphCnnError) as info:
        graphcnn.check_spec(spec)
    text = str(info.value)
    assert text.startswith(f"{spec}:6:5: a: ")
    assert "disagree on axis 2 (spatial): 16 vs 1, axis 3 (spatial): 16 vs 1" in text
    assert "use `mul`" in text and "admissible" not in text
