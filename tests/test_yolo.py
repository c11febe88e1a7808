"""YOLO v1: the spec's size, and yolo_decode against a numpy decode + greedy NMS written from
the paper (Redmon et al. 2016) and a hand-made grid whose detections are known.

Grid convention (as yolo_decode's docstring): raw[n, i, j] is cell row i (y), column j (x);
each cell holds B boxes (x, y, w, h, confidence) then C class probabilities.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import SPECS, ort_run
from graphcnn.api import check_spec, compile_spec
from graphcnn.errors import ShapeError
from graphcnn.spec import NetworkSpec

S, B, C = 7, 2, 20


def head_spec(**fields) -> NetworkSpec:
    """A spec holding only the decode head, reading a [7, 7, 30] grid."""
    node = {"id": "det", "op": "yolo_decode", **fields}
    return NetworkSpec.model_validate({"name": "head", "inputs": {"raw": [S, S, 5 * B + C]},
                                       "nodes": [node]})


def decode_ref(raw, height, width):
    """Per image: candidate boxes (x1, y1, x2, y2) in pixels and scores [box, class], box
    index (i*S + j)*B + b; score = Pr(class | object) * confidence."""
    s, b = raw.shape[0], (raw.shape[2] - C) // 5
    boxes, scores = [], []
    for i in range(s):
        for j in range(s):
            probs = raw[i, j, 5 * b:].astype(np.float64)
            for k in range(b):
                x, y, w, h, conf = raw[i, j, 5 * k:5 * k + 5].astype(np.float64)
                cx, cy = (j + x) / s * width, (i + y) / s * height
                boxes.append([cx - w * width / 2, cy - h * height / 2,
                              cx + w * width / 2, cy + h * height / 2])
                scores.append(conf * probs)
    return np.array(boxes), np.array(scores)


def iou(a, b):
    ax1, ax2 = sorted((a[0], a[2]))
    ay1, ay2 = sorted((a[1], a[3]))
    bx1, bx2 = sorted((b[0], b[2]))
    by1, by2 = sorted((b[1], b[3]))
    inter = max(0, min(ax2, bx2) - max(ax1, bx1)) * max(0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def detect_ref(raw, score_threshold=0.2, iou_threshold=0.5, max_detections=10, max_total=None,
               image_size=(448, 448)):
    """Rows (x1, y1, x2, y2, score, class) of one image: greedy NMS per class (highest score
    first; drop a box whose IoU with a kept one is > iou_threshold), best max_total overall."""
    boxes, scores = decode_ref(raw, *image_size)
    rows = []
    for c in range(scores.shape[1]):
        order = [k for k in np.argsort(-scores[:, c], kind="stable")
                 if scores[k, c] > score_threshold]
        kept = []
        for k in order:
            if len(kept) < max_detections and all(iou(boxes[k], boxes[q]) <= iou_threshold
                                                  for q in kept):
                kept.append(k)
        rows += [[*boxes[k], scores[k, c], c] for k in kept]
    rows.sort(key=lambda r: -r[4])
    return np.array(rows[:max_total or C * max_detections]).reshape(-1, 6)


def run_head(raw, **fields):
    (out,) = ort_run(compile_spec(head_spec(**fields)), {"raw": raw.astype(np.float32)})
    return out


def detections(out_image):
    """The valid rows of one image, without the valid column."""
    return out_image[out_image[:, 6] > 0][:, :6]


def put(raw, n, row, col, box, values):
    raw[n, row, col, 5 * box:5 * box + 5] = values


def crafted():
    """Image 0: two boxes of class 5 in cell (row 3, col 2) (IoU 0.93: the weaker one is
    suppressed), a class-9 box in cell (3, 3) overlapping the first (IoU 0.47, kept: NMS is per
    class), a class-1 box of score 0.1 (dropped). Image 1: two other boxes."""
    raw = np.zeros((2, S, S, 5 * B + C), np.float32)
    put(raw, 0, 3, 2, 0, [0.5, 0.5, 0.2, 0.4, 0.9])
    put(raw, 0, 3, 2, 1, [0.55, 0.5, 0.2, 0.4, 0.8])
    raw[0, 3, 2, 10 + 5] = 1.0
    put(raw, 0, 3, 3, 0, [0.0, 0.5, 0.2, 0.4, 0.7])
    raw[0, 3, 3, 10 + 9] = 1.0
    put(raw, 0, 0, 6, 0, [0.5, 0.5, 0.3, 0.3, 0.1])
    raw[0, 0, 6, 10 + 1] = 1.0
    put(raw, 1, 6, 5, 0, [0.5, 0.5, 0.1, 0.1, 1.0])
    raw[1, 6, 5, 10 + 19] = 0.95
    put(raw, 1, 0, 0, 1, [0.25, 0.75, 0.5, 0.25, 0.6])
    raw[1, 0, 0, 10 + 0] = 0.5
    return raw


def test_crafted_grid_gives_known_boxes():
    out = run_head(crafted(), score_threshold=0.2, iou_threshold=0.3)
    assert out.shape == (2, 200, 7)
    # cell (3, 2), x = y = 0.5: centre ((2 + 0.5) / 7 * 448, (3 + 0.5) / 7 * 448) = (160, 224);
    # size (0.2 * 448, 0.4 * 448) = (89.6, 179.2); cell (3, 3), x = 0: centre (192, 224)
    first = [[115.2, 134.4, 204.8, 313.6, 0.9, 5], [147.2, 134.4, 236.8, 313.6, 0.7, 9]]
    # cell (6, 5): centre (352, 416), 44.8 square; cell (0, 0): centre (16, 48), 224 x 112
    second = [[329.6, 393.6, 374.4, 438.4, 0.95, 19], [-96.0, -8.0, 128.0, 104.0, 0.3, 0]]
    np.testing.assert_allclose(detections(out[0]), first, atol=1e-4)
    np.testing.assert_allclose(detections(out[1]), second, atol=1e-4)
    assert np.all(out[:, 2:] == 0)  # padding rows are all zeros
    for n in range(2):
        np.testing.assert_allclose(detections(out[n]),
                                   detect_ref(crafted()[n], 0.2, 0.3), atol=1e-4)


def test_nms_is_per_class():
    """The cell (3, 3) box, made a class-5 candidate too, is suppressed as class 5 by the
    class-5 box it overlaps (IoU 0.47 > 0.3) and still kept as class 9."""
    raw = crafted()[:1]
    raw[0, 3, 3, 10 + 5] = 1.0  # the cell (3, 3) box is now also a class-5 candidate (0.7)
    rows = detections(run_head(raw, iou_threshold=0.3)[0])
    assert sorted(map(tuple, rows[:, 4:6].round(4))) == [(0.7, 9.0), (0.9, 5.0)]


def test_random_grids_match_reference():
    rng = np.random.default_rng(1)
    raw = rng.random((3, S, S, 5 * B + C)).astype(np.float32)
    fields = dict(score_threshold=0.3, iou_threshold=0.4, max_detections=3, max_total=25,
                  image_size=[300, 500])
    out = run_head(raw, **fields)
    assert out.shape == (3, 25, 7)
    for n in range(3):
        want = detect_ref(raw[n], 0.3, 0.4, 3, 25, (300, 500))
        assert len(want) == 25  # enough survive that max_total truncates
        np.testing.assert_allclose(detections(out[n]), want, rtol=1e-5, atol=1e-3)


def test_few_survivors_and_none():
    raw = np.random.default_rng(2).random((2, S, S, 5 * B + C)).astype(np.float32)
    raw[1] = 0.0  # no candidate at all: an empty selection, every row padding
    out = run_head(raw, score_threshold=0.85, iou_threshold=0.5, max_detections=2)
    want = detect_ref(raw[0], 0.85, 0.5, 2)
    assert 0 < len(want) < 40
    np.testing.assert_allclose(detections(out[0]), want, rtol=1e-5, atol=1e-3)
    assert np.all(out[0, len(want):] == 0) and np.all(out[1] == 0)


def test_decode_counts_and_shape_rule():
    checked = check_spec(head_spec(max_detections=4))
    node = checked.node("det")
    assert (node.shape, node.param_count, node.macs) == ((80, 7), 0, 0)
    with pytest.raises(ShapeError) as err:
        check_spec(head_spec(classes=80))
    assert "yolo_decode needs the grid of box and class values" in str(err.value)
    assert "[N, 7, 7, 90]" in str(err.value) and "[N, 7, 7, 30]" in str(err.value)


def test_yolov1_parameter_count():
    checked = check_spec(SPECS / "yolov1.yaml")
    assert checked.total_params == 271_703_550
    convs = [n for n in checked.nodes if n.op == "conv2d"]
    assert len(convs) == 24 and all("bias" in n.params for n in convs)
    assert [n.op for n in checked.nodes if n.op == "linear"] == ["linear"] * 2
    assert checked.outputs == ("raw", "detections")
    assert checked.shape_of("raw") == (7, 7, 30) and checked.shape_of("detections") == (200, 7)


@pytest.mark.slow
def test_yolov1_compiles_and_runs():
    """The 271M-parameter model once, batch 1: its detections are the reference decode of its
    own raw output."""
    model = compile_spec(SPECS / "yolov1.yaml", batch=1)
    image = np.random.default_rng(0).standard_normal((1, 3, 448, 448)).astype(np.float32)
    raw, dets = ort_run(model, {"image": image})
    assert raw.shape == (1, 7, 7, 30) and dets.shape == (1, 200, 7)
    np.testing.assert_allclose(detections(dets[0]), detect_ref(raw[0]), rtol=1e-4, atol=1e-2)


def test_decode_in_the_model_or_as_a_second_model():
    """A flat [1470] output reshaped to the grid: decoding inside the model (two outputs) gives
    what the raw-only model followed by a decoder-only model gives."""
    nodes = [{"id": "raw", "op": "reshape", "shape": [S, S, 5 * B + C]},
             {"id": "det", "op": "yolo_decode", "score_threshold": 0.5}]
    spec = lambda outputs: NetworkSpec.model_validate(  # noqa: E731
        {"name": "flat", "inputs": {"x": [1470]}, "nodes": nodes, "outputs": outputs})
    x = np.random.default_rng(3).random((2, 1470)).astype(np.float32)
    raw, dets = ort_run(compile_spec(spec(["raw", "det"])), {"x": x})
    (raw_only,) = ort_run(compile_spec(spec(["raw"])), {"x": x})
    np.testing.assert_array_equal(raw_only, raw)
    np.testing.assert_array_equal(run_head(raw_only, score_threshold=0.5), dets)
