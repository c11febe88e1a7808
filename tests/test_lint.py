"""Portability lint: every rule fires on a spec that has its construct and stays quiet on a
near twin without it; every `--portable` rewrite computes what the original does, in
onnxruntime and in onnx.reference, with the same output shapes."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
import yaml
from onnx.reference import ReferenceEvaluator

from conftest import ROOT, ort_run
from graphcnn.api import check_spec
from graphcnn.lint import RULES, lint, portable
from graphcnn.lower.inference import lower


def write_spec(tmp_path, name, shape, nodes) -> str:
    lines = [f"name: {name}", f"inputs: {{x: {list(shape)}}}", "nodes:"]
    lines += ["  - " + yaml.safe_dump(n, default_flow_style=True, sort_keys=False).strip()
              for n in nodes]
    path = tmp_path / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


MAXPOOL = {"id": "p", "op": "maxpool2d", "kernel": 2, "stride": 2, "padding": 1, "ceil_mode": True}
TRIGGERS = {  # rule: (input shape, nodes that trigger it, nodes that do not)
    "GC101": ([2, 5, 5], [MAXPOOL], [MAXPOOL], [2, 6, 6]),
    "GC102": ([2, 6, 7], [{"id": "p", "op": "maxpool2d", "kernel": 3, "stride": 2, "ceil_mode": True}],
              [{"id": "p", "op": "maxpool2d", "kernel": 3, "stride": 2, "ceil_mode": True}], [2, 7, 7]),
    "GC103": ([2, 6, 6], [{"id": "p", "op": "avgpool2d", "kernel": 3, "stride": 1, "padding": 1}],
              [{"id": "p", "op": "avgpool2d", "kernel": 2, "stride": 2}], None),
    "GC104": ([2, 6, 6], [{"id": "c", "op": "conv2d", "channels": 3, "kernel": 2, "padding": "same"}],
              [{"id": "c", "op": "conv2d", "channels": 3, "kernel": 3, "padding": "same"}], None),
    "GC105": ([2, 3, 4], [{"id": "u", "op": "upsample", "scale": 2}],
              [{"id": "u", "op": "upsample", "scale": 2, "mode": "linear"}], None),
    "GC106": ([2, 3, 4], [{"id": "u", "op": "upsample", "scale": 2, "mode": "linear",
                           "align_corners": True}],
              [{"id": "u", "op": "upsample", "scale": 2, "mode": "linear"}], None),
    "GC107": ([2, 3, 4], [{"id": "t", "op": "conv_transpose2d", "channels": 2, "kernel": 3,
                           "stride": 2, "padding": 1, "output_padding": 1}],
              [{"id": "t", "op": "conv_transpose2d", "channels": 2, "kernel": 3, "stride": 2,
                "padding": 1}], None),
    "GC108": ([2, 4, 4], [{"id": "p", "op": "maxpool2d", "kernel": 2}, {"op": "relu"},
                          {"id": "u", "op": "maxunpool", "pool": "p"}],
              [{"id": "p", "op": "maxpool2d", "kernel": 2}, {"op": "relu"}], None),
}


def test_every_rule_has_a_case_and_references():
    assert sorted(TRIGGERS) == sorted(r.id for r in RULES)
    for rule in RULES:
        assert rule.refs and all(ref.startswith("https://") for ref in rule.refs)
        assert rule.differs and rule.rewrite


@pytest.mark.parametrize("rule", sorted(TRIGGERS))
def test_rule_triggers_and_not(tmp_path, rule):
    shape, bad, good, good_shape = TRIGGERS[rule]
    path = write_spec(tmp_path, "bad", shape, bad)
    found = [f for f in lint(check_spec(path)) if f.rule.id == rule]
    assert len(found) == 1, [f.rule.id for f in lint(check_spec(path))]
    node = found[0].node
    line = next(i for i, text in enumerate(open(path), 1) if f"id: {node}," in text)
    assert re.fullmatch(rf".*bad\.yaml:{line}:\d+", found[0].loc)
    clean = write_spec(tmp_path, "good", good_shape or shape, good)
    assert rule not in [f.rule.id for f in lint(check_spec(clean))]


REWRITES = {  # name: (input shape, nodes, rules expected)
    "max_window_in_padding": ([3, 5, 5], [MAXPOOL], {"GC101"}),
    "max_partial": ([3, 6, 7], [{"id": "p", "op": "maxpool2d", "kernel": 3, "stride": 2,
                                 "ceil_mode": True}], {"GC102"}),
    "avg_partial_incl": ([3, 6, 7], [{"id": "p", "op": "avgpool2d", "kernel": 3, "stride": 2,
                                      "padding": 1, "ceil_mode": True,
                                      "count_include_pad": True}], {"GC102", "GC103"}),
    "avg1d_partial_excl": ([3, 10], [{"id": "p", "op": "avgpool1d", "kernel": 3, "stride": 2,
                                      "padding": 1, "ceil_mode": True}], {"GC102", "GC103"}),
    "avg_in_padding": ([3, 5, 5], [{**MAXPOOL, "op": "avgpool2d", "count_include_pad": True}],
                       {"GC101", "GC103"}),
    "avg3d_pad": ([2, 5, 6, 7], [{"id": "p", "op": "avgpool3d", "kernel": 3, "stride": 2,
                                  "padding": [[1, 1], [0, 1], [1, 1]], "count_include_pad": True}], {"GC103"}),
    "avg_same": ([2, 6, 7], [{"id": "p", "op": "avgpool2d", "kernel": 2, "stride": 1,
                              "padding": "same"}], {"GC103", "GC104"}),
    "nearest2d": ([3, 4, 5], [{"id": "u", "op": "upsample", "scale": [2, 3]}], {"GC105"}),
    "nearest3d": ([2, 2, 3, 4], [{"id": "u", "op": "upsample", "scale": 2}], {"GC105"}),
    "linear2d": ([3, 4, 5], [{"id": "u", "op": "upsample", "scale": [2, 3], "mode": "linear",
                              "align_corners": True}], {"GC106"}),
    "linear1d": ([2, 5], [{"id": "u", "op": "upsample", "scale": 3, "mode": "linear",
                           "align_corners": True}], {"GC106"}),
    "convt_covered": ([3, 5, 4], [{"id": "t", "op": "conv_transpose2d", "channels": 4, "kernel": 3,
                                   "stride": 2, "padding": 1, "output_padding": 1}], {"GC107"}),
    "convt_beyond": ([3, 5, 4], [{"id": "t", "op": "conv_transpose2d", "channels": 4, "kernel": 3,
                                  "stride": 2, "padding": [[1, 0], [0, 2]],
                                  "output_padding": [1, 1], "groups": 1}], {"GC107"}),
    "convt1d_dilated": ([4, 6], [{"id": "t", "op": "conv_transpose1d", "channels": 2, "kernel": 3,
                                  "stride": 3, "dilation": 2, "padding": [[2, 1]],
                                  "output_padding": 2}], {"GC107"}),
    "unpool_after_ceil": ([2, 5, 7], [{"id": "p", "op": "maxpool2d", "kernel": 2, "stride": 2,
                                       "ceil_mode": True}, {"op": "relu"},
                                      {"id": "u", "op": "maxunpool", "pool": "p"}],
                          {"GC102", "GC108"}),
}


def random_weights(checked, rng) -> dict[str, np.ndarray]:
    return {f"{n.id}.{name}": rng.standard_normal(p.shape).astype(np.float32)
            for n in checked.nodes for name, p in n.params.items()}


# Lowered portably already without --portable: a ceil_mode window starting in the padding
# (GC101) makes every pool lower in floor mode, with explicit padding when pads are counted.
ALREADY_PORTABLE = {"avg_in_padding", "max_window_in_padding"}


@pytest.mark.parametrize("case", sorted(REWRITES))
def test_rewrite_matches_original(tmp_path, case):
    shape, nodes, rules = REWRITES[case]
    checked = check_spec(write_spec(tmp_path, case, shape, nodes))
    assert {f.rule.id for f in lint(checked)} == rules
    compare_rewrite(checked, shape, seed=len(case), changes=case not in ALREADY_PORTABLE)


def test_grouped_conv_transpose_rewrite(tmp_path):
    """onnx.reference's ConvTranspose has no groups: onnxruntime only."""
    nodes = [{**REWRITES["convt1d_dilated"][1][0], "groups": 2}]
    checked = check_spec(write_spec(tmp_path, "grouped", [4, 6], nodes))
    compare_rewrite(checked, [4, 6], seed=3, reference=False)


