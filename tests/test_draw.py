"""`graphcnn draw`: the DOT and Mermaid texts parsed back and compared with the checked graph
(nodes, edges with their kinds, clusters), block folding, rendering and the CLI."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from graphcnn.api import check_spec
from graphcnn.draw import build, to_dot, to_mermaid
from graphcnn.draw.style import EDGE_STYLES
from graphcnn.spec import NetworkSpec

RESNET = """
name: tiny_resnet
inputs: {image: [3, 8, 8]}
blocks:
  basic:
    params: {width: 4, stride: 1, project: false}
    nodes:
      - {id: conv1, op: conv2d, channels: width, kernel: 3, stride: stride, padding: 1}
      - {id: relu1, op: relu}
      - {id: conv2, op: conv2d, channels: width, kernel: 3, padding: 1}
      - {id: add, op: add, skip: x, project: project}
nodes:
  - {id: stem, op: conv2d, channels: 4, kernel: 3, padding: same}
  - {id: stage1, block: basic, repeat: 2}
  - {id: stage2, block: basic, args: {width: 8}, first: {stride: 2, project: true}}
  - {id: pool, op: global_avgpool}
  - {id: fc, op: linear, features: 3}
"""

DENSENET = """
name: tiny_densenet
inputs: {image: [4, 6, 6]}
blocks:
  dense_layer:
    params: {growth: 2}
    nodes:
      - {id: conv, op: conv2d, channels: growth, kernel: 3, padding: 1}
      - {id: cat, op: concat, inputs: [x, conv]}
nodes:
  - {id: dense, block: dense_layer, repeat: 3}
"""

UNET = """
name: tiny_unet
inputs: {image: [1, 20, 20]}
blocks:
  up:
    params: {width: 4}
    inputs: [x, skip]
    nodes:
      - {id: upconv, op: conv_transpose2d, channels: width, kernel: 2, stride: 2}
      - {id: crop, op: crop, inputs: [skip], like: upconv}
      - {id: cat, op: concat, inputs: [crop, upconv]}
      - {id: conv, op: conv2d, channels: width, kernel: 3}
nodes:
  - {id: enc, op: conv2d, channels: 4, kernel: 3}
  - {id: pool, op: maxpool2d, kernel: 2, stride: 2}
  - {id: mid, op: conv2d, channels: 8, kernel: 3}
  - {id: dec, block: up, inputs: [mid, enc]}
"""

HIGHWAY = """
name: tiny_highway
inputs: {x: [6]}
blocks:
  hw:
    nodes:
      - {id: h, op: linear, features: 6}
      - {id: gate, op: highway, skip: x, carry: learned}
nodes:
  - {id: layer, block: hw}
  - {id: out, op: linear, features: 2}
