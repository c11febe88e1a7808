"""Detection heads: decoding a YOLO v1 output grid into boxes, with per-class suppression.

yolo_decode (Redmon et al. 2016) reads the [S, S, 5B + C] tensor of a YOLO v1 network. Grid
convention: axis 0 is the cell row i (vertical, y), axis 1 the cell column j (horizontal, x).
Each cell holds B boxes (x, y, w, h, confidence) and then C class probabilities
Pr(class | object). x, y are the box centre's offsets within the cell, w, h are relative to the
whole image; image_size is [height, width] in pixels, as the spec's channels-first [C, H, W].
So box b of cell (i, j) has its centre at ((j + x) / S * width, (i + y) / S * height) and size
(w * width, h * height). The values are used as they come (v1 has no sigmoid; the square root
of w, h is only in the training loss), and boxes are not clipped to the image.

Class-specific confidence (the paper's test-time score) = Pr(class | object) * confidence.
ONNX NonMaxSuppression runs per class and per image: a box is a candidate when its score is
> score_threshold, it is suppressed when its IoU with a kept box of the same class is
> iou_threshold, and at most max_detections boxes are kept per class per image.

Output: a fixed-size padded tensor [N, max_total, 7]; each row is
(x1, y1, x2, y2, score, class, valid): corners in pixels, the class-specific score, the class
index (a float holding an integer) and valid = 1 for a detection, 0 for padding (all zeros).
Rows of an image are sorted by score, highest first, so the valid rows come first: an image's
detections are `out[n][out[n, :, 6] > 0]`. max_total (default classes * max_detections, capped
at S*S*B*C) bounds the detections per image; when more survive, the best-scoring are kept.
A fixed size keeps every shape static (the checker's shapes exclude the batch) and one tensor
carries boxes, scores and classes together. No parameters and no MACs; no backward rule (it
is inference post-processing: train on its input). In the model or apart: put the node after
the network (outputs [raw, detections]) or alone in a second spec whose input is [S, S, 5B + C].
"""
from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from ..errors import ShapeError
from .base import GLOBAL, Layer, Shape, fmt_shape, register

ROW = ("x1", "y1", "x2", "y2", "score", "class", "valid")