def compare_rewrite(checked, shape, seed, reference=True, changes=True):
    ids, notes = portable(checked)
    assert notes and ids
    rng = np.random.default_rng(seed)
    weights = random_weights(checked, rng)
    original, new = (lower(checked, weights=weights, portable=p) for p in ((), ids))
    assert (list(original.graph.node) != list(new.graph.node)) == changes
    onnx.checker.check_model(new, full_check=True)
    x = rng.standard_normal((2, *shape)).astype(np.float32)
    want, got = ort_run(original, {"x": x})[0], ort_run(new, {"x": x})[0]
    assert got.shape == want.shape == (2, *checked.shape_of(checked.outputs[0]))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if reference:
        reference = ReferenceEvaluator(new).run(None, {"x": x})[0]
        np.testing.assert_allclose(reference, want, rtol=1e-5, atol=1e-5)


def test_rewrite_leaves_portable_nodes_alone(tmp_path):
    path = write_spec(tmp_path, "same", [2, 6, 6], TRIGGERS["GC104"][1] + TRIGGERS["GC108"][1])
    checked = check_spec(path)
    assert {f.rule.id for f in lint(checked)} == {"GC104", "GC108"}  # nothing to rewrite
    assert portable(checked) == ([], [])


def test_portable_ceil_max_pool_is_floor_mode(tmp_path):
    checked = check_spec(write_spec(tmp_path, "c", [2, 6, 7], REWRITES["max_partial"][1]))
    pool = lower(checked, portable=portable(checked)[0]).graph.node[0]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in pool.attribute}
    assert attrs["ceil_mode"] == 0 and attrs["pads"] == [0, 0, 1, 0]


def cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "graphcnn.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120)


def test_cli_lint_check_and_compile_portable(tmp_path):
    shape, nodes, _ = REWRITES["avg_partial_incl"]
    path = write_spec(tmp_path, "avg", shape, nodes)
    proc = cli("lint", path)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"avg\.yaml:4:\d+: p: GC102 ceil_mode pooling with a partial last window: ",
                     proc.stdout)
    assert "    see: https://" in proc.stdout and "2 portability finding(s)" in proc.stdout
    assert cli("lint", "--strict", path).returncode == 1
    data = json.loads(cli("lint", "--json", path).stdout)
    assert [f["rule"] for f in data["findings"]] == ["GC102", "GC103"]
    assert all(f["loc"].endswith(":4:5") and f["node"] == "p" for f in data["findings"])
    check = cli("check", path).stdout
    assert "portability: 2 finding(s)" in check and re.search(r"\n  \S+avg\.yaml:4:\d+: p: GC103", check)
    out_plain, out_portable = tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert cli("compile", path, "-o", out_plain).returncode == 0
    proc = cli("compile", path, "-o", out_portable, "--portable")
    assert proc.returncode == 0 and "portable: p rewritten for GC102, GC103" in proc.stdout
    x = np.random.default_rng(1).standard_normal((1, *shape)).astype(np.float32)
    want, got = (ort_run(onnx.load(str(p)), {"x": x})[0] for p in (out_plain, out_portable))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_cli_clean_spec(tmp_path):
    path = write_spec(tmp_path, "clean", [2, 6, 6], TRIGGERS["GC103"][2])
    proc = cli("lint", "--strict", path)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("0 portability finding(s)")
    assert "portability" not in cli("check", path).stdout
