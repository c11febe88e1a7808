"""Checkpoints into specs and weights back out: name maps both ways, the load report, strict and
partial loading, and the commands (compile/run --weights, export-weights --map)."""
from __future__ import annotations

import re

import numpy as np
import pytest

import graphcnn
from conftest import SPECS
from graphcnn.cli import main
from graphcnn.deploy.namemap import SKIP, build_map, maps_of
from graphcnn.deploy.weights import expected_weights, load_weights
from graphcnn.errors import DataError, SpecError

MAPPED = sorted(p.stem for p in SPECS.glob("*.yaml") if "\nweights:" in p.read_text())

TINY = """name: tiny
inputs: {x: [3, 8, 8]}
nodes:
  - {id: stem.conv, op: conv2d, channels: 4, kernel: 3, padding: 1, bias: false}
  - {id: stem.bn, op: batchnorm2d}
  - {op: relu}
  - {op: global_avgpool}
  - {op: flatten}
  - {id: fc, op: linear, features: 5}
weights:
  torch:
    - ['^aux\\.', null]
    - ['^conv1\\.', 'stem.conv.']
    - ['^bn1\\.', 'stem.bn.']
    - ['^head\\.(weight|bias)$', 'fc.\\1']
"""


def torch_names(rng) -> dict[str, np.ndarray]:
    """TINY's weights under the `torch` map's checkpoint names, as torch would save them."""
    return {"conv1.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
            "bn1.weight": rng.random(4).astype(np.float32) + 0.5,
            "bn1.bias": rng.standard_normal(4).astype(np.float32),
            "bn1.running_mean": rng.standard_normal(4).astype(np.float32),
            "bn1.running_var": rng.random(4).astype(np.float32) + 0.5,
            "bn1.num_batches_tracked": np.array(7, dtype=np.int64),
            "head.weight": rng.standard_normal((5, 4)).astype(np.float32),
            "head.bias": rng.standard_normal(5).astype(np.float32),
            "aux.weight": np.zeros((2, 2), np.float32)}


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def save(path, arrays):
    from graphcnn.checkpoints import format_for, write_checkpoint

    write_checkpoint(path, arrays, format_for(path))
    return path


# ---- maps ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MAPPED)
def test_every_shipped_map_turns_around_onto_every_parameter(name):
    """export-weights --map works for each shipped spec: every parameter id has a checkpoint
    name that the map sends back to that id (checked without torch)."""
    checked = graphcnn.check_spec(SPECS / f"{name}.yaml")
    for map_name, name_map in maps_of(checked.spec).items():
        for spec_id in expected_weights(checked):
            found = name_map.source(spec_id)
            assert found is not None, (map_name, spec_id)
            assert name_map.target(found[0]) == spec_id, (map_name, spec_id, found)


def test_first_match_wins_null_skips_and_turning_around_prefers_the_narrowest_rule():
    name_map = build_map("m", [[r"^aux\.", None],
                               [r"^layer(\d)\.(\d+)\.downsample\.0\.", r"stage\1.block\2.add.project."],
                               [r"^layer(\d)\.(\d+)\.downsample\.1\.", r"stage\1.block\2.add.project.bn."],
                               [r"^layer(\d)\.(\d+)\.", r"stage\1.block\2."],
                               [r"^features\.1\.(\d+)\.layer_scale$", r"s.block\1.ls.weight", [-1, 1, 1]]])
    assert name_map.target("aux.fc.weight") == SKIP
    assert name_map.target("layer2.0.downsample.1.weight") == "stage2.block0.add.project.bn.weight"
    assert name_map.target("layer2.0.conv1.weight") == "stage2.block0.conv1.weight"
    assert name_map.target("fc.weight") is None
    assert name_map.source("stage2.block0.add.project.bn.weight") == ("layer2.0.downsample.1.weight", None)
    assert name_map.source("stage2.block0.add.project.weight") == ("layer2.0.downsample.0.weight", None)
    assert name_map.source("s.block3.ls.weight") == ("features.1.3.layer_scale", (-1, 1, 1))
    assert name_map.source("elsewhere.weight") is None


def test_a_rule_with_a_pattern_outside_its_groups_does_not_turn_around():
    name_map = build_map("m", [[r"^features\.\d+\.conv\.", "conv."]])
    assert name_map.target("features.3.conv.weight") == "conv.weight"
    assert name_map.source("conv.weight") is None


def test_a_bad_rule_is_refused_at_its_line(tmp_path):
    text = TINY.replace("['^bn1\\.', 'stem.bn.']", "['^bn1\\.(', 'stem.bn.']")
    assert text != TINY
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=r"bad\.yaml:14:7: weights map 'torch' rule 2: bad regex"):
        graphcnn.load_spec(path)


