"""Hardening, round two (issue 20): `check` refuses whatever compile, run or train would,
generated names cannot be taken by spec ids, and block expansion and expressions are bounded.
Each class is fixed where it arises (a layer schema rule, the id rule, the expander's budget,
the expression evaluator); these tests hold the classes, one or a few cases each."""
from __future__ import annotations

import math
import time
import typing

import onnx
import pytest
from onnx import TensorProto, helper
from pydantic import ValidationError

from conftest import SPECS
from graphcnn.cli import main
from graphcnn.errors import CompileError
from graphcnn.layers.base import MAX_INT, REGISTRY
from graphcnn.lower.save import save_model

# every command that reads a spec, with the arguments it needs besides the spec
SPEC_COMMANDS = [("check",), ("summary",), ("compile", "-o", "{out}.onnx"), ("sizes",),
                 ("lint",), ("draw", "-o", "{out}.mmd"), ("export-torch", "-o", "{out}.py")]

# `sizes` sweeps input sizes without requiring the nominal one to check (that is its use), so
# the name rule, checked after shapes, is not its business
CHECKED_COMMANDS = [c for c in SPEC_COMMANDS if c[0] != "sizes"]


def spec(nodes: str, inputs: str = "[4, 8]", blocks: str = "") -> str:
    return (f"name: t\ninputs: {{x: {inputs}}}\n" + (f"blocks:\n{blocks}" if blocks else "")
            + "nodes:\n" + nodes)


def refused_everywhere(tmp_path, capsys, text: str, where: str, words: str,
                       commands=SPEC_COMMANDS, seconds: float = 10.0) -> str:
    """Every spec command exits 1 with `file:line:col` first, `words` in the message, no
    traceback, within `seconds`, and writes nothing. Returns check's error line."""
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    first = None
    for command, *rest in commands:
        out = tmp_path / f"out_{command}"
        start = time.perf_counter()
        code = main([command, str(path), *(a.format(out=out) for a in rest)])
        err = capsys.readouterr().err
        assert time.perf_counter() - start < seconds, command
        assert code == 1, (command, err)
        assert err.startswith(f"error: {path}:{where}"), (command, err)
        assert words in err and "Traceback" not in err, (command, err)
        assert not list(tmp_path.glob("out_*")), command
        first = first or err
    return first


# --- `check` is the whole check --------------------------------------------------------

FIELD_CASES = [  # (node, input shape, the field refused, words of the message)
    ("{id: fc, op: linear, features: 0}", "[4]", "features", "fc: bad value for 'features'"),
    ("{id: fc, op: linear, features: -1}", "[4]", "features", "greater than or equal to 1"),
    ("{id: hw, op: highway, skip: x, gate_kernel: 0}", "[4]", "gate_kernel", "equal to 1"),
    ("{id: n, op: lrn, size: 3, alpha: 0}", "[4, 8]", "alpha", "Input should be greater than 0"),
    ("{id: n, op: lrn, size: 3, beta: -0.5}", "[4, 8]", "beta", "Input should be greater than 0"),
    ("{id: n, op: lrn, size: 3, beta: .nan}", "[4, 8]", "beta", "Input should be a finite number"),
    ("{id: n, op: batchnorm1d, eps: 0}", "[4, 8]", "eps", "Input should be greater than 0"),
    ("{id: n, op: batchnorm1d, eps: -1}", "[4, 8]", "eps", "Input should be greater than 0"),
    ("{id: p, op: pad, pads: 1, value: .nan}", "[4, 8]", "value", "should be a finite number"),
    ("{id: p, op: pad, pads: 1, value: -.inf}", "[4, 8]", "value", "should be a finite number"),
    # quoted, so YAML's own bound does not see it; pydantic turns it into an int
    ("{id: c, op: conv1d, channels: 2, kernel: 1, stride: '9223372036854775808'}", "[4, 8]",
     "stride", "Input should be at most 4,611,686,018,427,387,904 in size"),
    ("{id: c, op: conv1d, channels: 2, kernel: [1, '-9223372036854775808']}", "[4, 8]",
     "kernel", "Input should be at most"),
]


@pytest.mark.parametrize("node, inputs, field, words", FIELD_CASES,
                         ids=[f"{c[0].split(',')[1].strip()}-{c[2]}" for c in FIELD_CASES])