@register
class YoloDecode(Layer):
    """[N, S, S, 5B + C] raw YOLO v1 output -> [N, max_total, 7] detections (see module doc)."""
    op: Literal["yolo_decode"] = "yolo_decode"
    fp32_ops: ClassVar[frozenset[str]] = frozenset({"NonMaxSuppression"})
    grid: int = Field(7, ge=1)
    boxes: int = Field(2, ge=1)
    classes: int = Field(20, ge=1)
    image_size: list[int] = Field([448, 448], min_length=2, max_length=2)
    score_threshold: float = Field(0.2, allow_inf_nan=False)  # scores are raw: any finite value
    iou_threshold: float = Field(0.5, ge=0.0, le=1.0)
    max_detections: int = Field(10, ge=1)
    max_total: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _positive_image(self):
        if min(self.image_size) < 1:
            raise ValueError(f"image_size must be [height, width] > 0, got {self.image_size}")
        return self

    @property
    def candidates(self) -> int:
        return self.grid * self.grid * self.boxes  # candidate boxes per image

    @property
    def rows(self) -> int:
        wanted = self.max_total or self.classes * self.max_detections
        return min(wanted, self.candidates * self.classes)

    def infer(self, shapes: list[Shape]) -> Shape:
        want = (self.grid, self.grid, 5 * self.boxes + self.classes)
        if tuple(shapes[0]) != want:
            raise ShapeError("yolo_decode needs the grid of box and class values",
                             expected=f"{fmt_shape(want)} (S, S, 5*boxes + classes)",
                             received=fmt_shape(shapes[0]),
                             hint="reshape the last linear layer's output with "
                                  f"`op: reshape, shape: {list(want)}`")
        return (self.rows, len(ROW))

    def window(self, shapes):
        return GLOBAL

    def torch(self, node, emit):
        """yolo_decode(...) (a helper) with greedy_nms, the suppression ONNX's
        NonMaxSuppression does (candidates above the threshold by score, ties by index)."""
        helper = emit.helper("yolo_decode", YOLO_DECODE, needs=(("greedy_nms", GREEDY_NMS),))
        return emit.call(helper, emit.x, self.boxes, self.classes, self.image_size,
                         self.score_threshold, self.iou_threshold, self.max_detections,
                         self.rows)

    def lower(self, g, xs, shapes, out):
        boxes, scores = self._decode(g, xs[0])
        # thresholds as 1-element tensors: onnxruntime takes scalars too, onnx's reference
        # evaluator indexes them ([0]) and fails on a scalar
        thresholds = [g.array(name, np.array([value], np.float32)) for name, value in
                      (("iou_threshold", self.iou_threshold), ("score_threshold", self.score_threshold))]
        selected = g.op("NonMaxSuppression", [boxes, scores, g.ints([self.max_detections]),
                                              *thresholds])
        keep = self._keep_mask(g, scores, selected)
        return self._gather_rows(g, boxes, scores, keep)

    def _decode(self, g, x):
        """boxes [N, S*S*B, 4] as (x1, y1, x2, y2) in pixels, box index (i*S + j)*B + b;
        scores [N, C, S*S*B] = Pr(class | object) * confidence."""
        s, b, c = self.grid, self.boxes, self.classes
        per_box = g.op("Reshape", [self._slice(g, x, 0, 5 * b), g.ints([-1, s, s, b, 5])])
        height, width = self.image_size
        offsets = np.stack(np.meshgrid(np.arange(s), np.arange(s), indexing="xy"), -1)
        cell = g.array("cell_xy", offsets.reshape(s, s, 1, 2).astype(np.float32))  # (j, i)
        centre = g.op("Mul", [g.op("Add", [self._slice(g, per_box, 0, 2), cell]),
                              g.array("cell_size", np.array([width / s, height / s], np.float32))])
        half = g.op("Mul", [self._slice(g, per_box, 2, 4),
                            g.array("half_image", np.array([width / 2, height / 2], np.float32))])
        corners = g.op("Concat", [g.op("Sub", [centre, half]), g.op("Add", [centre, half])], axis=-1)
        boxes = g.op("Reshape", [corners, g.ints([-1, self.candidates, 4])])
        probs = g.op("Unsqueeze", [self._slice(g, x, 5 * b, 5 * b + c), g.ints([3])])
        scores = g.op("Mul", [self._slice(g, per_box, 4, 5), probs])  # [N, S, S, B, C]
        flat = g.op("Reshape", [scores, g.ints([-1, self.candidates, c])])
        return boxes, g.op("Transpose", [flat], perm=[0, 2, 1])

    @staticmethod
    def _slice(g, x, start, end):
        return g.op("Slice", [x, g.ints([start]), g.ints([end]), g.ints([-1])])

    def _keep_mask(self, g, scores, selected):
        """[N, C, S*S*B] bool: which (image, class, box) NonMaxSuppression selected."""
        count = g.op("Slice", [g.op("Shape", [selected]), g.ints([0]), g.ints([1]), g.ints([0])])
        ones = g.op("Expand", [g.scalar(1.0), count])
        zeros = g.op("ConstantOfShape", [g.op("Shape", [scores])])  # float 0 by default
        return g.op("Cast", [g.op("ScatterND", [zeros, selected, ones])], to=g.BOOL)

    def _gather_rows(self, g, boxes, scores, keep):
        """The best max_total kept (class, box) pairs of each image as rows of ROW."""
        flat = [-1, self.classes * self.candidates]
        ranked = g.op("Where", [keep, scores, g.scalar(-math.inf)])
        best, index = g.op("TopK", [g.op("Reshape", [ranked, g.ints(flat)]), g.ints([self.rows])],
                           outputs=2, axis=1, largest=1, sorted=1)
        per_class = g.ints([self.candidates])
        which = g.op("Expand", [g.op("Unsqueeze", [g.op("Mod", [index, per_class]), g.ints([2])]),
                                g.ints([1, 1, 4])])
        corners = g.op("GatherElements", [boxes, which], axis=1)
        klass = g.op("Cast", [g.op("Div", [index, per_class])], to=g.FLOAT)
        valid = g.op("GatherElements", [g.op("Reshape", [keep, g.ints(flat)]), index], axis=1)
        columns = [g.op("Unsqueeze", [v, g.ints([2])])
                   for v in (best, klass, g.op("Cast", [valid], to=g.FLOAT))]
        rows = g.op("Concat", [corners, *columns], axis=2)
        return g.op("Where", [g.op("Unsqueeze", [valid, g.ints([2])]), rows, g.scalar(0.0)])