# ---- loading ---------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".pth"])
def test_a_checkpoint_loads_through_the_spec_map_with_a_report(tiny, tmp_path, suffix):
    rng = np.random.default_rng(0)
    arrays = torch_names(rng)
    path = save(tmp_path / f"w{suffix}", arrays)
    checked = graphcnn.check_spec(tiny)
    loaded, report = load_weights(path, checked, spec=checked.spec)
    assert set(loaded) == set(expected_weights(checked))
    np.testing.assert_array_equal(loaded["stem.conv.weight"], arrays["conv1.weight"])
    np.testing.assert_array_equal(loaded["fc.bias"], arrays["head.bias"])
    assert str(report) == (f"loaded 7/9 tensors from w{suffix} (map: torch): 5 weights, "
                           "1 batchnorm statistics pairs; skipped 1 num_batches_tracked, "
                           "1 by the map's null rules")


def test_strict_loading_names_every_kind_of_misfit(tiny, tmp_path):
    rng = np.random.default_rng(1)
    arrays = torch_names(rng)
    arrays["head.weight"] = np.zeros((6, 4), np.float32)     # another number of classes
    arrays["extra.weight"] = np.zeros(3, np.float32)         # no rule places it
    del arrays["bn1.running_var"]
    path = save(tmp_path / "w.npz", arrays)
    checked = graphcnn.check_spec(tiny)
    with pytest.raises(DataError) as info:
        load_weights(path, checked, spec=checked.spec)
    text = str(info.value)
    for piece in ["keys no rule of the map places (1): extra.weight",
                  "shapes that differ (1): head.weight [6, 4] -> fc.weight [5, 4]",
                  "spec parameters no key fills (2): stem.bn.running_var, fc.weight",
                  "--partial"]:
        assert piece in text, text


def test_partial_loading_keeps_the_initial_values_of_what_does_not_fit(tiny, tmp_path):
    rng = np.random.default_rng(2)
    arrays = torch_names(rng)
    arrays["head.weight"] = np.zeros((6, 4), np.float32)
    arrays["head.bias"] = np.zeros(6, np.float32)
    path = save(tmp_path / "w.npz", arrays)
    checked = graphcnn.check_spec(tiny)
    loaded, report = load_weights(path, checked, spec=checked.spec, partial=True)
    assert "fc.weight" not in loaded and "stem.conv.weight" in loaded
    assert "kept their initial values (2): fc.weight, fc.bias" in str(report)
    assert "not loaded (2): head.weight [6, 4] -> fc.weight [5, 4]" in str(report)
    other = save(tmp_path / "other.npz", {"unrelated.weight": np.zeros(3, np.float32)})
    with pytest.raises(DataError, match="gives none of the spec's parameters"):
        load_weights(other, checked, spec=checked.spec, partial=True)


def test_integer_tensors_and_size_one_axes(tiny, tmp_path):
    rng = np.random.default_rng(3)
    arrays = torch_names(rng)
    arrays["head.bias"] = arrays["head.bias"].reshape(5, 1)  # size-1 axes: reshaped
    checked = graphcnn.check_spec(tiny)
    loaded, _ = load_weights(save(tmp_path / "a.npz", arrays), checked, spec=checked.spec)
    assert loaded["fc.bias"].shape == (5,)
    arrays["head.bias"] = np.arange(5)
    with pytest.raises(DataError, match=r"not floating point \(1\): head.bias \(int64\) -> fc.bias"):
        load_weights(save(tmp_path / "b.npz", arrays), checked, spec=checked.spec)


def test_names_that_are_spec_ids_need_no_map(tiny, tmp_path):
    checked = graphcnn.check_spec(tiny)
    rng = np.random.default_rng(4)
    arrays = {k: rng.standard_normal(s).astype(np.float32) for k, s in expected_weights(checked).items()}
    _, report = load_weights(save(tmp_path / "w.safetensors", arrays), checked, spec=checked.spec)
    assert "(map: none)" in str(report)
    with pytest.raises(DataError, match="no weights map 'nope'"):
        load_weights(tmp_path / "w.safetensors", checked, spec=checked.spec, map_name="nope")


# ---- commands --------------------------------------------------------------------------------

