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
