"""Generate docs/architectures.md and docs/img/<spec>.svg: every shipped spec (specs/*.yaml, not
the block libraries) with its diagram, its parameter count (from the checked graph, as
`graphcnn summary` prints it) and where that count can be checked independently.

    python tools/gen_architectures_doc.py            # needs Graphviz's `dot`

A spec that does not check is reported and left out (the run exits 1). Big networks are drawn
folded: the deepest block depth whose drawing stays under MAX_BOXES boxes.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from graphcnn.api import check_spec  # noqa: E402
from graphcnn.draw import build, render, to_dot  # noqa: E402
from graphcnn.errors import GraphCnnError  # noqa: E402
from graphcnn.fileio import write_bytes_atomic, write_text_atomic  # noqa: E402

MAX_BOXES = 60
FORMULA = "the formula (sum of the layers' parameter shapes)"
# Published counts to compare with: (value, where it is published). None: no published count.
REFERENCES = {
    "alexnet": (61_100_840, "torchvision `alexnet` model card (one-GPU AlexNet)"),
    "alexnet_lrn": (60_965_224, "Caffe `bvlc_alexnet` (Krizhevsky et al. 2012, two-GPU grouping, LRN)"),
    "resnet18": (11_689_512, "torchvision `resnet18` model card; He et al. 2016"),
    "resnet50": (25_557_032, "torchvision `resnet50` model card; He et al. 2016 (25.6M)"),
    "resnet200": (None, "He et al. 2016b (Identity Mappings) quote 64.7M for ResNet-200"),
    "resnet200_preact": (None, "He et al. 2016b (Identity Mappings) quote 64.7M for ResNet-200"),
    "vgg16": (138_357_544, "torchvision `vgg16` model card; Simonyan & Zisserman 2015 (138M)"),
    "vgg16_bn": (138_365_992, "torchvision `vgg16_bn` model card"),
    "densenet121": (7_978_856, "torchvision `densenet121` model card; Huang et al. 2017 (8.0M)"),
    "unet": (None, "Ronneberger et al. 2015 (the paper quotes no count); " + FORMULA),
    "yolov1": (None, "Redmon et al. 2016, Figure 3 (layers; no count quoted); " + FORMULA),
    # the modern zoo (issue 14): counted on torchvision 0.28's models
    "mobilenet_v2": (3_504_872, "torchvision `mobilenet_v2`: sum of its parameters (weights=None); outputs equal through tools/torchvision_check.py"),
    "mobilenet_v3_small": (2_542_856, "torchvision `mobilenet_v3_small`: sum of its parameters (weights=None); outputs equal through tools/torchvision_check.py"),
    "mobilenet_v3_large": (5_483_032, "torchvision `mobilenet_v3_large`: sum of its parameters (weights=None); outputs equal through tools/torchvision_check.py"),
    "efficientnet_b0": (5_288_548, "torchvision `efficientnet_b0`: sum of its parameters (weights=None); outputs equal through tools/torchvision_check.py"),
    "convnext_tiny": (28_589_128, "torchvision `convnext_tiny`: sum of its parameters (weights=None); outputs equal through tools/torchvision_check.py"),
    "resnext50_32x4d": (25_028_904, "torchvision `resnext50_32x4d`: sum of its parameters (weights=None); outputs equal through tools/torchvision_check.py"),
    "wide_resnet50_2": (68_883_240, "torchvision `wide_resnet50_2`: sum of its parameters (weights=None); outputs equal through tools/torchvision_check.py"),
    "squeezenet1_1": (1_235_496, "torchvision `squeezenet1_1`: sum of its parameters (weights=None); outputs equal through tools/torchvision_check.py"),
    "googlenet": (6_624_904, "torchvision `googlenet`: sum of its parameters (weights=None) without the aux heads; outputs equal through tools/torchvision_check.py"),
    "inception_v3": (23_834_568, "torchvision `inception_v3`: sum of its parameters (weights=None) without the aux head (its card's 27,161,264 includes it); outputs equal through tools/torchvision_check.py"),
    "shufflenet_v2_x1_0": (2_278_604, "torchvision `shufflenet_v2_x1_0`: sum of its parameters (weights=None); outputs equal through tools/torchvision_check.py"),
    "regnet_y_400mf": (4_344_144, "torchvision `regnet_y_400mf`: sum of its parameters (weights=None); outputs equal through tools/torchvision_check.py"),
    "mnasnet0_5": (2_218_512, "torchvision `mnasnet0_5`: sum of its parameters (weights=None); outputs equal through tools/torchvision_check.py"),
    "fcn_resnet50": (32_957_013, "torchvision `fcn_resnet50`: sum of its parameters (weights=None) without the aux classifier; outputs equal through tools/torchvision_check.py"),
    "deeplabv3_resnet50": (39_638_869, "torchvision `deeplabv3_resnet50`: sum of its parameters (weights=None) without the aux classifier; outputs equal through tools/torchvision_check.py"),
}


def choose_depth(checked) -> int | None:
    """None (every layer) when it fits, else the deepest folding that does."""
    for depth in (None, 4, 3, 2):
        if len(build(checked, depth).boxes) <= MAX_BOXES:
            return depth
    return 1


def description(path: Path) -> str:
    """The spec's leading comment block, without the schema line."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if "yaml-language-server" not in line:
            lines.append(line.lstrip("#").strip())
    return " ".join(lines)


