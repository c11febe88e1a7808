"""`--set` overrides, `extends:` inheritance and `scale:` width/depth multipliers: the values
they give, and errors located on the override or in whichever file wrote the value."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from conftest import SPECS
from graphcnn import check_spec, load_spec
from graphcnn.api import model_for
from graphcnn.cli import build_parser, main
from graphcnn.errors import GraphCnnError
from graphcnn.spec import NetworkSpec
from graphcnn.spec.overrides import parse_override
from graphcnn.spec.scaling import ScaleSection, make_divisible

RESNET18 = str(SPECS / "resnet18.yaml")
CNN = str(SPECS / "mnist1d_cnn.yaml")


def error(fn, *args, **kwargs) -> str:
    with pytest.raises(GraphCnnError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def write(folder, name: str, text: str) -> str:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


# ---- --set -------------------------------------------------------------------------------

def test_acceptance_compile_resnet18_with_ten_classes(tmp_path, capsys):
    out = tmp_path / "r.onnx"
    assert main(["compile", RESNET18, "--set", "nodes.fc.features=10", "-o", str(out)]) == 0
    model = onnx.load(str(out), load_external_data=False)
    dims = [d.dim_value or d.dim_param for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["N", 10]
    embedded = {p.key: p.value for p in model.metadata_props}
    spec_text = next(v for k, v in embedded.items() if "spec" in k)
    assert "features: 10" in spec_text and "labels" not in spec_text
    assert "labels" not in embedded  # 1,000 ImageNet names no longer fit: left out


def test_stale_labels_are_a_warning_of_check(capsys):
    checked = check_spec(RESNET18, overrides=["nodes.fc.features=10"])
    assert checked.spec.labels is None
    assert checked.warnings[-1].endswith("labels: 1,000 names for output 'fc' of 10 classes "
                                         "after --set: the labels are left out (--set "
                                         "labels=FILE names the classes)")
    # labels the override itself gives are checked as usual, and located on it
    assert main(["check", RESNET18, "--set", "nodes.fc.features=10", "--set", "labels=[a, b]"]) == 1
    assert capsys.readouterr().err.startswith(
        "error: --set:2:1: labels: 2 names for output 'fc' of 10 classes")


@pytest.mark.parametrize("sets, message", [
    (["nodes.fcc.features=10"], "--set:1:7: unknown node 'fcc' in nodes; did you mean 'fc'?"),
    (["nodes.fc.features=10", "nodes.fc.featurs=3"],
     "--set:2:10: unknown key 'featurs' in nodes.fc; did you mean 'features'?; to add a key "
     "the spec does not write: +nodes.fc.featurs=3"),
    (["+nodes.fc.featurs=3"], "--set:1:11: fc: unknown field 'featurs'; did you mean 'features'?"),
    (["nodes.fc.features=ten"], "--set:1:10: fc: bad value for 'features': Input should be a "
                                "valid integer"),
    (["+nodes.fc.features=3"], "--set:1:11: nodes.fc.features is written already (as 1000); "
                               "`+` adds a key the spec does not write; to change it: "
                               "nodes.fc.features=3"),
    (["nodes.9.op=relu"], "--set:1:7: position 9 is past the end of nodes (7 items)"),
    (["nodes.fc.features.x=1"], "--set:1:19: nodes.fc.features is 1000, not a mapping or list"),
    (["inputs.image=[3,320"], "--set:1:20: invalid YAML"),
    (["nodes"], "--set:1:1: an override is path=value, +path=value, ++path=value or ~path"),
    (["nodes..op=relu"], "--set:1:7: empty key in the override's path"),
    (["~nodes.fc.bias"], "--set:1:11: unknown key 'bias' in nodes.fc"),
    (["~nodes.fc.features=10"], "--set:1:11: nodes.fc.features is 1000, not 10"),
    (["blocks.basik.params.width=32"], "--set:1:8: unknown block 'basik' (defined in the spec "
                                       "or imported); did you mean 'basic'?"),
    (["+nodes.fc={op: relu}"], "--set:1:8: `+` on a list inserts at a position, not at an id"),
])
def test_override_errors_are_located_on_the_override(sets, message):
    assert error(load_spec, RESNET18, sets).startswith(message)


def test_a_later_error_about_an_overridden_value_names_the_override():
    assert error(check_spec, CNN, overrides=["inputs.x=[1, 4]"]).startswith(
        f"--set:1:8: input 4 does not fit: conv2 ({CNN}:9:5)")
    assert error(check_spec, CNN, overrides=["+nodes.conv1.padding=sideways"]).startswith(
        "--set:1:14: conv1: bad value for 'padding'")


def test_set_replaces_adds_and_deletes():
    spec = load_spec(CNN, ["nodes.logits.features=4", "+nodes.conv1.bias=false",
                           "++nodes.conv2.stride=1", "~nodes.probs", "+nodes.8={op: sigmoid}",
                           "inputs.x=[1,64]", "outputs=[sigmoid_1]"])
    assert spec.nodes[0].bias is False and spec.nodes[2].stride == 1
    assert [n.op for n in spec.nodes][-2:] == ["linear", "sigmoid"]
    assert check_spec(spec).shape_of("sigmoid_1") == (4,)
    assert spec.inputs == {"x": [1, 64]}
    assert load_spec(CNN, ["nodes.7.features=3"]).nodes[7].features == 3  # by position
    with pytest.raises(GraphCnnError, match="bad value for 'name'.*received ''$"):
        load_spec(CNN, ["name="])  # Hydra: nothing after '=' is '' (and a name may not be empty)


def test_ids_with_dots_and_block_nodes(tmp_path):
    path = write(tmp_path, "d.yaml", "name: d\ninputs: {x: [4]}\nnodes:\n"
                 "  - {id: l1.fc, op: linear, features: 3}\n  - {id: l1, op: relu}\n")
    assert load_spec(path, ["nodes.l1.fc.features=5"]).nodes[0].features == 5
    spec = load_spec(RESNET18, ["blocks.basic.nodes.conv1.kernel=5",
                                "blocks.basic.nodes.conv1.padding=2"])
    assert spec.blocks["basic"].nodes[0]["kernel"] == 5  # the imported block, copied in
    assert check_spec(spec).node("stage1.block0.conv1").layer.kernel == 5
    # the copied block keeps its library's locations: an error there names resnet.yaml
    assert error(check_spec, RESNET18, overrides=["blocks.basic.params.stride=abc"]).startswith(
        f"{SPECS}/blocks/resnet.yaml:14:61: stage1.block0.conv1: bad value for 'stride'")


def test_set_on_the_command_line_every_spec_command(tmp_path, capsys):
    parser = build_parser()
    for argv in (["check", "--set", "a=1", CNN, "--set", "b=2"], ["summary", CNN, "--set", "a=1"],
                 ["compile", CNN, "-o", "x.onnx", "--set", "a=1"], ["lint", CNN, "--set", "a=1"],
                 ["run", CNN, "--set", "a=1"], ["bench", "--set", "a=1", CNN],
                 ["predict", CNN, "i.png", "--set", "a=1"], ["train", CNN, "-o", "o", "--set", "a=1"]):
        args = parser.parse_args(argv)
        target = args.spec if hasattr(args, "spec") else args.model
        assert target == CNN and target.overrides[0] == "a=1", argv
    assert main(["check", CNN, "--set", "nodes.logits.features=3"]) == 0
    assert "output probs [N, 3]" in capsys.readouterr().out
    assert main(["run", CNN, "--set", "nodes.logits.features=6"]) == 0
    assert "probs: shape [1, 6]" in capsys.readouterr().out
    assert main(["check", CNN, "--set", "nodes.lgits.features=3"]) == 1
    assert "error: --set:1:7: unknown node 'lgits' in nodes; did you mean 'logits'?" \
        in capsys.readouterr().err


def test_model_api_takes_overrides_and_refuses_them_for_an_onnx_file(tmp_path):
    model = model_for(CNN, overrides=["nodes.logits.features=5"])
    assert model.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 5
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert error(model_for, str(path), overrides=["a=1"]).startswith(
        "--set changes a spec; this is an ONNX model")
    spec = NetworkSpec.from_yaml(CNN)
    assert spec.with_overrides(["nodes.conv1.channels=4"]).nodes[0].channels == 4


def test_parse_override_columns():
    ov = parse_override("+blocks.basic.params.width=32", 3)
    assert (ov.op, ov.keys, ov.cols, ov.value, ov.value_col, ov.line) == \
        ("+", ("blocks", "basic", "params", "width"), (2, 9, 15, 22), "32", 28, 3)


# ---- extends ------------------------------------------------------------------------------

BASE = """name: base
inputs: {x: [1, 40]}
nodes:
  - {id: conv1, op: conv1d, channels: 15, kernel: 3, stride: 2}
  - {id: act1, op: relu}
  - {id: conv2, op: conv1d, channels: 15, kernel: 3, stride: 2}
  - {id: act2, op: relu}
  - {id: flat, op: flatten}
  - {id: logits, op: linear, features: 10}
