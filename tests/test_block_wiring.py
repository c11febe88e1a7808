"""Block wiring: names written inside a block resolve in the block's scope, while the implicit
'previous node' is already a full id and must never be re-resolved there."""
from graphcnn import NetworkSpec, check

SPEC = """
name: t
inputs: {x: [3, 8, 8]}
blocks:
  b:
    nodes:
      - {id: c, op: conv2d, channels: 3, kernel: 3, padding: 1}
      - {op: relu}
nodes:
  - {id: s, op: conv2d, channels: 3, kernel: 3, padding: 1}
  - {op: relu}
  - {id: st, block: b, repeat: 2}
  - {op: relu}
"""


def test_previous_generated_id_is_not_captured_by_the_block():
    checked = check(NetworkSpec.from_text(SPEC, "t.yaml"))
    inputs = {n.id: n.inputs for n in checked.nodes}
    assert inputs["st.block0.c"] == ("relu_1",)
    assert inputs["st.block1.c"] == ("st.block0.relu_1",)
    assert inputs["relu_2"] == ("st.block1.relu_1",)


def test_block_call_reads_previous_node_by_default():
    text = SPEC.replace("{id: st, block: b, repeat: 2}", "{id: st, block: b, inputs: s}")
    checked = check(NetworkSpec.from_text(text, "t.yaml"))
    assert {n.id: n.inputs for n in checked.nodes}["st.c"] == ("s",)


def test_repeat_zero_is_a_stage_of_no_blocks(tmp_path):
    """`repeat: 0` adds nothing and its id names its input; a network left with no layer at
    all, or a zero-repeat call with two inputs, is refused at its line."""
    import pytest

    import graphcnn
    from graphcnn.errors import SpecError

    head = ("name: r\ninputs: {x: [3, 8, 8]}\nblocks:\n  unit:\n    nodes:\n"
            "      - {id: conv, op: conv2d, channels: 3, kernel: 3, padding: same}\n"
            "      - {id: relu, op: relu}\nnodes:\n")
    spec = tmp_path / "r.yaml"
    spec.write_text(head + "  - {id: stage1, block: unit, repeat: 0}\n"
                    "  - {id: stage2, block: unit, repeat: 2}\n"
                    "  - {id: out, op: add, inputs: [stage1, stage2]}\n")
    checked = graphcnn.check_spec(spec)
    assert [n.id for n in checked.nodes][:1] == ["stage2.block0.conv"]
    assert checked.node("out").inputs == ("x", "stage2.block1.relu")
    spec.write_text(head + "  - {id: stage1, block: unit, repeat: 0}\n")
    with pytest.raises(SpecError, match="no layers"):
        graphcnn.check_spec(spec)
    spec.write_text(head + "  - {id: a, op: relu}\n"
                    "  - {id: s, block: unit, repeat: 0, inputs: [x, a]}\n")
    with pytest.raises(SpecError, match="takes one input") as info:
        graphcnn.check_spec(spec)
    assert str(info.value).startswith(f"{spec}:10:5: s: ")


def test_op_may_be_a_block_parameter(tmp_path):
    """An activation chosen per stage: `op: act` with `act` a parameter of the block; a value
    that names no op is refused at the block node's line, with the call's line."""
    import pytest

    import graphcnn
    from graphcnn.errors import SpecError

    head = ("name: p\ninputs: {x: [3, 8, 8]}\nblocks:\n  unit:\n    params: {act: relu}\n"
            "    nodes:\n      - {id: conv, op: conv2d, channels: 4, kernel: 3, padding: same}\n"
            "      - {id: act, op: act}\nnodes:\n")
    spec = tmp_path / "p.yaml"
    spec.write_text(head + "  - {id: s1, block: unit, args: {act: relu6}}\n"
                    "  - {id: s2, block: unit}\n")
    checked = graphcnn.check_spec(spec)
    assert [checked.node(f"s{i}.act").op for i in (1, 2)] == ["relu6", "relu"]
    spec.write_text(head + "  - {id: s1, block: unit, args: {act: relu7}}\n")
    with pytest.raises(SpecError, match="unknown op 'relu7'; did you mean") as info:
        graphcnn.check_spec(spec)
    assert str(info.value).startswith(f"{spec}:8:19: act: ")
    assert f"(instantiated at {spec}:10:5)" in str(info.value)