def test_field_values_compile_or_run_would_refuse_are_refused_by_check(
        tmp_path, capsys, node, inputs, field, words):
    line = f"  - {node}\n"
    where = f"4:{line.index(f' {field}:') + 2}: {node.split(',')[0][5:]}: bad value for '{field}'"
    refused_everywhere(tmp_path, capsys, spec(line, inputs), where, words)


def float_fields() -> list[tuple[str, str]]:
    """(op, field) for every float-typed field of every registered op."""
    def floats(annotation) -> bool:
        return annotation is float or any(floats(a) for a in typing.get_args(annotation))
    return [(op, name) for op, cls in sorted(REGISTRY.items())
            for name, field in cls.model_fields.items() if floats(field.annotation)]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_no_float_field_of_any_op_takes_nan_or_infinity(value):
    """One rule on the Layer base, so a new op (or a plugin's) cannot forget it."""
    fields = float_fields()
    assert len(fields) > 20
    for op, name in fields:
        with pytest.raises(ValidationError) as info:
            REGISTRY[op].model_validate({name: value})
        assert any(e["loc"][:1] == (name,) for e in info.value.errors()), (op, name)


def test_no_integer_field_takes_a_value_past_max_int():
    from graphcnn.layers.dense import Linear

    assert Linear.model_validate({"features": str(MAX_INT)}).features == MAX_INT
    for text in (str(MAX_INT + 1), "9" * 30):
        with pytest.raises(ValidationError, match="at most"):
            Linear.model_validate({"features": text})


BLOCK = "  b:\n    params: {w: 2, act: relu}\n    nodes:\n      - {op: linear, features: w}\n"


def test_repeat_true_is_refused_as_channels_true_is(tmp_path, capsys):
    text = spec("  - {id: s, block: b, repeat: true}\n", "[4]", BLOCK)
    refused_everywhere(tmp_path, capsys, text, "9:23:",
                       "s: bad value for 'repeat': Value error, true/false is not a number")


@pytest.mark.parametrize("expr, words", [
    ("\"'a' + 'b'\"", "arithmetic takes numbers, not str 'a'"),
    ("\"act * 3\"", "arithmetic takes numbers, not str 'relu'"),
    ("\"'relu' if w > 1 else 'gelu'\"", "an expression computes a number or true/false, not str"),
    ("\"(0 - w) ** 0.5\"", "not a real number"),
    ("\"1e300 * 1e300 * w\"", "not a finite number"),
])
def test_an_expression_computes_numbers(tmp_path, capsys, expr, words):
    blocks = BLOCK.replace("features: w", f"features: {expr}")
    text = spec("  - {id: s, block: b}\n", "[4]", blocks)
    refused_everywhere(tmp_path, capsys, text, "7:9: s: cannot evaluate", words)


def test_a_parameter_still_passes_a_string_through(tmp_path, capsys):
    blocks = BLOCK + "      - {op: act, when: act != 'none'}\n"
    path = tmp_path / "ok.yaml"
    path.write_text(spec("  - {id: s, block: b, args: {act: gelu}}\n"
                         "  - {id: t, block: b, args: {act: none}}\n", "[4]", blocks))
    assert main(["check", str(path)]) == 0, capsys.readouterr().err