training: {epochs: 3, lr: 0.1}
"""


@pytest.fixture
def family(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    return tmp_path


def child(folder, nodes: str, head: str = "extends: base.yaml\n", name="child.yaml") -> str:
    return write(folder, name, head + ("nodes:\n" + nodes if nodes else ""))


def test_extends_replace_insert_delete(family):
    path = child(family, "  - {id: conv2, op: conv1d, channels: 8, kernel: 3}\n"
                         "  - {id: d1, op: dropout, rate: 0.1, after: flat}\n"
                         "  - {id: d2, op: dropout, rate: 0.2, after: flat}\n"
                         "  - {id: bn, op: batchnorm1d, before: act1}\n"
                         "  - {id: act2, delete: true}\n"
                         "  - {id: probs, op: softmax, after: logits}\n",
                 head="extends: base.yaml\nname: child\ntraining: {lr: 0.01}\n")
    spec = load_spec(path)
    assert [n.id for n in spec.nodes] == ["conv1", "bn", "act1", "conv2", "flat", "d1", "d2",
                                          "logits", "probs"]
    assert spec.nodes[3].channels == 8 and spec.nodes[3].stride == 1  # replaced whole
    assert spec.name == "child"
    assert (spec.training.lr, spec.training.epochs) == (0.01, 3)  # merged key by key
    assert "extends" not in spec.to_yaml() and NetworkSpec.from_text(spec.to_yaml()) == spec
    assert check_spec(path).shape_of("probs") == (10,)


def test_extends_inputs_replaced_whole_and_chains(family):
    write(family, "mid.yaml", "extends: base.yaml\ninputs: {signal: [1, 64]}\n")
    path = child(family, "  - {id: logits, op: linear, features: 4}\n", "extends: mid.yaml\n")
    spec = load_spec(path)
    assert spec.inputs == {"signal": [1, 64]} and spec.nodes[-1].features == 4
    assert load_spec(path, ["nodes.logits.features=2"]).nodes[-1].features == 2


def test_extends_errors_name_the_file_that_wrote_the_value(family):
    base_bad = write(family, "bad_base.yaml", BASE.replace("kernel: 3, stride: 2}\n  - {id: act1",
                                                           "kernal: 3, stride: 2}\n  - {id: act1"))
    path = child(family, "", f"extends: {base_bad}\n")
    assert error(load_spec, path).startswith(f"{base_bad}:4:43: conv1: unknown field 'kernal'")
    path = child(family, "  - {id: conv2, op: conv1d, channels: 8, kernal: 3}\n")
    assert error(load_spec, path).startswith(f"{path}:3:42: conv2: unknown field 'kernal'")
    path = child(family, "", "extends: base.yaml\ninputs: {x: [1, 4]}\n")
    text = error(check_spec, path)
    assert text.startswith(f"{path}:2:10: input 4 does not fit: conv2 ({family}/base.yaml:6:5)")


@pytest.mark.parametrize("nodes, message", [
    ("  - {id: lgits, op: linear, features: 3}\n",
     "3:6: node 'lgits' is not in the base spec; did you mean 'logits'?; to add a node, say "
     "where: after: <id> or before: <id>"),
    ("  - {id: x1, op: relu, after: conv9}\n",
     "3:24: unknown node 'conv9' in the base spec; did you mean 'conv2'?"),
    ("  - {op: relu}\n", "3:5: a node of an extending spec needs an id"),
    ("  - {id: x1, op: relu, after: act1, before: act2}\n",
     "3:37: a node goes after one node or before one, not both"),
    ("  - {id: act1, delete: true, op: relu}\n",
     "3:16: a deleting entry is {id: <base node>, delete: true}, nothing else"),
    ("  - {id: act1, op: relu, after: conv2}\n",
     "3:6: node 'act1' is in the base spec already: an entry with after: adds a new node"),
])
def test_extends_node_entry_errors(family, nodes, message):
    path = child(family, nodes)
    assert error(load_spec, path).startswith(f"{path}:{message}")


def test_extends_missing_file_and_cycles(family):
    path = child(family, "", "extends: nope.yaml\n")
    assert error(load_spec, path).startswith(f"{path}:1:1: base spec 'nope.yaml' not found")
    a = write(family, "a.yaml", "extends: b.yaml\nname: a\n")
    b = write(family, "b.yaml", "extends: a.yaml\nname: b\n")
    assert error(load_spec, a) == f"{b}:1:1: specs extend each other in a cycle: " \
                                  "a.yaml -> b.yaml -> a.yaml"
    me = write(family, "me.yaml", "extends: me.yaml\n")
    assert "cycle: me.yaml -> me.yaml" in error(load_spec, me)
    with pytest.raises(ValueError, match="extends: is resolved when a spec is read from YAML"):
        NetworkSpec(name="n", inputs={"x": [4]}, nodes=[{"op": "relu"}], extends="b.yaml")


def test_extends_base_imports_resolve_from_the_base(tmp_path):
    (tmp_path / "family").mkdir()
    write(tmp_path, "family/resnet.yaml", (SPECS / "resnet18.yaml").read_text()
          .replace("imports: [blocks/resnet.yaml]", f"imports: [{SPECS}/blocks/resnet.yaml]")
          .replace("labels: labels/imagenet.txt\n", ""))
    write(tmp_path, "family/blocks/extra.yaml", "blocks:\n  head:\n    nodes:\n"
          "      - {id: fc, op: linear, features: 7}\n")
    write(tmp_path, "family/base.yaml", "extends: resnet.yaml\nimports: [blocks/extra.yaml]\n"
          "nodes:\n  - {id: fc, block: head}\n")
    path = write(tmp_path, "mine/net.yaml", "extends: ../family/base.yaml\n")
    assert load_spec(path).imports[-1] == "../family/blocks/extra.yaml"
    checked = check_spec(path)
    assert checked.outputs == ("fc.fc",) and checked.shape_of("fc.fc") == (7,)


# ---- scale --------------------------------------------------------------------------------

TOY = """name: toy_effnet
inputs: {image: [3, 64, 64]}
blocks:
  conv_bn_act:
    params: {out: 32, kernel: 3, stride: 1}
    scalable: {out: width}
    nodes:
      - {id: conv, op: conv2d, channels: out, kernel: kernel, stride: stride, padding: same, bias: false}
      - {id: bn, op: batchnorm2d}
      - {id: act, op: silu}
  mbconv:
    params: {out: 16, expand: 4, stride: 1}
    scalable: {out: width, repeat: depth}
    nodes:
      - {id: expand, block: conv_bn_act, args: {out: x.channels * expand, kernel: 1}}
      - {id: dw, op: conv2d, channels: x.channels * expand, groups: x.channels * expand, kernel: 3, stride: stride, padding: same}
      - {id: project, op: conv2d, channels: out, kernel: 1}
  stage:
    params: {width: 24, n: 3}
    scalable: {width: width, n: depth}
    nodes:
      - {id: first, block: conv_bn_act, args: {out: width, stride: 2}}
      - {id: rest, block: conv_bn_act, repeat: n - 1, args: {out: width}}
      - {id: extra, block: conv_bn_act, args: {out: 40}}
