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


READS = """\
name: reads
inputs: {image: [3, 16, 16]}
blocks:
  bottleneck:  # told only its output width: the input's is read, x.channels
    params: {out: 8, ratio: 2}
    nodes:
      - {id: shortcut, op: conv2d, channels: out, kernel: 1, when: x.channels != out}
      - {id: expand, op: conv2d, channels: x.channels * ratio, kernel: 1, inputs: [x]}
      - {id: relu, op: relu}
      - {id: project, op: conv2d, channels: out, kernel: 3, padding: 1}
      - {id: add, op: add, inputs: [project, shortcut]}
  pair:  # two inputs, and a nested call whose argument reads one of them
    inputs: [a, b]
    nodes:
      - {id: cat, op: concat, inputs: [a, b]}
      - {id: inner, block: bottleneck, args: {out: b.channels + a.channels // 3}}
nodes:
  - {id: stem, op: conv2d, channels: 6, kernel: 3, padding: 1}
  - {id: stage1, block: bottleneck, repeat: 2, args: {out: 12}}
  - {id: both, block: pair, inputs: [stem, stage1]}
"""


def reads_spec(text: str = READS, name: str = "reads.yaml"):
    return NetworkSpec.from_text(text, name)


def test_block_expressions_read_their_input_channels():
    """`x.channels` is the channel count of the value the instance reads: 6 for stage1's
    first block, 12 for its second, so only the first needs its shortcut projection."""
    checked = check(reads_spec())
    assert checked.node("stage1.block0.expand").shape[0] == 6 * 2
    assert checked.node("stage1.block1.expand").shape[0] == 12 * 2
    ids = {n.id for n in checked.nodes}
    assert "stage1.block0.shortcut" in ids and "stage1.block1.shortcut" not in ids
    assert checked.node("stage1.block1.add").inputs == ("stage1.block1.project",
                                                        "stage1.block0.add")
    assert checked.node("both.inner.expand").shape[0] == 18 * 2  # cat: 6 + 12 channels
    assert checked.node("both.inner.project").shape[0] == 12 + 6 // 3


def test_reading_channels_is_the_same_as_writing_them():
    """The block with `x.channels` gives the very graph of one told its input width."""
    told = (READS.replace("params: {out: 8, ratio: 2}", "params: {inp: 6, out: 8, ratio: 2}")
            .replace("x.channels * ratio", "inp * ratio").replace("x.channels != out", "inp != out")
            .replace("{out: 12}}", "{inp: 12, out: 12}, first: {inp: 6}}")
            .replace("{out: b.channels + a.channels // 3}", "{inp: 18, out: 14}"))
    ours, theirs = check(reads_spec()), check(reads_spec(told))
    assert [(n.id, n.shape, n.inputs, n.param_count) for n in ours.nodes] == \
        [(n.id, n.shape, n.inputs, n.param_count) for n in theirs.nodes]


def test_bad_reads_are_refused_at_the_expression_line():
    import pytest

    from graphcnn.errors import GraphError, SpecError

    with pytest.raises(SpecError, match=r"a block input has one readable size, x.channels; "
                                        r"received x.chanels") as info:
        check(reads_spec(READS.replace("x.channels * ratio", "x.chanels * ratio")))
    assert str(info.value).startswith("reads.yaml:8:9: stage1.block0: ")
    later = READS.replace("inputs: [stem, stage1]}", "inputs: [stem, late]}\n"
                          "  - {id: late, op: relu, inputs: [stage1]}")
    with pytest.raises(SpecError, match=r"cannot read the channels of 'late': no node of that "
                                        r"name is expanded before this block") as info:
        check(reads_spec(later))
    assert str(info.value).startswith("reads.yaml:16:9: both: ")
    parted = READS.replace("{id: both, block: pair, inputs: [stem, stage1]}",
                           "{id: s, op: chunk, chunks: 2}\n"
                           "  - {id: both, block: bottleneck, inputs: [s]}")
    with pytest.raises(GraphError, match="input 's' has several outputs; name one of its parts"):
        check(reads_spec(parted))


def test_reads_are_checked_again_at_every_input_size():
    """A count that follows the input size (features after a flatten) was read at the spec's
    size; at another size it differs, so the sweep finds only the spec's size admissible and
    says why at the expression's line. A symbolic input is read at its smallest fitting size."""
    import pytest

    from graphcnn.errors import ShapeError
    from graphcnn.graph.sweep import Sweep

    flat = """\
name: flat
inputs: {image: [2, 4, 4]}
blocks:
  head:
    nodes:
      - {id: fc, op: linear, features: x.channels // 2}
nodes:
  - {id: f, op: flatten}
  - {id: h, block: head}
"""
    spec = NetworkSpec.from_text(flat, "flat.yaml")
    assert check(spec).node("h.fc").shape == (16,)
    sweep = Sweep.of_spec(spec)
    assert sweep.admits(4) is not None and sweep.admits(5) is None
    with pytest.raises(ShapeError, match=r"read the channels of 'f' as 32 at the spec's input "
                                         r"size, but they are 50 at this one") as info:
        sweep.run(5)
    assert str(info.value).startswith("flat.yaml:6:9: h: ")
    symbolic = READS.replace("[3, 16, 16]", "[3, H, W]").replace(
        "channels: 6, kernel: 3, padding: 1}", "channels: 6, kernel: 5}")
    checked = check(reads_spec(symbolic))  # a valid 5x5 stem: the smallest size is 5
    assert checked.inputs["image"] == (3, 5, 5)
    assert checked.node("stage1.block1.expand").shape[0] == 24
