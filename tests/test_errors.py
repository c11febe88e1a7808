"""Broken specs: each gives one GraphCnnError with the exact message, file:line:col and node,
from the API and from the CLI (exit 1, the message on stderr, no traceback)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import graphcnn
from graphcnn.cli import main
from conftest import ROOT

HEAD = "name: t\ninputs: {x: [2, 8]}\nnodes:\n"

# name: (nodes text, error class, node id, line, col, exact message, expected, received)
BROKEN = {
    "cycle": ("  - {id: a, op: relu, inputs: [b]}\n  - {id: b, op: relu, inputs: [a]}\n",
              "GraphError", "a", 4, 5, "the graph has a cycle: a -> b -> a", None, None),
    "unknown_input": ("  - {id: a, op: relu, inputs: [nope]}\n", "GraphError", "a", 4, 5,
                      "input 'nope' names no node or network input", None, None),
    "unknown_input_hint": ("  - {id: conv, op: relu}\n  - {id: b, op: relu, inputs: [cnov]}\n",
                           "GraphError", "b", 5, 5,
                           "input 'cnov' names no node or network input; did you mean 'conv'?",
                           None, None),
    "unknown_op": ("  - {id: a, op: conv1x, channels: 3, kernel: 3}\n", "SpecError", "a", 4, 13,
                   "unknown op 'conv1x'; did you mean 'conv1d'?", "*", None),
    "unknown_field": ("  - {id: a, op: conv1d, channels: 3, kernal: 3}\n", "SpecError", "a", 4, 38,
                      "unknown field 'kernal'; did you mean 'kernel'?",
                      "one of: id, inputs, channels, kernel, stride, dilation, groups, bias, "
                      "padding, padding_mode", None),
    "mistyped_value": ("  - {id: a, op: conv1d, channels: three, kernel: 3}\n", "SpecError", "a",
                       4, 25, "bad value for 'channels': Input should be a valid integer, unable "
                       "to parse string as an integer", None, "'three'"),
    "bool_as_number": ("  - {id: a, op: conv1d, channels: true, kernel: 3}\n", "SpecError", "a",
                       4, 25, "bad value for 'channels': Value error, true/false is not a number "
                       "here", None, "True"),
    "missing_field": ("  - {id: a, op: conv1d, kernel: 3}\n", "SpecError", "a", 4, 5,
                      "bad value for 'channels': Field required", None, "nothing"),
    "add_channels": ("  - {id: a, op: conv1d, channels: 3, kernel: 1}\n"
                     "  - {id: s, op: add, skip: x}\n",
                     "ShapeError", "s", 5, 5, "residual inputs disagree",
                     "every input shaped [N, 3, 8]", "[N, 3, 8] vs [N, 2, 8]"),
    "concat_spatial": ("  - {id: a, op: conv1d, channels: 3, kernel: 3}\n"
                       "  - {id: s, op: concat, skip: x}\n", "ShapeError", "s", 5, 5,
                       "concat inputs disagree on their spatial size",
                       "every input shaped [N, *, 6]", "[N, 3, 6] vs [N, 2, 8]"),
    "bad_yaml": ("  - {id: a, op: relu\n", "SpecError", None, 5, 1,
                 "invalid YAML: did not find expected ',' or '}'", None, None),
    "duplicate_id": ("  - {id: a, op: relu}\n  - {id: a, op: relu}\n", "GraphError", "a", 5, 5,
                     "duplicate id 'a'", None, None),
    "duplicate_key": ("  - {id: a, op: relu, id: b}\n", "SpecError", None, 4, 23,
                      "duplicate key 'id'", None, None),
    "arity_too_many": ("  - {id: a, op: relu, inputs: [x, x]}\n", "GraphError", "a", 4, 5,
                       "relu takes 1 input(s)", None, "2: ['x', 'x']"),
    "arity_too_few": ("  - {id: a, op: add}\n", "GraphError", "a", 4, 5,
                      "add takes at least 2 input(s)", None, "1: ['x']"),
    "top_level_field": ("  - {id: a, op: relu}\noutput: [a]\n", "SpecError", None, 5, 1,
                        "unknown field 'output'; did you mean 'outputs'?", "*", None),
    "node_not_a_mapping": ("  - {id: a, op: relu}\n  - relu\n", "SpecError", None, 5, 5,
                           "a node is a mapping such as {op: relu} or {id: s1, block: name}",
                           None, "'relu'"),
    "negative_padding": ("  - {id: a, op: conv1d, channels: 2, kernel: 3, padding: [[0, -1]]}\n",
                         "ShapeError", "a", 4, 5, "padding must not be negative", "padding >= 0",
                         "[[0, -1]]"),
    "unknown_output": ("  - {id: a, op: relu}\noutputs: [b]\n", "GraphError", None, 5, 11,
                       "output 'b' names no node", None, None),
}


def check_text(text: str, name: str):
    return graphcnn.check(graphcnn.NetworkSpec.from_text(text, name))


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_spec_api(case):
    nodes, cls, node, line, col, message, expected, received = BROKEN[case]
    with pytest.raises(graphcnn.GraphCnnError) as info:
        check_text(HEAD + nodes, "broken.yaml")
    err = info.value
    assert type(err).__name__ == cls
    assert err.message == message
    assert (err.loc.file, err.loc.line, err.loc.col) == ("broken.yaml", line, col)
    assert err.node == node
    if expected != "*":
        assert err.expected == expected
    assert err.received == received
    where = f"broken.yaml:{line}:{col}: " + (f"{node}: " if node else "")
    assert str(err).startswith(where + message)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_spec_cli(case, tmp_path, capsys):
    nodes, _, node, line, col, message, _, _ = BROKEN[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(HEAD + nodes)
    for command in (["check"], ["summary"], ["compile", "-o", str(tmp_path / "m.onnx")]):
        assert main([*command, str(path)]) == 1
        err = capsys.readouterr().err
        where = f"error: {path}:{line}:{col}: " + (f"{node}: " if node else "")
        assert err.startswith(where + message)
        assert "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()


def test_duplicate_id_points_to_first_use():
    with pytest.raises(graphcnn.GraphCnnError) as info:
        check_text(HEAD + BROKEN["duplicate_id"][0], "d.yaml")
    assert info.value.hint == "first used at d.yaml:4:5"


SHRINKS = HEAD + ("  - {id: a, op: conv1d, channels: 3, kernel: 3, stride: 2}\n"
                  "  - {id: b, op: maxpool1d, kernel: 2}\n"
                  "  - {id: c, op: conv1d, channels: 3, kernel: 3}\n")


def test_spatial_size_below_1_names_node_input_and_fitting_size(tmp_path, capsys):
    """8 -> 3 (conv, stride 2) -> 1 (pool) -> 3 - 1 < 1 (conv): the error is stated at the input
    (2:10) and names the node where it shrinks (6:5); 13 is the smallest length that fits:
    c needs 3, so b needs 6, so a needs 2 * (6 - 1) + 3 = 13."""
    with pytest.raises(graphcnn.GraphCnnError) as info:
        check_text(SHRINKS, "s.yaml")
    err = info.value
    assert type(err).__name__ == "ShapeError" and err.node == "c"
    assert err.message == ("input 8 does not fit: c (s.yaml:6:5): conv1d output would have 0 "
                           "positions on spatial axis 0")
    assert (err.loc.file, err.loc.line, err.loc.col) == ("s.yaml", 2, 10)
    assert err.expected == "an input of at least 3 positions on that axis"
    assert err.received == "[N, 3, 1]"
    assert err.rule.endswith("= floor((1 + 0 + 0 - 1*(3-1) - 1) / 1) + 1 = 0")
    assert err.hint.endswith("nearest admissible sizes: 13")
    path = tmp_path / "s.yaml"
    path.write_text(SHRINKS)
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().err
    assert out.startswith(f"error: {path}:2:10: input 8 does not fit: c ({path}:6:5): conv1d "
                          "output would have 0 positions on spatial axis 0")


def test_shrink_error_shows_the_formula():
    with pytest.raises(graphcnn.GraphCnnError) as info:
        check_text(HEAD + "  - {id: a, op: conv1d, channels: 3, kernel: 5, dilation: 2}\n",
                   "s.yaml")
    assert info.value.rule.endswith("= floor((8 + 0 + 0 - 2*(5-1) - 1) / 1) + 1 = 0")
    assert info.value.hint.endswith("nearest admissible sizes: 9")


def test_error_inside_a_block_names_the_instantiation():
    text = ("name: b\ninputs: {x: [2, 8]}\nblocks:\n  blk:\n    params: {k: 3}\n    nodes:\n"
            "      - {id: conv, op: conv1d, channels: 4, kernel: k, padding: [[0, -1]]}\n"
            "nodes:\n  - {id: s1, block: blk}\n  - {id: s2, block: blk, args: {k: 9}}\n")
    with pytest.raises(graphcnn.GraphCnnError) as info:
        check_text(text, "blk.yaml")
    err = info.value
    assert err.node == "s1.conv" and err.message == "padding must not be negative"
    assert (err.loc.line, err.loc.col) == (7, 9)
    assert [(v.line, v.col) for v in err.via] == [(9, 5)]
    assert "(instantiated at blk.yaml:9:5)" in str(err)


@pytest.mark.parametrize("case", ["cycle", "bad_yaml"])
def test_cli_subprocess_exit_1_without_traceback(case, tmp_path):
    nodes, _, node, line, col, message, _, _ = BROKEN[case]
    path = tmp_path / "broken.yaml"
    path.write_text(HEAD + nodes)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "graphcnn.cli", "check", str(path)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert f"{path}:{line}:{col}: " in proc.stderr and message in proc.stderr
    assert proc.stdout == ""