nodes:
  - {id: stem, block: conv_bn_act, args: {out: 32, stride: 2}}
  - {id: s1, block: mbconv, repeat: 1, args: {out: 16}}
  - {id: s2, block: mbconv, repeat: 3, args: {out: 24}, first: {stride: 2}}
  - {id: s3, block: mbconv, repeat: 4, args: {out: 40}, first: {stride: 2}}
  - {id: s4, block: stage, args: {width: 80, n: 3}}
  - {id: head, block: conv_bn_act, args: {out: 1280, kernel: 1}}
  - {id: pool, op: global_avgpool}
  - {id: fc, op: linear, features: 10}
"""


def widths(checked) -> dict[str, int]:
    """Channels of each conv's output, by id."""
    return {n.id: n.shape[0] for n in checked.nodes if n.layer.op_name == "conv2d"}


def test_make_divisible_and_depth_rules():
    assert [make_divisible(v, 8) for v in (8, 12, 20, 3.2, 36, 640)] == [8, 16, 24, 8, 40, 640]
    assert make_divisible(90, 64) == 128  # 64 would lose more than 10%
    scale = ScaleSection(depth=0.1)
    assert [scale.scaled(n, "depth") for n in (30, 1, 0, 4)] == [3, 1, 0, 1]
    assert ScaleSection(width=0.5).scaled("out * 2", "width") == "out * 2"  # expressions stay