"""


def checked_of(text: str):
    return check_spec(NetworkSpec.from_yaml("test.yaml", text=text))


# --- independent parsers of the two output formats ------------------------------------------

def parse_dot(text: str) -> dict:
    """Nodes (with their innermost cluster), edges with their class (= kind), clusters."""
    nodes, edges, clusters, stack = {}, {}, {}, []
    for line in text.splitlines():
        line = line.strip()
        if m := re.fullmatch(r'subgraph "cluster_(.+)" \{', line):
            clusters[m.group(1)] = stack[-1] if stack else None
            stack.append(m.group(1))
        elif line == "}" and stack:
            stack.pop()
        elif m := re.fullmatch(r'"(.+?)" -> "(.+?)" \[(.*)\];', line):
            ends = (m.group(2), m.group(1)) if "dir=back" in m.group(3) else m.group(1, 2)
            edges[ends] = re.search(r'class="(\w+)"', m.group(3)).group(1)
        elif (m := re.match(r'"(.+?)" \[', line)) and m.group(1) != "__legend__":
            nodes[m.group(1)] = stack[-1] if stack else None
    return {"nodes": nodes, "edges": edges, "clusters": clusters}


def parse_mermaid(text: str, box_ids: list[str]) -> dict:
    """Edges with the kind their linkStyle colour stands for, nodes, subgraph nesting."""
    by_colour = {s.colour: kind for kind, s in EDGE_STYLES.items()}
    links, styles, nodes, subgraphs, stack = [], {}, set(), [], []
    for line in text.splitlines():
        line = line.strip()
        if m := re.fullmatch(r'(n\d+) (-->|-\.->)\|"[^"]*"\| (n\d+)', line):
            links.append((m.group(1), m.group(3)))
        elif re.fullmatch(r'lg\d+a\[" "\] ---\|"\w+"\| lg\d+b\[" "\]', line):
            links.append(None)  # a legend sample
        elif m := re.fullmatch(r"linkStyle ([\d,]+) stroke:(#\w+),.*", line):
            styles.update({int(i): by_colour[m.group(2)] for i in m.group(1).split(",")})
        elif m := re.match(r'subgraph (\w+)\["', line):
            subgraphs.append((m.group(1), stack[-1] if stack else None))
            stack.append(m.group(1))
        elif line == "end":
            stack.pop()
        elif m := re.match(r'(n\d+)\(?\["', line):
            nodes.add(box_ids[int(m.group(1)[1:])])
    edges = {(box_ids[int(a[1:])], box_ids[int(b[1:])]): styles[i]
             for i, link in enumerate(links) if link for a, b in [link]}
    assert len(styles) == len(links), "every link, legend ones included, has a style"
    return {"nodes": nodes, "edges": edges, "subgraphs": subgraphs}


def expected_unfolded(checked) -> dict:
    """The reference: the checked graph itself."""
    return {"nodes": set(checked.inputs) | {n.id for n in checked.nodes},
            "edges": {(u, v): d["kind"] for u, v, d in checked.graph.edges(data=True)},
            "clusters": {s for n in checked.nodes for s in n.scope}}


# --- unfolded drawings equal the graph --------------------------------------------------------

@pytest.mark.parametrize("text, kinds", [
    (RESNET, {"forward", "residual"}), (DENSENET, {"forward", "concat"}),
    (UNET, {"forward", "crop", "concat"}), (HIGHWAY, {"forward", "highway"})])
def test_dot_and_mermaid_match_the_graph(text, kinds):
    checked = checked_of(text)
    want = expected_unfolded(checked)
    assert set(want["edges"].values()) == kinds
    drawing = build(checked)
    dot = parse_dot(to_dot(drawing))
    assert set(dot["nodes"]) == want["nodes"]
    assert dot["edges"] == want["edges"]
    assert set(dot["clusters"]) == want["clusters"]
    for node in checked.nodes:  # each node sits in its innermost block instance
        assert dot["nodes"][node.id] == (node.scope[-1] if node.scope else None)
    mmd = parse_mermaid(to_mermaid(drawing), list(drawing.boxes))
    assert mmd["nodes"] == want["nodes"]
    assert mmd["edges"] == want["edges"]
    assert len(mmd["subgraphs"]) == len(want["clusters"]) + 1  # + the legend


def test_legend_lists_each_kind_once():
    dot = to_dot(build(checked_of(UNET)))
    legend = re.search(r'"__legend__" \[.*label=<(.*)>\];', dot).group(1)
    assert re.findall(r'<td align="left">(\w+)</td>', legend) == ["forward", "concat", "crop"]


def test_unknown_kind_gets_the_default_style():
    from graphcnn.draw.model import Edge
    from graphcnn.draw.style import DEFAULT_EDGE

    drawing = build(checked_of(HIGHWAY))
    drawing.edges.append(Edge("x", "out", "wormhole", (6,)))
    dot = to_dot(drawing)
    assert f'color="{DEFAULT_EDGE.colour}", style={DEFAULT_EDGE.line}' in dot
    assert ">wormhole</td>" in dot


def test_block_names_and_repeat_in_cluster_labels():
    dot = to_dot(build(checked_of(RESNET)))
    assert 'label="stage1: basic ×2"' in dot
    assert 'label="stage1.block0: basic"' in dot and 'label="stage2: basic"' in dot


# --- folding ----------------------------------------------------------------------------------

def test_depth_1_folds_each_top_level_block_into_one_box():
    checked = checked_of(RESNET)
    drawing = build(checked, depth=1)
    dot = parse_dot(to_dot(drawing))
    assert dot["nodes"] == {k: None for k in ["image", "stem", "stage1", "stage2", "pool", "fc"]}
    assert dot["edges"] == {("image", "stem"): "forward", ("stem", "stage1"): "forward",
                            ("stage1", "stage2"): "forward", ("stage2", "pool"): "forward",
                            ("pool", "fc"): "forward"}
    box = drawing.boxes["stage1"]
    inside = [n for n in checked.nodes if n.scope[:1] == ("stage1",)]
    assert box.op == "basic ×2" and box.shape == inside[-1].shape
    assert box.params == sum(n.param_count for n in inside) and f"{box.params:,} params" in box.detail


def test_depth_2_keeps_the_edges_that_cross_instances():
    full = parse_dot(to_dot(build(checked_of(RESNET))))
    dot = parse_dot(to_dot(build(checked_of(RESNET), depth=2)))
    assert len(dot["nodes"]) < len(full["nodes"])
    assert dot["clusters"] == {"stage1": None, "stage2": None}  # stage2 is one instance: level 1
    assert dot["nodes"]["stage1.block0"] == "stage1" and dot["nodes"]["stage2.add"] == "stage2"
    assert dot["edges"][("stem", "stage1.block0")] == "forward"  # the residual one merged into it
    assert dot["edges"][("stage1.block0", "stage1.block1")] == "forward"
    assert dot["edges"][("stage1.block1", "stage2.conv1")] == "forward"
    assert dot["edges"][("stage1.block1", "stage2.add")] == "residual"


def test_folded_unet_keeps_the_skip_into_the_decoder():
    dot = parse_dot(to_dot(build(checked_of(UNET), depth=1)))
    assert dot["edges"][("enc", "dec")] == "forward"  # the crop reads the encoder map first
    assert dot["edges"][("mid", "dec")] == "forward"
    mmd = to_mermaid(build(checked_of(UNET), depth=1))
    assert "subgraph" in mmd and mmd.count("-->") + mmd.count("-.->") == 5


def test_depth_below_1_is_refused():
    from graphcnn.errors import GraphCnnError

    with pytest.raises(GraphCnnError, match="at least 1"):
        build(checked_of(RESNET), depth=0)


# --- rendering and the CLI --------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_svg_rendering_has_every_box_and_edge_kind():
    from graphcnn.draw import render

    drawing = build(checked_of(RESNET))
    svg = ET.fromstring(render(to_dot(drawing), "svg"))
    classes = [g.get("class", "") for g in svg.iter("{http://www.w3.org/2000/svg}g")]
    assert sum(c.startswith("node") for c in classes) == len(drawing.boxes) + 1  # + legend
    assert classes.count("edge residual") == 3
    assert classes.count("cluster") == len(drawing.clusters)


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "graphcnn.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture
def spec_file(tmp_path) -> Path:
    path = tmp_path / "unet.yaml"
    path.write_text(UNET)
    return path


def test_cli_writes_mermaid_and_dot(spec_file, tmp_path):
    proc = run_cli("draw", spec_file, "-o", tmp_path / "net.mmd", "--direction", "LR")
    assert proc.returncode == 0, proc.stderr
    assert "flowchart LR" in (tmp_path / "net.mmd").read_text()
    proc = run_cli("draw", spec_file, "-o", tmp_path / "net.dot", "--depth", "1")
    assert proc.returncode == 0, proc.stderr
    assert set(parse_dot((tmp_path / "net.dot").read_text())["nodes"]) == {
        "image", "enc", "pool", "mid", "dec"}


def test_cli_refuses_an_unknown_format(spec_file, tmp_path):
    proc = run_cli("draw", spec_file, "-o", tmp_path / "net.jpg")
    assert proc.returncode == 1 and "unknown diagram format" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_without_graphviz_writes_the_dot_and_exits_1(spec_file, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli("draw", spec_file, "-o", tmp_path / "net.svg",
                   env={**os.environ, "PATH": str(empty)})
    assert proc.returncode == 1
    assert "apt-get install graphviz" in proc.stdout and "brew install graphviz" in proc.stdout
    assert "Graphviz's `dot` program is not on PATH" in proc.stderr
    assert (tmp_path / "net.dot").is_file() and not (tmp_path / "net.svg").exists()
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_cli_renders_png(spec_file, tmp_path):
    proc = run_cli("draw", spec_file, "-o", tmp_path / "net.png")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "net.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_encoder_decoder_puts_each_scale_on_one_rank():
    dot = to_dot(build(checked_of(UNET)))
    ranks = [set(re.findall(r'"([^"]+)"', m)) for m in re.findall(r"\{ rank=same; (.*) \}", dot)]
    # scale 0: the encoder conv, the crop like the upconv, and the decoder after it
    assert {"image", "enc", "dec.upconv", "dec.crop", "dec.cat", "dec.conv"} in ranks
    assert {"pool", "mid"} in ranks
    assert re.search(r'"dec.upconv" -> "mid" \[.*dir=back', dot)  # the climb, ranked upside down
    assert "rank=same" not in to_dot(build(checked_of(RESNET)))  # no upsampling: plain layout


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
@pytest.mark.parametrize("depth", [None, 1])
def test_encoder_decoder_renders_with_clusters_and_ranks(depth):
    from graphcnn.draw import render

    drawing = build(checked_of(UNET), depth)
    svg = ET.fromstring(render(to_dot(drawing), "svg"))
    classes = [g.get("class", "") for g in svg.iter("{http://www.w3.org/2000/svg}g")]
    assert sum(c.startswith("node") for c in classes) == len(drawing.boxes) + 1
    assert sum(c.startswith("edge") for c in classes) == len(drawing.edges)
