"""`graphcnn diff`: per-stage sums checked against `graphcnn summary`, a hand-written pair with
each kind of node difference, a spec against its own compiled model, weights of two seeds
against numpy, the JSON keys, the coloured drawing, and user errors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from graphcnn.cli import main
from graphcnn.workbench.diff import COLOURS, diff

from conftest import SPECS, onnx_weights

SMALL_A = """
name: small
inputs: {image: [3, 8, 8]}
nodes:
  - {id: conv1, op: conv2d, channels: 8, kernel: 3, padding: 1}
  - {id: drop, op: dropout, rate: 0.1}
  - {id: relu, op: relu}
  - {id: conv2, op: conv2d, channels: 4, kernel: 3, padding: 1}
  - {id: pool, op: global_avgpool}
  - {id: fc, op: linear, features: 2}
"""

SMALL_B = """
name: small
inputs: {image: [3, 8, 8]}
nodes:
  - {id: conv1, op: conv2d, channels: 16, kernel: 3, padding: 1}
  - {id: relu, op: relu}
  - {id: conv2, op: conv2d, channels: 4, kernel: 3, padding: 1}
  - {id: bn, op: batchnorm2d}
  - {id: pool, op: global_avgpool}
  - {id: fc, op: linear, features: 2}
"""


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def pair(tmp_path):
    (tmp_path / "a.yaml").write_text(SMALL_A)
    (tmp_path / "b.yaml").write_text(SMALL_B)
    return tmp_path / "a.yaml", tmp_path / "b.yaml"


@pytest.fixture(scope="module")
def resnets():
    return diff(str(SPECS / "resnet18.yaml"), str(SPECS / "resnet50.yaml"))


def summary_json(capsys, spec, *more) -> dict:
    code, text, _ = cli(capsys, "summary", spec, "--json", *more)
    assert code == 0
    return json.loads(text)


def test_resnet_stages_add_up_to_each_summary(resnets, capsys):
    from graphcnn.api import check_spec
    from graphcnn.summary import rows

    s = resnets.structure
    assert [g.id for g in s.groups] == ["stem", *(f"stage{i}" for i in range(1, 5)), "pool", "fc"]
    for side, name in enumerate(("resnet18", "resnet50")):
        totals = summary_json(capsys, SPECS / f"{name}.yaml")
        assert s.params[side] == sum(g.params[side] for g in s.groups) == totals["total_params"]
        assert s.macs[side] == sum(g.macs[side] for g in s.groups) == totals["total_macs"]
        folded = {r.id: (r.params, r.macs) for r in rows(check_spec(SPECS / f"{name}.yaml"), 1)}
        assert {g.id: (g.params[side], g.macs[side]) for g in s.groups} == folded
    assert s.params == (11_689_512, 25_557_032)


def test_resnet_text_is_a_per_stage_table(capsys):
    code, text, _ = cli(capsys, "diff", SPECS / "resnet18.yaml", SPECS / "resnet50.yaml")
    assert code == 0
    lines = text.splitlines()
    stage3 = next(line for line in lines if line.split()[:1] == ["stage3"]).split()
    assert stage3[:5] == ["stage3", "14", "->", "60", "+46"]
    assert "2,099,712" in stage3 and "7,098,368" in stage3 and "+4,998,656" in stage3
    total = next(line for line in lines if line.split()[:1] == ["total"])
    assert "11,689,512" in total and "25,557,032" in total and "+13,867,520" in total
    assert "~ stage1.block0.conv1  kernel: 3 -> 1" in text
    assert "+ stage1.block0.conv3  conv2d  [N, 256, 56, 56]  16,384 params" in text


def test_each_kind_of_node_difference(pair, capsys):
    s = diff(*map(str, pair)).structure
    status = {n.id: n.status for n in s.nodes}
    assert list(status) == ["conv1", "drop", "relu", "conv2", "bn", "pool", "fc"]  # drop stays put
    assert status == {"conv1": "changed", "drop": "removed", "relu": "changed", "conv2": "affected",
                      "bn": "added", "pool": "changed", "fc": "same"}
    conv1 = next(n for n in s.nodes if n.id == "conv1")
    assert conv1.fields == {"channels": (8, 16)}
    assert conv1.params == (8 * 3 * 9 + 8, 16 * 3 * 9 + 16)
    code, text, _ = cli(capsys, "diff", *pair, "--depth", "0")
    assert code == 0
    assert ("~ conv1  channels: 8 -> 16; shape [N, 8, 8, 8] -> [N, 16, 8, 8]; "
            "params 224 -> 448") in text
    assert "- drop  dropout  [N, 8, 8, 8]" in text
    assert "+ bn  batchnorm2d  [N, 4, 8, 8]  8 params" in text
    assert "~ relu  inputs: drop -> conv1" in text
    assert "> conv2  params 292 -> 580" in text
    assert "nodes: 1 added, 1 removed, 3 changed, 1 affected, 1 same" in text


def test_exit_code_only_when_asked(pair, capsys):
    assert cli(capsys, "diff", *pair)[0] == 0
    assert cli(capsys, "diff", *pair, "--exit-code")[0] == 1
    assert cli(capsys, "diff", pair[0], pair[0], "--exit-code")[0] == 0


def compiled(capsys, spec, target, seed=0):
    code, _, err = cli(capsys, "compile", spec, "-o", target, "--seed", seed)
    assert code == 0, err
    return target


def test_spec_against_its_compiled_model(pair, tmp_path, capsys):
    model = compiled(capsys, pair[1], tmp_path / "b.onnx")
    code, text, _ = cli(capsys, "diff", pair[1], model, "--exit-code")
    assert code == 0
    assert "structure: the same: 6 nodes" in text and text.rstrip().endswith("no differences")


def test_two_seeds_differ_in_weights_only(pair, tmp_path, capsys):
    import onnx

    a, b = (compiled(capsys, pair[0], tmp_path / f"s{seed}.onnx", seed) for seed in (0, 1))
    assert cli(capsys, "diff", a, b, "--exit-code")[0] == 0  # structure alone: the same
    code, text, _ = cli(capsys, "diff", a, b, "--weights", "--json", "--exit-code")
    assert code == 1
    data = json.loads(text)
    assert data["structure"]["nodes"] == [] and data["differs"]
    wa, wb = (onnx_weights(onnx.load(str(m))) for m in (a, b))
    found = {t["name"]: t["max_abs"] for t in data["weights"]["tensors"]}
    for name in ("conv1.weight", "conv2.weight", "fc.weight"):
        assert found[name] == pytest.approx(float(np.abs(wa[name] - wb[name]).max()))
        assert found[name] > 0
    assert found["conv1.bias"] == 0  # zeros whatever the seed
    assert data["weights"]["only_a"] == data["weights"]["only_b"] == []


def test_a_model_without_its_spec_compares_weights_only(pair, tmp_path, capsys):
    import onnx

    model = onnx.load(str(compiled(capsys, pair[0], tmp_path / "a.onnx")))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "bare.onnx"))
    code, _, err = cli(capsys, "diff", tmp_path / "bare.onnx", tmp_path / "a.onnx")
    assert code == 1 and err.startswith("error: ") and "carries no graphcnn spec" in err
    code, text, _ = cli(capsys, "diff", tmp_path / "bare.onnx", tmp_path / "a.onnx", "--weights")
    assert code == 0
    assert "structure not compared" in text and text.rstrip().endswith("no differences")


def test_weight_files_beside_two_specs(pair, tmp_path, capsys):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(a, w=np.array([1.0, 2.0, -4.0], np.float32), gone=np.zeros(2), odd=np.zeros((2, 2)))
    np.savez(b, w=np.array([1.0, 2.5, -4.0], np.float32), new=np.ones(1), odd=np.zeros((4,)))
    code, text, _ = cli(capsys, "diff", *pair, "--weights", a, b, "--json")
    assert code == 0
    w = json.loads(text)["weights"]
    assert w["tensors"] == [{"name": "w", "shape": [3], "max_abs": 0.5, "max_rel": 0.125}]
    assert (w["only_a"], w["only_b"]) == (["gone"], ["new"])
    assert w["shape_mismatch"] == [{"name": "odd", "shape": [[2, 2], [4]]}]
    code, text, _ = cli(capsys, "diff", a, b)  # two weight files: their weights, no structure
    assert code == 0
    assert "only in A: gone" in text and "shape differs: odd [2, 2] -> [4]" in text


def test_json_keys(pair, capsys):
    code, text, _ = cli(capsys, "diff", *pair, "--json")
    data = json.loads(text)
    assert set(data) == {"a", "b", "differs", "notes", "structure", "weights"}
    assert set(data["a"]) == {"source", "kind", "name", "total_params", "total_macs"}
    s = data["structure"]
    assert set(s) == {"depth", "counts", "params", "macs", "params_delta", "macs_delta", "inputs",
                      "outputs", "groups", "nodes"}
    assert set(s["groups"][0]) == {"id", "nodes", "params", "macs", "params_delta", "macs_delta",
                                   "output_shape", "counts"}
    assert set(s["nodes"][0]) == {"id", "status", "group", "op", "fields", "output_shape",
                                  "params", "macs"}
    assert s["nodes"][0]["fields"] == {"channels": [8, 16]}
    assert data["weights"] is None


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz")
def test_draw_colours_the_differences(pair, tmp_path, capsys):
    import xml.etree.ElementTree as ET

    target = tmp_path / "d.svg"
    code, text, _ = cli(capsys, "diff", *pair, "--draw", target)
    assert code == 0 and f"wrote {target}" in text
    ns = {"s": "http://www.w3.org/2000/svg"}
    fills = {}
    for g in ET.parse(target).getroot().iter("{http://www.w3.org/2000/svg}g"):
        title = g.find("s:title", ns)
        shapes = [s for s in (g.find("s:polygon", ns), g.find("s:path", ns)) if s is not None]
        if title is not None and shapes and "layer" in g.get("class", "").split():
            fills[title.text] = shapes[0].get("fill")  # rounded boxes are paths
    assert fills["conv1"] == COLOURS["changed"] and fills["bn"] == COLOURS["added"]
    assert fills["drop"] == COLOURS["removed"] and fills["conv2"] == COLOURS["affected"]
    assert fills["fc"] not in COLOURS.values()


def test_draw_mermaid_and_folded(tmp_path, capsys):
    target = tmp_path / "d.mmd"
    code, _, _ = cli(capsys, "diff", SPECS / "resnet18.yaml", SPECS / "resnet50.yaml",
                     "--draw", target, "--depth", "2", "--json")
    assert code == 0
    text = target.read_text()
    assert f"fill:{COLOURS['added']}" in text and f"fill:{COLOURS['changed']}" in text
    assert "block5" in text  # stage3.block5 exists in resnet50 only


@pytest.mark.parametrize("args, message", [
    (["missing.yaml", "b.yaml"], "error: cannot read spec file"),
    (["a.yaml", "b.txt"], "error: cannot tell what b.txt is"),
    (["a.yaml", "b.yaml", "--weights", "a.npz"], "error: --weights takes no file"),
    (["a.yaml", "b.yaml", "--weights"], "error: a.yaml is a spec: it holds no weights"),
    (["a.yaml", "w.npz"], "error: a.yaml is a spec"),
    (["a.yaml", "b.yaml", "--depth", "-1"], "error: --depth must be at least 1"),
    (["a.yaml", "b.yaml", "--draw", "d.pdf"], "error: unknown diagram format"),
    (["w.npz", "w.npz", "--draw", "d.svg"], "error: --draw needs two specs"),
    (["not.onnx", "b.yaml"], "error: not.onnx is not a readable ONNX model"),
])
def test_user_errors_exit_1_without_traceback(args, message, pair, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "w.npz", w=np.zeros(1))
    (tmp_path / "not.onnx").write_bytes(b"not a model")
    code, _, err = cli(capsys, "diff", *args)
    assert code == 1
    assert err.startswith(message) and "Traceback" not in err