def test_scaled_toy_family_channels_and_repeats():
    plain = check_spec(NetworkSpec.from_text(TOY))
    small = check_spec(NetworkSpec.from_text(
        TOY.replace("inputs:", "scale: {width: 0.5, depth: 0.33, divisor: 8}\ninputs:")))
    calls = lambda c, stage: sorted({n.id.split(".")[1] for n in c.nodes  # noqa: E731
                                     if n.id.startswith(stage + ".")})
    assert calls(plain, "s2") == ["block0", "block1", "block2"]
    assert calls(small, "s2") == ["block0"]  # ceil(3 * 0.33) = 1
    assert calls(small, "s3") == ["block0", "block1"]  # ceil(4 * 0.33) = 2
    assert calls(small, "s4") == ["extra", "first"]  # n: ceil(3 * 0.33) = 1, so rest repeats 0
    w = widths(small)
    assert w["stem.conv"] == 16 and w["head.conv"] == 640  # 32, 1280 halved
    assert w["s1.block0.project"] == 8 and w["s2.block0.project"] == 16  # 16 -> 8; 24 -> 12 -> 16
    assert w["s3.block1.project"] == 24  # 40 -> 20 -> 24
    assert w["s4.first.conv"] == 40  # 80 halved once: `out: width` passes a scaled value on
    assert w["s4.extra.conv"] == 24  # a number written inside a block is scaled: 40 -> 24
    assert w["s2.block0.expand.conv"] == 8 * 4  # x.channels * expand: from the scaled input
    assert widths(plain)["s4.extra.conv"] == 40 and widths(plain)["stem.conv"] == 32
    # the spec keeps what it wrote (and its scale), so its text reproduces the model
    spec = NetworkSpec.from_text(TOY.replace("inputs:", "scale: {width: 0.5}\ninputs:"))
    assert spec.nodes[0].args == {"out": 32, "stride": 2}
    assert NetworkSpec.from_text(spec.to_yaml()) == spec


def test_scale_by_set_and_its_errors(tmp_path):
    path = write(tmp_path, "toy.yaml", TOY)
    assert widths(check_spec(path, overrides=["+scale={width: 0.25}"]))["head.conv"] == 320
    assert error(check_spec, CNN, overrides=["+scale.width=0.5"]).startswith(
        "--set:1:2: scale: has nothing to scale: no block declares `scalable:` params")
    assert error(check_spec, path, overrides=["+scale.width=0"]).startswith(
        "--set:1:8: bad value for 'scale.width': Input should be greater than 0")
    text = error(load_spec, write(tmp_path, "bad.yaml", TOY.replace("{out: width}",
                                                                    "{outt: width}", 1)))
    assert text.startswith(f"{tmp_path}/bad.yaml:6:5: bad value for 'blocks.conv_bn_act."
                           "scalable': Value error, 'outt' is not a param of the block")