def ssa_broken_model() -> onnx.ModelProto:
    """Two nodes writing one value: what a spec id equal to a parameter name produced."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="a/Relu1"),
             helper.make_node("Sigmoid", ["x"], ["y"], name="b/Sigmoid1")]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y]))


def test_every_written_model_passes_the_full_check(tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous")
    with pytest.raises(CompileError, match="fails the ONNX full check: .*SSA") as info:
        save_model(ssa_broken_model(), out)
    assert info.value.node == "a" and out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_full_check_sees_weights_still_to_be_drawn(tmp_path):
    """The streamed save checks the weights it has not drawn yet by their shapes."""
    from graphcnn.api import check_spec
    from graphcnn.lower.inference import lower, pending_parameters
    from graphcnn.spec import NetworkSpec

    checked = check_spec(NetworkSpec.from_text(spec("  - {id: fc, op: linear, features: 3}\n",
                                                    "[4]")))
    model = lower(checked, parameters=False)
    pending = pending_parameters(checked, 0, None)
    save_model(model, tmp_path / "ok.onnx", pending)
    onnx.checker.check_model(str(tmp_path / "ok.onnx"), full_check=True)
    wrong = [type(p)(p.name, (5, 3), *list(vars(p).values())[2:]) if p.name == "fc.weight"
             else p for p in pending]
    with pytest.raises(CompileError, match="full check"):
        save_model(model, tmp_path / "bad.onnx", wrong)


# --- expressions are bounded -----------------------------------------------------------

def expression_spec(expr: str, params: str = "{w: 2}") -> str:
    blocks = f"  b:\n    params: {params}\n    nodes:\n      - {{op: linear, features: \"{expr}\"}}\n"
    return spec("  - {id: s, block: b}\n", "[4]", blocks)


@pytest.mark.parametrize("expr, words", [
    ("'a' * 2**40", "arithmetic takes numbers, not str 'a'"),  # was a MemoryError
    ("w" + "+w" * 499, "expression nested too deeply"),         # was a RecursionError
    ("-" * 400 + "w", "expression nested too deeply"),
    ("w" + " + w" * 499, "bad value for"),  # past MAX_EXPR_CHARS: text, refused as a value
    ("2 ** 64 + w", "result too large"),
    ("w * 4611686018427387904", "result too large"),
], ids=["str-times-2**40", "500-plus", "400-minus", "long-text", "power", "product"])
def test_expressions_are_bounded_in_depth_and_result(tmp_path, capsys, expr, words):
    err = refused_everywhere(tmp_path, capsys, expression_spec(expr), "7:", words)
    assert len(err) < 1000


def test_errors_echo_at_most_a_few_hundred_characters(tmp_path, capsys):
    """A long value in a message is cut (a 169-byte spec once made a 20 MB message)."""
    long = "x" * 100_000
    for text in (expression_spec("w * 2", "{w: " + long + "}"),
                 spec(f"  - {{id: fc, op: linear, features: {long}}}\n", "[4]")):
        err = refused_everywhere(tmp_path, capsys, text, "", "more characters)",
                                 commands=[("check",)])
        assert len(err) < 1000


def test_long_strings_are_not_parsed_as_expressions():
    from graphcnn.spec.exprs import MAX_EXPR_CHARS, evaluate

    text = "w" + " + 0" * MAX_EXPR_CHARS
    assert evaluate(text, {"w": 1}) == text and evaluate("w + 0", {"w": 1}) == 1


# --- names -----------------------------------------------------------------------------

LINEAR = "  - {id: conv, op: linear, features: 4}\n"


@pytest.mark.parametrize("nodes, inputs, where, words", [
    (LINEAR + "  - {id: conv.weight, op: relu}\n", "[4, 8]", "5:5: conv.weight:",
     "is the name of parameter 'conv.weight' of node 'conv'"),
    (LINEAR + "  - {id: conv.bias.new, op: relu}\n", "[4, 8]", "5:5: conv.bias.new:",
     "extends the name of parameter 'conv.bias'"),
    (LINEAR + "  - {id: h/Gemm1, op: relu}\n", "[4, 8]", "5:5: h/Gemm1:", "holds '/'"),
    ("  - {id: 'const.i64[2]', op: relu}\n", "[4, 8]", "4:5:", "starts with 'const'"),
    ("  - {id: const, op: linear, features: 2}\n", "[4, 8]", "4:5:", "starts with 'const'"),
    ("  - {id: labels, op: linear, features: 2}\n", "[4, 8]", "4:5:", "of the training step"),
    ("  - {id: loss, op: relu}\n", "[4, 8]", "4:5:", "of the training step"),
], ids=["param", "param-new", "slash", "const-prefix", "const", "labels", "loss"])
def test_ids_that_generated_names_could_take_are_refused(tmp_path, capsys, nodes, inputs, where,
                                                         words):
    refused_everywhere(tmp_path, capsys, spec(nodes, inputs), where, words, CHECKED_COMMANDS)


def test_network_input_names_follow_the_same_rule(tmp_path, capsys):
    text = "name: t\ninputs: {lr: [4, 8]}\nnodes:\n  - {op: relu}\n"
    refused_everywhere(tmp_path, capsys, text, "2:10: lr: id 'lr'", "training step",
                       CHECKED_COMMANDS)


def test_parameter_names_of_two_nodes_cannot_meet(tmp_path, capsys):
    nodes = ("  - {id: a, op: add, skip: x, project: conv_bn}\n"
             "  - {id: a.project.bn, op: batchnorm1d}\n")
    refused_everywhere(tmp_path, capsys, spec(nodes), "5:5: a.project.bn:",
                       "parameter 'a.project.bn.weight' of node 'a.project.bn' has the name of "
                       "a parameter of node 'a'", CHECKED_COMMANDS)


def test_the_training_step_names_nothing_else(tmp_path):
    """The names the rule keeps free are all the step's own names (guards the list)."""
    from graphcnn.api import check_spec
    from graphcnn.graph.names import TRAINING_NAMES
    from graphcnn.spec import NetworkSpec
    from graphcnn.train.step import build_training_step

    nodes = "  - {id: c, op: conv1d, channels: 2, kernel: 3}\n  - {op: flatten}\n" + \
            "  - {id: n, op: batchnorm1d}\n  - {id: fc, op: linear, features: 3}\n"
    checked = check_spec(NetworkSpec.from_text(spec(nodes)))
    for optimizer in ("sgd", "adam"):
        step = build_training_step(checked, batch=2, optimizer=optimizer, momentum=0.9)
        graph = step.model.graph
        params = {f"{n.id}.{p}" for n in checked.nodes for p in n.params}
        for value in [*graph.input, *graph.output]:
            name = value.name
            assert (name == "x" or name in TRAINING_NAMES
                    or any(name.startswith(p + ".") or name == p for p in params)), name