def source_of(name: str, params: int) -> str:
    value, where = REFERENCES.get(name, (None, FORMULA))
    if value is None:
        return where
    verdict = "matches" if value == params else f"**differs: {value:,}**"
    if value != params:
        print(f"warning: {name}: {params:,} parameters, reference {value:,}", file=sys.stderr)
    return f"{where}: {value:,} ({verdict})"


def section(path: Path, img_dir: Path) -> tuple[str, str]:
    """(table row, section text) for one spec; writes its SVG."""
    checked = check_spec(path)
    depth = choose_depth(checked)
    drawing = build(checked, depth)
    write_bytes_atomic(img_dir / f"{path.stem}.svg", render(to_dot(drawing), "svg"))
    flag = f" --depth {depth}" if depth else ""
    shown = f"depth {depth}" if depth else "every layer"
    params, source = checked.total_params, source_of(path.stem, checked.total_params)
    row = (f"| [{path.stem}](#{path.stem}) | {params:,} | {len(checked.nodes)} | {shown} "
           f"| {source} |")
    text = "\n".join([
        f"## {path.stem}", "", description(path), "",
        f"- Parameters: **{params:,}** (`graphcnn summary specs/{path.name}`)",
        f"- Source of the count: {source}",
        f"- Layers: {len(checked.nodes)}; diagram: {shown} "
        f"(`graphcnn draw specs/{path.name}{flag} -o {path.stem}.svg`)", "",
        f"![{path.stem}](img/{path.stem}.svg)", ""])
    return row, text


def main() -> int:
    docs = ROOT / "docs"
    img_dir = docs / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows, sections, failed = [], [], 0
    for path in sorted((ROOT / "specs").glob("*.yaml")):
        try:
            row, text = section(path, img_dir)
        except GraphCnnError as exc:
            print(f"skipped {path.name}: {exc}", file=sys.stderr)
            failed += 1
            continue
        rows.append(row)
        sections.append(text)
        print(f"drew {path.name}")
    head = ["# Architectures", "",
            "Every network shipped in `specs/`, drawn by `graphcnn draw` (blocks as dashed "
            "clusters, folded blocks as grey boxes; edge colours by kind, see each legend). "
            "Generated by `tools/gen_architectures_doc.py`; do not edit by hand.", "",
            "| Spec | Parameters | Layers | Diagram | Source of the count |",
            "|---|---:|---:|---|---|"]
    write_text_atomic(docs / "architectures.md", "\n".join(head + rows + [""] + sections))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
