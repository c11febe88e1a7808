"""`graphcnn.Predictor`: a compiled model ready to run on batches, for any host that calls it.

The onnxruntime session is built once, in the constructor: `graphcnn predict` keeps one, the
Ray actor of `predict --engine ray` builds one per actor, and a Spark `predict_batch_udf` or a
Ray Serve deployment builds one per worker the same way. Numpy in, numpy out:

    p = Predictor("r18.onnx", threads=2)
    y = p(x)                              # x: the model's input [N, C, H, W], already prepared
    y = p(p.load_all(["a.jpg", "b.png"])) # or files (or their bytes) by the model's own recipe
    p.top(y[0], k=5)                      # {"measure": "probability", "top": [{label, index, score}]}

Preprocessing is the caller's choice: `p(x)` feeds x as it is, `load`/`load_all` apply the
recipe in the model's metadata (the spec's `preprocess:`), as `graphcnn predict` does.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import DataError, RunError

SCORED = {"Softmax": "probability", "Sigmoid": "score"}  # outputs that are scores already
PASS_THROUGH = {"Cast", "Identity", "Flatten", "Reshape", "Squeeze"}  # look past these


class Predictor:
    """One model, one onnxruntime session. `model`: a .onnx path, its bytes or a ModelProto;
    `threads`: onnxruntime's intra-op threads (default one per core: several predictors in one
    machine should split the cores between them, onnxruntime#16793)."""

    def __init__(self, model, provider: str = "cpu", threads: int | None = None,
                 spinning: str = "always"):
        from ..runtime import session
        from .preprocess import read_labels

        self.model = _model_proto(model)
        self.session = session(self.model, provider, threads, spinning)
        self.labels = read_labels(self.model)
        self.notes: list[str] = []  # what the caller may want to warn about
        self._input(self.session.get_inputs())
        self.measure, self._finish = _scoring(self.model, self.session.get_outputs()[0].name)

    def _input(self, inputs) -> None:
        from ..runtime import dynamic_sizes
        from .preprocess import read_recipe

        shape = inputs[0].shape
        if len(inputs) != 1 or len(shape) != 4:
            raise RunError("predict feeds models with one image input [N, C, H, W]",
                           received=", ".join(f"{i.name} {i.shape}" for i in inputs))
        self.input_name = inputs[0].name
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.size = tuple(d if isinstance(d, int) else None for d in shape[2:])
        dynamic = dynamic_sizes(self.session)
        fallback = tuple(d if isinstance(d, int) else dynamic.get(d) for d in shape[2:])
        self.recipe = self._recipe(read_recipe(self.model), shape[1], fallback,
                                   inputs[0].type == "tensor(uint8)")

    def _recipe(self, recipe, channels, fallback, uint8: bool):
        from ..runtime.images import Recipe

        self.exact = None  # without a recipe: resized to exactly the model's size
        if recipe is None:
            recipe = Recipe(channels="L" if channels == 1 else "RGB")
            self.exact = fallback if None not in fallback else None
            self.notes.append(
                "the model carries no preprocessing recipe: images are "
                + (f"resized to {self.exact[0]}x{self.exact[1]}" if self.exact
                   else "taken at their size") + ", pixels scaled to 0..1, no mean or std")
        if isinstance(channels, int) and channels != recipe.channel_count:
            raise RunError(f"the recipe gives {recipe.channels} images ({recipe.channel_count} "
                           f"channels) and the model takes {channels} channels")
        wanted = recipe.fixed_size()
        if wanted and any(w != m for w, m in zip(wanted, self.size) if m is not None):
            raise RunError(self._mismatch(recipe, wanted))
        return replace(recipe, folded=uint8)  # a uint8 input takes pixels, whatever the keys say

    def _mismatch(self, recipe, size) -> str:
        model = "x".join(str(d) if d else "?" for d in self.size)
        return (f"the model's recipe ({recipe.describe()}) makes {size[0]}x{size[1]} inputs and "
                f"the model takes {model}; compile it with --dynamic H,W to run at other sizes")

    def load(self, image: str | Path, data: bytes | None = None) -> np.ndarray:
        """One image file (or its bytes, `data`, with `image` naming it) as the model's input
        [C, H, W]; an unreadable image or one of the wrong size is a DataError naming it."""
        from ..runtime.images import load_image

        x = load_image(image, self.recipe, self.exact, data)
        if any(m is not None and m != n for m, n in zip(self.size, x.shape[1:])):
            raise DataError(f"{image}: " + self._mismatch(self.recipe, x.shape[1:]))
        return x

    def load_all(self, images) -> np.ndarray:
        """[N, C, H, W] of image files that come out the same size."""
        arrays = [self.load(p) for p in images]
        if len({a.shape for a in arrays}) > 1:
            raise DataError("these images come out at different sizes; run them one at a time",
                            received=", ".join(f"{p}: {list(a.shape[1:])}"
                                               for p, a in zip(images, arrays)))
        return np.stack(arrays)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The first output for a batch of prepared inputs [N, C, H, W]."""
        return self.run(x)[0]

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """Every output for a batch of prepared inputs."""
        if self.fixed_batch and len(x) != self.fixed_batch:
            return self._run_fixed(x)
        try:
            return self.session.run(None, {self.input_name: x})
        except Exception as exc:  # onnxruntime's own exception types
            raise RunError(f"the model fails on these images: {str(exc).splitlines()[0]}") from None

    def _run_fixed(self, x: np.ndarray) -> list[np.ndarray]:
        """A model compiled for a fixed batch B: runs of B, the last one padded by repeating
        its last image, the padding cut off."""
        b = self.fixed_batch
        runs = [self.run(_pad(x[i:i + b], b)) for i in range(0, len(x), b)]
        return [np.concatenate(parts)[:len(x)] for parts in zip(*runs)]

    def predict(self, arrays) -> list[np.ndarray]:
        """The first output for each prepared input [C, H, W] (sizes may differ: one run per
        size), in order."""
        results: list = [None] * len(arrays)
        for shape in dict.fromkeys(a.shape for a in arrays):
            index = [i for i, a in enumerate(arrays) if a.shape == shape]
            for i, y in zip(index, self(np.stack([arrays[i] for i in index]))):
                results[i] = y
        return results

    def top(self, y: np.ndarray, k: int = 5) -> dict:
        """One image's output as its top k classes: {"measure", "top": [{label, index, score}]}."""
        return top_classes(y, self._finish, self.measure, self.labels, k)