def test_compile_run_and_export_weights_round_trip(tiny, tmp_path, capsys):
    rng = np.random.default_rng(5)
    arrays = torch_names(rng)
    checkpoint = save(tmp_path / "w.pth", arrays)
    model = tmp_path / "m.onnx"
    assert main(["compile", str(tiny), "--weights", str(checkpoint), "-o", str(model)]) == 0
    assert "loaded 7/9 tensors from w.pth (map: torch)" in capsys.readouterr().out
    back = tmp_path / "back.safetensors"
    assert main(["export-weights", str(model), "--map", "torch", "-o", str(back)]) == 0
    from graphcnn.checkpoints import read_checkpoint

    read = read_checkpoint(back)
    for name, entry in read.entries.items():
        np.testing.assert_array_equal(entry.read(), arrays[name])
    assert set(read.entries) == set(arrays) - {"aux.weight", "bn1.num_batches_tracked"}
    # a random-weight model takes the checkpoint at run time, by the spec it carries
    plain = tmp_path / "plain.onnx"
    assert main(["compile", str(tiny), "-o", str(plain)]) == 0
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    outs = []
    for args in ([str(model)], [str(plain), "--weights", str(checkpoint)]):
        target = tmp_path / f"y{len(outs)}.npy"
        assert main(["run", *args, "--input", str(tmp_path / "x.npy"), "--output", str(target)]) == 0
        outs.append(np.load(target))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_export_weights_never_writes_onto_its_input(tiny, tmp_path, capsys):
    model = tmp_path / "m.onnx"
    assert main(["compile", str(tiny), "-o", str(model)]) == 0
    before = model.read_bytes()
    assert main(["export-weights", str(model), "-o", str(model)]) == 1
    assert model.read_bytes() == before
    assert main(["export-weights", str(model), "-o", str(tmp_path / "w.h5")]) == 1
    assert "own input" in capsys.readouterr().err


def test_a_torchvision_checkpoint_goes_in_and_comes_back_out_equal(tmp_path, capsys):
    """.pth -> compile -> export-weights --map torchvision -> .pth: torch.load gives the same
    tensors (num_batches_tracked aside) as the state_dict saved."""
    torch = pytest.importorskip("torch")
    from conftest import ROOT
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    import torchvision_check as tool

    try:
        tv = tool.import_torchvision()
    except tool.Missing as exc:
        pytest.skip(str(exc))
    model = tool.build_torchvision(tv, "resnet18", {})
    tool.randomise(model, 0)
    state = model.state_dict()
    torch.save(state, tmp_path / "r18.pth")
    onnx_path, back = tmp_path / "r18.onnx", tmp_path / "back.pth"
    assert main(["compile", str(SPECS / "resnet18.yaml"), "--weights", str(tmp_path / "r18.pth"),
                 "-o", str(onnx_path)]) == 0
    assert re.search(r"loaded 102/122 tensors from r18.pth \(map: torchvision\): 62 weights, "
                     r"20 batchnorm statistics pairs; skipped 20 num_batches_tracked",
                     capsys.readouterr().out)
    assert main(["export-weights", str(onnx_path), "--map", "torchvision", "-o", str(back)]) == 0
    loaded = torch.load(back, weights_only=True)
    wanted = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert list(loaded) == list(wanted) or set(loaded) == set(wanted)
    for key, tensor in wanted.items():
        assert torch.equal(loaded[key], tensor), key


def test_train_starts_from_a_checkpoint_with_init(tiny, tmp_path, capsys):
    """train --init: the run starts from the checkpoint's weights (a tiny learning rate leaves
    them there); with --partial a head of another size keeps its initial values."""
    rng = np.random.default_rng(6)
    arrays = torch_names(rng)
    checkpoint = save(tmp_path / "w.pth", arrays)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((8, 3, 8, 8)).astype(np.float32),
             y=rng.integers(0, 5, 8))
    out = tmp_path / "t.onnx"
    common = ["train", str(tiny), "--data", str(tmp_path / "d.npz"), "--epochs", "1",
              "--batch", "4", "--lr", "1e-9", "--init", str(checkpoint)]
    assert main([*common, "-o", str(out)]) == 0
    assert "loaded 7/9 tensors from w.pth (map: torch)" in capsys.readouterr().out
    from graphcnn.deploy.weights import model_weights
    from graphcnn.runtime import load_model

    trained = model_weights(load_model(out))
    np.testing.assert_allclose(trained["stem.conv.weight"], arrays["conv1.weight"], atol=1e-6)
    arrays["head.weight"] = np.zeros((7, 4), np.float32)
    save(checkpoint, arrays)
    assert main([*common, "-o", str(out)]) == 1
    assert main([*common, "--partial", "-o", str(out)]) == 0
    assert "kept their initial values (1): fc.weight" in capsys.readouterr().out
    assert main([*common, "--resume", str(out.with_suffix(".ckpt.npz")), "-o", str(out)]) == 1


def test_a_compiled_model_carries_a_self_contained_spec(tmp_path, monkeypatch):
    """The spec text in a model has its imported blocks inlined: the model's spec checks from
    any folder (run --weights, export-weights --map and diff read it)."""
    from graphcnn.runtime import load_model
    from graphcnn.spec import NetworkSpec

    model = tmp_path / "r18.onnx"
    assert main(["compile", str(SPECS / "resnet18.yaml"), "-o", str(model)]) == 0
    monkeypatch.chdir(tmp_path)
    meta = {p.key: p.value for p in load_model(model).metadata_props}
    spec = NetworkSpec.from_text(meta["graphcnn_spec"], "<model>")
    assert not spec.imports and "basic" in spec.blocks
    assert graphcnn.check(spec).total_params == 11_689_512