YOLO_DECODE = '''
def yolo_decode(x, boxes, classes, image_size, score_threshold, iou_threshold, max_detections,
                rows):
    """YOLO v1's [N, S, S, 5B + C] grid -> [N, rows, 7] detections (x1, y1, x2, y2, score,
    class, valid) by score, padding rows zero: box b of cell (i, j) is centred at
    ((j + x) / S * width, (i + y) / S * height), sized (w * width, h * height); its score for
    class c is Pr(c | object) * confidence; suppression per image and class (greedy_nms)."""
    n, s = x.shape[:2]
    height, width = image_size
    per_box = x[..., :5 * boxes].reshape(n, s, s, boxes, 5)
    i, j = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    cell = torch.stack([j, i], -1).reshape(s, s, 1, 2).to(x)
    centre = (per_box[..., :2] + cell) * x.new_tensor([width / s, height / s])
    half = per_box[..., 2:4] * x.new_tensor([width / 2, height / 2])
    corners = torch.cat([centre - half, centre + half], -1).reshape(n, -1, 4)
    probs = x[..., 5 * boxes:5 * boxes + classes].unsqueeze(3)
    scores = (per_box[..., 4:5] * probs).reshape(n, -1, classes).transpose(1, 2)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    for b in range(n):
        for c in range(classes):
            kept = greedy_nms(corners[b], scores[b, c], score_threshold, iou_threshold)
            keep[b, c, kept[:max_detections]] = True
    best, index = torch.where(keep, scores, -math.inf).reshape(n, -1).topk(rows, dim=1)
    m = corners.shape[1]
    box = torch.gather(corners, 1, (index % m).unsqueeze(2).expand(-1, -1, 4))
    valid = torch.gather(keep.reshape(n, -1), 1, index).unsqueeze(2)
    out = torch.cat([box, best.unsqueeze(2), (index // m).unsqueeze(2).to(x), valid.to(x)], 2)
    return torch.where(valid, out, torch.zeros_like(out))
'''

GREEDY_NMS = '''
def greedy_nms(corners, scores, score_threshold, iou_threshold):
    """Indices kept: boxes scoring above the threshold, best first (ties: lower index), each
    dropped when its IoU with a kept one is above iou_threshold."""
    low, high = torch.minimum(corners[:, :2], corners[:, 2:]), torch.maximum(corners[:, :2], corners[:, 2:])
    area = (high - low).prod(1)
    inter = (torch.minimum(high[:, None], high[None]) - torch.maximum(low[:, None], low[None]))
    inter = inter.clamp(min=0).prod(2)
    union = area[:, None] + area[None] - inter
    iou = torch.where((area[:, None] > 0) & (area[None] > 0) & (union > 0), inter / union, 0)
    kept = []
    for k in torch.sort(scores, descending=True, stable=True).indices.tolist():
        if scores[k] > score_threshold and all(iou[k, other] <= iou_threshold for other in kept):
            kept.append(k)
    return kept
'''
