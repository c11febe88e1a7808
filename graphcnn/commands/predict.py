"""`graphcnn predict`: images in, the top classes out, fed as the model's own metadata says
(the spec's `preprocess:` and `labels:`, which every compiled model carries)."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import DataError, RunError
from .args import spec_positional, weights_args, weights_options
from .output import out, print_json
from .registry import command, configure

SCORED = {"Softmax": "probability", "Sigmoid": "score"}  # outputs that are scores already
PASS_THROUGH = {"Cast", "Identity", "Flatten", "Reshape", "Squeeze"}  # look past these


@command("predict", "classify images with a model (or a spec) by the preprocessing it carries")
def cmd_predict(args) -> int:
    from ..deploy.preprocess import read_labels, read_recipe
    from ..runtime import session

    if args.top < 1 or args.batch < 1:
        raise RunError("--top and --batch take positive numbers",
                       received=f"--top {args.top} --batch {args.batch}")
    for path in args.images:  # before a spec is compiled: a typo should fail at once
        if not Path(path).is_file():
            raise DataError(f"no such image: {path}")
    model = _model(args)
    sess = session(model, args.provider)
    feed = Feed(sess, read_recipe(model))
    labels = read_labels(model)
    kind, finish = _scoring(model, sess.get_outputs()[0].name)
    rows, step = [], feed.batch(args.batch)
    for start in range(0, len(args.images), step):
        paths = args.images[start:start + step]
        for path, y in zip(paths, feed.run(paths)):
            rows.append({"path": path, **_top(y, finish, kind, labels, args.top)})
    if args.json:
        print_json(rows)
    else:
        out(_table(rows))
    return 0


@configure(cmd_predict)
def _predict_args(p):
    spec_positional(p, "model", "a .onnx model compiled by graphcnn, or a spec .yaml")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (anything Pillow reads)")
    weights_args(p)
    p.add_argument("--top", type=int, default=5, help="how many classes per image (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON: [{path, top: [...]}]")
    p.add_argument("--batch", type=int, default=8, help="images per run (default 8)")
    p.add_argument("--provider", default="cpu", help="cpu, cuda, or a full provider name")


def warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


def _model(args):
    """The .onnx, or the spec compiled in memory; with --weights, a checkpoint's weights."""
    from ..api import model_with_weights

    is_spec = args.model.endswith((".yaml", ".yml"))
    if is_spec and not args.weights:
        warn(f"no --weights: {args.model} runs with random weights; its predictions mean nothing")
    model, notes = model_with_weights(args.model, args.weights, **weights_options(args))
    for note in notes:  # stderr: stdout holds only the predictions (--json parses)
        print(note, file=sys.stderr)
    return model


class Feed:
    """The model's image input: its size and type, and the recipe that fills it."""

    def __init__(self, sess, recipe):
        from ..runtime import dynamic_sizes

        inputs = sess.get_inputs()
        shape = inputs[0].shape
        if len(inputs) != 1 or len(shape) != 4:
            raise RunError("predict feeds models with one image input [N, C, H, W]",
                           received=", ".join(f"{i.name} {i.shape}" for i in inputs))
        self.sess, self.name = sess, inputs[0].name
        dynamic = dynamic_sizes(sess)
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.size = tuple(d if isinstance(d, int) else None for d in shape[2:])
        fallback = tuple(d if isinstance(d, int) else dynamic.get(d) for d in shape[2:])
        self.recipe = self._recipe(recipe, shape[1], fallback, inputs[0].type == "tensor(uint8)")

    def _recipe(self, recipe, channels, fallback, uint8: bool):
        from ..runtime.images import Recipe

        self.exact = None  # without a recipe: resized to exactly the model's size
        if recipe is None:
            recipe = Recipe(channels="L" if channels == 1 else "RGB")
            self.exact = fallback if None not in fallback else None
            warn("the model carries no preprocessing recipe: images are "
                 + (f"resized to {self.exact[0]}x{self.exact[1]}" if self.exact else "taken at their size")
                 + ", pixels scaled to 0..1, no mean or std")
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

    def batch(self, wanted: int) -> int:
        return self.fixed_batch or wanted

    def run(self, paths) -> list[np.ndarray]:
        """The first output for each image (a [C, ...] array), in order."""
        from ..runtime.images import load_image

        arrays = [load_image(p, self.recipe, self.exact) for p in paths]
        for path, a in zip(paths, arrays):
            if any(m is not None and m != n for m, n in zip(self.size, a.shape[1:])):
                raise RunError(f"{path}: " + self._mismatch(self.recipe, a.shape[1:]))
        results: list = [None] * len(arrays)
        for shape in dict.fromkeys(a.shape for a in arrays):  # one run per size, in order
            index = [i for i, a in enumerate(arrays) if a.shape == shape]
            for i, y in zip(index, self._run([arrays[i] for i in index])):
                results[i] = y
        return results

    def _run(self, arrays) -> np.ndarray:
        x = np.stack(arrays)
        if self.fixed_batch and len(x) < self.fixed_batch:  # pad a fixed batch by repeating
            x = np.concatenate([x, np.repeat(x[-1:], self.fixed_batch - len(x), axis=0)])
        try:
            y = self.sess.run(None, {self.name: x})[0]
        except Exception as exc:  # onnxruntime's own exception types
            raise RunError(f"the model fails on these images: {str(exc).splitlines()[0]}") from None
        return y[:len(arrays)]


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
    return "probability", _softmax


def _softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


def _top(y: np.ndarray, finish, kind: str, labels, k: int) -> dict:
    """The top-k classes of one image's output: by score for [C] (or [C, 1, 1]), by the share
    of pixels each class wins for a class map [C, H, W]."""
    y = np.asarray(y, np.float64)
    if y.ndim >= 2 and np.prod(y.shape[1:]) == 1:
        y = y.reshape(-1)
    if y.ndim == 1:
        scores, kind = finish(y), kind
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


def _table(rows) -> str:
    from rich.table import Table

    from ..summary import rich_text

    table = Table(box=None, header_style="bold", pad_edge=False)
    for name, justify in (("image", "left"), ("rank", "right"), ("label", "left"),
                          ("index", "right"), ("score", "right")):
        table.add_column(name, justify=justify)
    for row in rows:
        for rank, item in enumerate(row["top"], 1):
            table.add_row(row["path"] if rank == 1 else "", str(rank), item["label"],
                          str(item["index"]), f"{item['score']:.4f}")
    measures = sorted({row["measure"] for row in rows})
    lines = [line.rstrip() for line in rich_text(table, 120).splitlines()]
    return "\n".join(lines + [f"score: {', '.join(measures)}"])