def test_block_libraries_import_block_libraries(tmp_path):
    """A library's `imports` resolve against its own folder; a loop or a repeat reads each
    file once; a missing file is located at the importing library's line."""
    import pytest

    import graphcnn
    from graphcnn.errors import SpecError

    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "base.yaml").write_text(
        "blocks:\n  cbr:\n    params: {w: 4}\n    nodes:\n"
        "      - {id: conv, op: conv2d, channels: w, kernel: 3, padding: same}\n"
        "      - {id: relu, op: relu}\n")
    (lib / "stage.yaml").write_text(
        "imports: [base.yaml, stage.yaml]\nblocks:\n  two:\n    params: {w: 4}\n    nodes:\n"
        "      - {id: a, block: cbr, args: {w: w}}\n      - {id: b, block: cbr, args: {w: w}}\n")
    spec = tmp_path / "net.yaml"
    spec.write_text("name: n\nimports: [lib/stage.yaml, lib/base.yaml]\n"
                    "inputs: {x: [3, 8, 8]}\nnodes:\n  - {id: s, block: two, args: {w: 8}}\n")
    checked = graphcnn.check_spec(spec)
    assert [n.id for n in checked.nodes] == ["s.a.conv", "s.a.relu", "s.b.conv", "s.b.relu"]
    (lib / "stage.yaml").write_text("imports: [gone.yaml]\nblocks: {}\n")
    with pytest.raises(SpecError, match="'gone.yaml' not found") as info:
        graphcnn.check_spec(spec)
    assert str(info.value).startswith(f"{lib / 'stage.yaml'}:1:11: ")


def test_when_makes_a_block_node_optional(tmp_path):
    """MobileNet's inverted residual in one block: the add exists only when the shapes agree;
    a skipped node adds nothing and its id names the value before it."""
    import pytest

    import graphcnn
    from graphcnn.errors import SpecError

    def spec_with(condition: str):
        path = tmp_path / "w.yaml"
        path.write_text(
            "name: w\ninputs: {x: [8, 8, 8]}\nblocks:\n  ir:\n"
            "    params: {inp: 8, out: 8, stride: 1}\n    nodes:\n"
            "      - {id: dw, op: conv2d, channels: inp, kernel: 3, stride: stride, padding: 1,"
            " groups: inp}\n      - {id: pw, op: conv2d, channels: out, kernel: 1}\n"
            f"      - {{id: add, op: add, skip: x, when: {condition}}}\nnodes:\n"
            "  - {id: b1, block: ir}\n  - {id: b2, block: ir, args: {out: 16, stride: 2}}\n"
            "  - {id: b3, block: ir, args: {inp: 16, out: 16}}\n")
        return path

    checked = graphcnn.check_spec(spec_with("stride == 1 and inp == out"))
    ids = [n.id for n in checked.nodes]
    assert "b1.add" in ids and "b2.add" not in ids and "b3.add" in ids
    assert checked.node("b3.add").inputs == ("b3.pw", "b2.pw")
    path = spec_with("stride + 1")
    with pytest.raises(SpecError, match="when: needs a true/false expression") as info:
        graphcnn.check_spec(path)
    assert str(info.value).startswith(f"{path}:9:9: b1: ")


def test_instance_names_do_not_depend_on_the_repeat_count():
    """A call that says `repeat:` numbers its instances whatever the count, so a stage that
    grows from one block to two keeps its first block's weight names; without `repeat:` the
    one instance takes the call's id."""
    def ids(call: str) -> list[str]:
        text = SPEC.replace("{id: st, block: b, repeat: 2}", call)
        return [n.id for n in check(NetworkSpec.from_text(text, "t.yaml")).nodes
                if n.id.endswith(".c")]

    one, two = ids("{id: st, block: b, repeat: 1}"), ids("{id: st, block: b, repeat: 2}")
    assert one == ["st.block0.c"] and two[:1] == one and two[1:] == ["st.block1.c"]
    assert ids("{id: st, block: b, repeat: '3 - 2'}") == ["st.block0.c"]
    assert ids("{id: st, block: b}") == ["st.c"]
