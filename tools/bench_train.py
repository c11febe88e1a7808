"""Milliseconds per training step: graphcnn's ONNX training step in onnxruntime next to the same
network in PyTorch eager (CPU), both with the same optimizer, in one run.

    python tools/bench_train.py [--steps N] [--threads T] [--optimizer sgd|adam] [--provider cpu|cuda]

Networks: the MNIST-1D CNN (specs/mnist1d_cnn.yaml, batch 100) and a small ResNet on 3x32x32
(batch 64; below). The PyTorch column is left out when torch is not installed. Each number is
the median over seven timed rounds after warm-up steps, the two libraries' rounds
alternating; the ratio is graphcnn's time over PyTorch's. On the CPU provider graphcnn's convs
run in onnxruntime's NCHWc layout (graphcnn/runtime/blocked.py); `GRAPHCNN_NCHWC=0` times the
plain step.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

RESNET = """\
name: small_resnet
inputs: {image: [3, 32, 32]}
blocks:
  basic:
    params: {width: 16, stride: 1, project: false}
    nodes:
      - {id: conv1, op: conv2d, channels: width, kernel: 3, stride: stride, padding: 1, bias: false}
      - {id: bn1, op: batchnorm2d}
      - {id: relu1, op: relu}
      - {id: conv2, op: conv2d, channels: width, kernel: 3, padding: 1, bias: false}
      - {id: bn2, op: batchnorm2d}
      - {id: add, op: add, skip: x, project: project}
      - {id: relu2, op: relu}
nodes:
  - {id: stem, op: conv2d, channels: 16, kernel: 3, padding: 1, bias: false}
  - {id: stem_bn, op: batchnorm2d}
  - {id: stem_relu, op: relu}
  - {id: stage1, block: basic, repeat: 2}
  - {id: stage2, block: basic, repeat: 2, args: {width: 32}, first: {stride: 2, project: conv_bn}}
  - {id: stage3, block: basic, repeat: 2, args: {width: 64}, first: {stride: 2, project: conv_bn}}
  - {op: global_avgpool}
  - {id: logits, op: linear, features: 10}
"""


def graphcnn_step(checked, batch: int, optimizer: str, threads: int | None, provider: str):
    from graphcnn.train.data import Batch
    from graphcnn.train.loop import StepRunner, build_step
    from graphcnn.train.recipe import Recipe
    from graphcnn.train.step import initial_state

    recipe = Recipe(batch=batch, optimizer=optimizer, lr=0.01, momentum=0.9 * (optimizer == "sgd"))
    step = build_step(checked, recipe)
    runner = StepRunner(step, initial_state(checked, step, 0), provider, threads)
    x, y = random_batch(checked, batch)
    data = Batch(x, y, np.ones(batch, np.float32), batch)
    counter = iter(range(1, 10 ** 9))
    return lambda: runner.run(data, recipe.lr, next(counter))


def random_batch(checked, batch: int):
    rng = np.random.default_rng(0)
    (shape,) = checked.inputs.values()
    classes = checked.shape_of(checked.outputs[0])[-1]
    return (rng.standard_normal((batch, *shape)).astype(np.float32),
            rng.integers(0, classes, batch).astype(np.int64))


def alternated(fns: list, steps: int, rounds: int = 7) -> list[float]:
    """Median ms per step of each function, timed in alternating rounds of `steps` steps, so
    that a busy spell on this shared machine hits both sides alike."""
    for fn in fns:
        for _ in range(max(3, steps // 5)):
            fn()
    per_round = [[] for _ in fns]
    for _ in range(rounds):
        for fn, times in zip(fns, per_round):
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            times.append((time.perf_counter() - start) * 1000 / steps)
    return [statistics.median(times) for times in per_round]


def torch_models():
    """The same two networks written by hand in PyTorch (independent of graphcnn)."""
    import torch.nn as nn

    cnn = nn.Sequential(nn.Conv1d(1, 15, 3, 2), nn.ReLU(), nn.Conv1d(15, 15, 3, 2), nn.ReLU(),
                        nn.Conv1d(15, 15, 3, 2), nn.ReLU(), nn.Flatten(), nn.Linear(60, 10))

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
            self.skip = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            return (self.body(x) + self.skip(x)).relu()

    stages = [Basic(16, 16, 1), Basic(16, 16, 1), Basic(16, 32, 2), Basic(32, 32, 1),
              Basic(32, 64, 2), Basic(64, 64, 1)]
    resnet = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                           *stages, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    return {"mnist1d_cnn": cnn, "small_resnet": resnet}


def torch_step(model, x, y, optimizer: str, threads: int | None, provider: str):
    import torch

    if threads:
        torch.set_num_threads(threads)
    model.to(provider).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9) if optimizer == "sgd" \
        else torch.optim.Adam(model.parameters(), lr=0.01)
    xt, yt = torch.from_numpy(x).to(provider), torch.from_numpy(y).to(provider)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xt), yt)
        loss.backward()
        opt.step()
        return loss.item()  # as graphcnn's loop reads the loss back (this also waits for a GPU)

    return step


def main() -> None:
    from graphcnn.api import check_spec
    from graphcnn.spec import NetworkSpec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="steps per timed round")
    parser.add_argument("--threads", type=int, default=None, help="threads for both (default: "
                        "each library's own default)")
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    parser.add_argument("--provider", choices=["cpu", "cuda"], default="cpu",
                        help="onnxruntime execution provider, and PyTorch's device")
    args = parser.parse_args()
    cases = {"mnist1d_cnn": (check_spec(ROOT / "specs" / "mnist1d_cnn.yaml"), 100),
             "small_resnet": (check_spec(NetworkSpec.from_text(RESNET, "small_resnet")), 64)}
    try:
        models = torch_models()
    except ImportError:
        models = None
    print("| network | batch | graphcnn + onnxruntime (ms/step) | PyTorch eager (ms/step) | ratio |")
    print("|---|---|---|---|---|")
    for name, (checked, batch) in cases.items():
        steps = args.steps if name == "mnist1d_cnn" else max(5, args.steps // 5)
        fns = [graphcnn_step(checked, batch, args.optimizer, args.threads, args.provider)]
        if models is not None:
            x, y = random_batch(checked, batch)
            fns.append(torch_step(models[name], x, y, args.optimizer, args.threads, args.provider))
        ours, *theirs = alternated(fns, steps)
        cells = f"{theirs[0]:.2f} | {ours / theirs[0]:.2f}" if theirs else "not installed | -"
        print(f"| {name} | {batch} | {ours:.2f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