def test_export_weights_round_trips_every_parameter(tmp_path, capsys):
    """Dotted ids, ids that look like parts of generated names: every parameter out and in."""
    nodes = ("  - {id: l1.conv, op: conv1d, channels: 2, kernel: 3}\n"
             "  - {id: constant, op: batchnorm1d}\n  - {op: flatten}\n"
             "  - {id: weights.lr, op: linear, features: 3}\n")
    path = tmp_path / "ids.yaml"
    path.write_text(spec(nodes))
    a, b, w = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "w.npz"
    assert main(["compile", str(path), "-o", str(a), "--seed", "3"]) == 0
    assert main(["export-weights", str(a), "-o", str(w)]) == 0
    assert main(["compile", str(path), "-o", str(b), "--weights", str(w)]) == 0
    capsys.readouterr()
    import numpy as np
    from onnx import numpy_helper

    saved = dict(np.load(w))
    assert sorted(saved) == sorted(["l1.conv.weight", "l1.conv.bias", "constant.weight",
                                    "constant.bias", "constant.running_mean",
                                    "constant.running_var", "weights.lr.weight",
                                    "weights.lr.bias"])
    first = {t.name: numpy_helper.to_array(t) for t in onnx.load(a).graph.initializer}
    second = {t.name: numpy_helper.to_array(t) for t in onnx.load(b).graph.initializer}
    assert first.keys() == second.keys()
    assert all(np.array_equal(first[k], second[k]) for k in first)


BLOCK_R = "  b:\n    nodes:\n      - {id: r, op: relu}\n"


@pytest.mark.parametrize("nodes, where, name", [
    ("  - {id: s, block: b, repeat: 2}\n  - {id: s.block0, op: sigmoid}\n", "9:5:", "s.block0"),
    ("  - {id: s.block0, op: sigmoid}\n  - {id: s, block: b, repeat: 2}\n", "9:5:", "s.block0"),
    ("  - {id: s, block: b}\n  - {id: s, op: sigmoid}\n", "9:5:", "s"),
    ("  - {id: s, block: b, repeat: 0}\n  - {id: s, op: sigmoid}\n", "9:5:", "s"),
    ("  - {id: x, block: b}\n", "8:5:", "x"),
], ids=["node-after-instance", "instance-after-node", "unnumbered", "repeat-0", "input"])
def test_an_id_equal_to_a_block_instance_is_a_duplicate(tmp_path, capsys, nodes, where, name):
    """Before: the explicit node was silently left unused (or made a cycle)."""
    refused_everywhere(tmp_path, capsys, spec(nodes, "[4, 8]", BLOCK_R), f"{where} {name}:",
                       f"duplicate id '{name}'")


# (an id cannot hold `/`, so rich's closing tags crash only through the network's name)
MARKUP = ("name: 'net[/]'\ninputs: {x: [4]}\nnodes:\n  - {id: '[bold]a', op: relu}\n"
          "  - {id: '[red]b', op: relu}\n")