def class_count(model) -> int | None:
    """The classes of the first output [N, C, ...] when its C is a number."""
    dims = model.graph.output[0].type.tensor_type.shape.dim
    return dims[1].dim_value or None if len(dims) >= 2 else None


def _model_proto(model):
    import onnx

    from ..runtime import load_model

    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model))
    return load_model(model)


def _pad(x: np.ndarray, n: int) -> np.ndarray:
    return x if len(x) == n else np.concatenate([x, np.repeat(x[-1:], n - len(x), axis=0)])


def _scoring(model, output: str):
    """What the first output holds (probability, score or logits) and how to make scores of
    one image's [C] values: a model that ends in softmax is not given another one."""
    producers = {o: n for n in model.graph.node for o in n.output}
    node = producers.get(output)
    while node is not None and node.op_type in PASS_THROUGH:
        node = producers.get(node.input[0])
    op = node.op_type if node is not None else ""
    if op in SCORED:
        return SCORED[op], lambda v: v
    if op == "LogSoftmax":
        return "probability", np.exp
    return "probability", softmax


def softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


def top_classes(y: np.ndarray, finish, kind: str, labels, k: int) -> dict:
    """The top-k classes of one image's output: by score for [C] (or [C, 1, 1]), by the share
    of pixels each class wins for a class map [C, H, W]."""
    y = np.asarray(y, np.float64)
    if y.ndim >= 2 and np.prod(y.shape[1:]) == 1:
        y = y.reshape(-1)
    if y.ndim == 1:
        scores = finish(y)
    elif y.ndim >= 2:
        winners = y.reshape(y.shape[0], -1).argmax(axis=0)
        scores, kind = np.bincount(winners, minlength=y.shape[0]) / winners.size, "pixel share"
    else:
        raise RunError("predict reads class scores [N, C] or class maps [N, C, H, W]",
                       received="an output of shape [N]")
    order = np.argsort(-scores, kind="stable")[:k]
    if kind == "pixel share":
        order = [i for i in order if scores[i] > 0]
    return {"measure": kind, "top": [{"label": _label(labels, int(i)), "index": int(i),
                                      "score": float(scores[i])} for i in order]}


def _label(labels, index: int) -> str:
    return labels[index] if labels is not None and index < len(labels) else str(index)