def test_ids_with_rich_markup_print_literally(tmp_path, capsys):
    path = tmp_path / "m.yaml"
    path.write_text(MARKUP)
    assert main(["summary", str(path)]) == 0  # was rich's MarkupError
    text = capsys.readouterr().out
    assert "net[/]" in text and "[bold]a" in text and "[red]b" in text
    other = tmp_path / "n.yaml"
    other.write_text(MARKUP.replace("[red]b", "[red]c"))
    assert main(["diff", str(path), str(other)]) in (0, 1)
    captured = capsys.readouterr()
    assert "[red]c" in captured.out and "Traceback" not in captured.err


INJECT = ('name: "net\\nclick n0 call alert()"\ninputs: {x: [4]}\nnodes:\n'
          '  - {id: "a\\"]\\n  click n1 href \\"javascript:alert(1)\\"\\n  n9[\\"#quot;", op: relu}\n')


def test_draw_escapes_names(tmp_path, capsys):
    """A newline or quote in a name cannot start a Mermaid or DOT statement."""
    import shutil
    import subprocess

    path = tmp_path / "inject.yaml"
    path.write_text(INJECT)
    assert main(["draw", str(path), "-o", str(tmp_path / "g.mmd")]) == 0
    assert main(["draw", str(path), "-o", str(tmp_path / "g.dot")]) == 0
    capsys.readouterr()
    mermaid = (tmp_path / "g.mmd").read_text()
    assert not any(line.lstrip().startswith(("click", "n9")) for line in mermaid.splitlines())
    assert 'title: "net\\\\nclick n0 call alert()"' in mermaid
    assert "#35;quot;" in mermaid  # a `#` written in a name is no entity
    dot = (tmp_path / "g.dot").read_text()
    assert not any(line.lstrip().startswith(("click", "n9")) for line in dot.splitlines())
    if shutil.which("dot"):
        subprocess.run(["dot", "-Tsvg"], input=dot.encode(), capture_output=True, check=True)


# --- expansion is bounded --------------------------------------------------------------

EMPTY = ("  e: {params: {a: 0}, nodes: []}\n"
         "  m: {params: {a: 0}, nodes: [{id: i, block: e, repeat: 100000, args: {a: a}}]}\n"
         "  o: {params: {a: 0}, nodes: [{id: j, block: m, repeat: 100000, args: {a: a}}]}\n")


def test_instances_are_counted_not_only_nodes(tmp_path, capsys, monkeypatch):
    """An empty block repeated 10^5 x 10^5 x 10^5 emits no node; it used to run for ever
    (at the real limit, 100,000 instances, it stops after about 3 s of CPU)."""
    from graphcnn.spec import expand

    monkeypatch.setattr(expand, "MAX_INSTANCES", 2000)
    text = spec("  - {op: relu}\n  - {id: k, block: o, repeat: 100000}\n", "[4, 8]", EMPTY)
    err = refused_everywhere(tmp_path, capsys, text, "5:31:", "too many block instances")
    assert "(instantiated at" in err and "k.block0.j.block0.i.block" in err


def test_argument_cost_is_bounded(tmp_path, capsys, monkeypatch):
    """A 10 kB argument handed to 10^5 instances (a 300 kB spec once took 75 minutes); at
    the real limit (2,000,000 values and characters) it stops after about 1 s of CPU."""
    from graphcnn.spec import expand

    monkeypatch.setattr(expand, "MAX_ARGUMENT_COST", 50_000)
    big = "[" + ",".join(["7"] * 5_000) + "]"
    text = spec(f"  - {{op: relu}}\n  - {{id: k, block: o, repeat: 1000, args: {{a: {big}}}}}\n",
                "[4, 8]", EMPTY)
    refused_everywhere(tmp_path, capsys, text, "5:31: k.block0.j.block0.i.block",
                       "too large for this many instances")


def test_shipped_specs_spend_little_of_the_budgets():
    from graphcnn.spec import NetworkSpec, expand

    seen = {}
    original = expand._Expander.spent

    def spent(self, value):
        seen["cost"], seen["instances"] = self.cost, self.instance_count
        return original(self, value)

    expand._Expander.spent = spent
    try:
        expand.flatten(NetworkSpec.from_yaml(SPECS / "resnet200.yaml"))
    finally:
        expand._Expander.spent = original
    assert seen["cost"] < expand.MAX_ARGUMENT_COST // 100
    assert seen["instances"] < expand.MAX_INSTANCES // 100
