"""Milliseconds per training step: graphcnn's ONNX training step in onnxruntime next to the same
network in PyTorch eager (CPU), both with the same optimizer, in one run.

    python tools/bench_train.py [--steps N] [--threads T] [--optimizer sgd|adam] [--provider cpu|cuda]
                                [--precision fp32|fp16|bf16] [--cases a,b] [--no-compile] [--no-memory]
    python tools/bench_train.py --images [--steps N] [--rounds R] [--workers W] [--threads T]
                                [--spinning never|during-run]

Networks: the MNIST-1D CNN (specs/mnist1d_cnn.yaml, batch 100), a small ResNet on 3x32x32
(batch 64; below) and ResNet-18 at 64x64 with 10 classes (specs/resnet18.yaml against
torchvision's resnet18, batch 64; `--cases` picks). The PyTorch column is left out when torch
is not installed. On the CPU a second alternation times torch.compile (inductor) of the same
step against graphcnn's (reported, not a target; `--no-compile` skips its minutes of
compiling); `--precision fp16|bf16` times graphcnn's mixed precision against torch.autocast
(with a GradScaler for fp16). After the times, the peak memory of each network's step, graphcnn's
and PyTorch's, each measured in a fresh process (tools/train_memory.py; `--no-memory` skips). Each number is
the median over seven timed rounds after warm-up steps, the two libraries' rounds
alternating; the ratio is graphcnn's time over PyTorch's. On the CPU provider graphcnn's convs
run in onnxruntime's NCHWc layout (graphcnn/runtime/blocked.py); `GRAPHCNN_NCHWC=0` times the
plain step.

`--images`: training from a folder of JPEGs instead (issue 16): ResNet-18 (specs/resnet18.yaml
at 3x64x64, 10 classes) on 2,048 synthetic 72x72 JPEGs written to a temporary folder, random
resized crop (0.08-1) to 64x64, horizontal flip, ImageNet normalisation, batch 64, SGD with
momentum, W loader workers (default 2) on both sides. Four cases, each round the first N steps
of a fresh epoch of each (the loaders then finish the epoch untimed, so that neither is left
decoding for an abandoned one while the next case runs), the cases' order reversed every
other round: (a) graphcnn's image loader (train/images.py threads) feeding its training step,
(b) the same step fed from an in-memory array of one epoch of the same decoded and augmented
images (the .npz path), (c) PyTorch: a torchvision ImageFolder with the same transforms in a
DataLoader (worker processes, persistent) and an eager step of torchvision's resnet18, (d)
that step fed from the same array in memory; and each loader alone. Threads: onnxruntime's intra-op pool and
torch.set_num_threads both get T (default: the machine's cores), each while the other is
idle; onnxruntime's threads do not spin (`session.intra_op.allow_spinning` 0; `--spinning
during-run` times `graphcnn train`'s own setting). The loader overhead is (a)/(b) - 1 and
(c)/(d) - 1, per round; each loader alone is timed over a whole epoch.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
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


def graphcnn_step(checked, batch: int, optimizer: str, threads: int | None, provider: str,
                  precision: str = "fp32"):
    from graphcnn.train.data import Batch
    from graphcnn.train.loop import StepRunner, build_step
    from graphcnn.train.recipe import Recipe
    from graphcnn.train.step import initial_state

    recipe = Recipe(batch=batch, optimizer=optimizer, lr=0.01, momentum=0.9 * (optimizer == "sgd"),
                    precision=precision)
    step = build_step(checked, recipe, provider=provider)
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
    return {"mnist1d_cnn": cnn, "small_resnet": resnet, "resnet18_64": torchvision_resnet18}


def fresh(made):
    """A new module from torch_models()'s entry: a copy of a module, or what a builder makes."""
    return copy.deepcopy(made) if hasattr(made, "parameters") else made()


def torchvision_resnet18():
    """torchvision's ResNet-18 with 10 classes (built on demand: importing torchvision is slow)."""
    sys.path.insert(0, str(ROOT / "tools"))
    from torchvision_check import import_torchvision

    return import_torchvision().models.resnet18(num_classes=10)


def torch_step(model, x, y, optimizer: str, threads: int | None, provider: str,
               compile: bool = False, precision: str = "fp32"):
    """One eager PyTorch training step; `compile`: forward and backward through torch.compile
    (inductor; the optimizer step stays eager, as torch's own recipes do); `precision` fp16 or
    bf16: torch.autocast over forward and loss, fp16 with a GradScaler (PyTorch's AMP recipe)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    model.to(provider).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9) if optimizer == "sgd" \
        else torch.optim.Adam(model.parameters(), lr=0.01)
    xt, yt = torch.from_numpy(x).to(provider), torch.from_numpy(y).to(provider)
    loss_fn = torch.nn.CrossEntropyLoss()
    forward = torch.compile(model) if compile else model
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    scaler = torch.amp.GradScaler(provider, enabled=precision == "fp16")

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(provider, dtype=half or torch.float32, enabled=half is not None):
            loss = loss_fn(forward(xt), yt)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss.item()  # as graphcnn's loop reads the loss back (this also waits for a GPU)

    return step


# ---- training from a folder of JPEGs (--images) ----------------------------------------------

IMAGE_SETS = ["inputs.image=[3,64,64]", "nodes.fc.features=10", "preprocess.resize=72",
              "preprocess.crop=64", "~labels"]  # resnet18.yaml at 64x64 with 10 classes
IMAGE_BATCH, IMAGE_SIDE, IMAGE_CLASSES, IMAGE_COUNT = 64, 72, 10, 2048
AUGMENT = {"random_resized_crop": [0.08, 1.0], "hflip": 0.5}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # resnet18.yaml's preprocess


def write_jpegs(root: Path, count: int) -> Path:
    """`count` 72x72 JPEGs (quality 90), one folder per class: a disc of the class's colour at
    a random place and size over noise, fixed by the seed."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:IMAGE_SIDE, :IMAGE_SIDE]
    colours = rng.integers(0, 256, (IMAGE_CLASSES, 3))
    for i in range(count):
        label = i % IMAGE_CLASSES
        pixels = rng.integers(0, 128, (IMAGE_SIDE, IMAGE_SIDE, 3))
        cy, cx = rng.integers(IMAGE_SIDE // 4, 3 * IMAGE_SIDE // 4, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(IMAGE_SIDE // 8, IMAGE_SIDE // 3) ** 2
        pixels[disc] = colours[label]
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
    return root


WORKER_PIDS: list[int] = []  # the DataLoader's worker processes, whose CPU time counts too


def cpu_seconds() -> float:
    """CPU seconds used so far by this process's threads and the DataLoader's workers."""
    total = time.process_time()
    for pid in WORKER_PIDS:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            pass
    return total


def timed_epoch(batches, step, steps: int | None = None) -> tuple[float, float, int, float]:
    """(seconds, seconds spent waiting for the next batch, steps, CPU seconds) of `step` over
    the first `steps` of `batches` (all: None); the rest are read, untimed, to the end of the
    epoch. The CPU seconds include the batches the loader decoded ahead meanwhile."""
    cpu, waited, done, start, batches = cpu_seconds(), 0.0, 0, time.perf_counter(), iter(batches)
    while steps is None or done < steps:
        asked = time.perf_counter()
        batch = next(batches, None)
        waited += time.perf_counter() - asked
        if batch is None:
            break
        step(batch)
        done += 1
    took, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    for _ in batches:
        pass
    return took, waited, done, cpu


@contextmanager
def step_spinning(mode: str):
    """The training step's session with this spinning mode (runtime/sessions.py; `graphcnn
    train`'s is during-run: worker threads spin while a step runs)."""
    import graphcnn.train.loop as loop

    made = loop.session
    loop.session = lambda *args, **kwargs: made(*args, **{**kwargs, "spinning": mode})
    try:
        yield
    finally:
        loop.session = made


def graphcnn_image_cases(folder: Path, out: Path, steps: int, workers: int, threads: int,
                         spinning: str):
    """graphcnn's cases (each a function timing one epoch), the in-memory epoch (x, y) that
    PyTorch's in-memory case reuses, and the job (to close its loader)."""
    import graphcnn
    from graphcnn.train.data import Dataset
    from graphcnn.train.loop import StepRunner, build_step
    from graphcnn.train.step import initial_state

    job = graphcnn.training_job(ROOT / "specs" / "resnet18.yaml", out / "bench.onnx",
                                data=folder, overrides=IMAGE_SETS, workers=workers,
                                batch=IMAGE_BATCH, optimizer="sgd", lr=0.01, momentum=0.9,
                                augment=AUGMENT)
    step = build_step(job.checked, job.recipe)
    with step_spinning(spinning):
        runner = StepRunner(step, initial_state(job.checked, step, 0), "cpu", threads)
    rng, epochs, step_no = np.random.default_rng(0), itertools.count(1), itertools.count(1)
    first = list(job.data.batches(IMAGE_BATCH, rng, 0))  # one epoch, decoded and augmented
    memory = Dataset(np.concatenate([b.x for b in first]), np.concatenate([b.y for b in first]))
    for batch in first[:2]:  # warm-up
        runner.run(batch, 0.01, next(step_no))

    def train(batch):
        runner.run(batch, 0.01, next(step_no))

    cases = {"(a) graphcnn, JPEG folder": lambda: timed_epoch(
                 job.data.batches(IMAGE_BATCH, rng, next(epochs)), train, steps),
             "(b) graphcnn, in memory": lambda: timed_epoch(
                 memory.batches(IMAGE_BATCH, rng, next(epochs)), train, steps),
             "graphcnn loader alone (threads)": lambda: timed_epoch(
                 job.data.batches(IMAGE_BATCH, rng, next(epochs)), lambda batch: None)}
    return cases, (memory.x, memory.y), job


def torch_image_cases(folder: Path, memory, steps: int, workers: int, threads: int) -> dict:
    """PyTorch's cases: torchvision's ImageFolder, transforms and resnet18, a DataLoader."""
    import torch

    sys.path.insert(0, str(ROOT / "tools"))
    from torchvision_check import import_torchvision

    tv = import_torchvision()
    T = tv.transforms
    torch.set_num_threads(threads)
    transform = T.Compose([T.RandomResizedCrop(64, scale=(0.08, 1.0)), T.RandomHorizontalFlip(),
                           T.ToTensor(), T.Normalize(MEAN, STD)])
    loader = torch.utils.data.DataLoader(
        tv.datasets.ImageFolder(str(folder), transform), batch_size=IMAGE_BATCH, shuffle=True,
        num_workers=workers, persistent_workers=workers > 0)
    model = tv.models.resnet18(num_classes=IMAGE_CLASSES).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = torch.from_numpy(memory[0]), torch.from_numpy(memory[1])

    def train(batch):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(batch[0]), batch[1])
        loss.backward()
        opt.step()
        return loss.item()

    def in_memory():
        order = torch.randperm(len(x))
        for start in range(0, len(x), IMAGE_BATCH):
            yield x[order[start:start + IMAGE_BATCH]], y[order[start:start + IMAGE_BATCH]]

    timed_epoch(loader, lambda batch: None)  # warm-up: starts the workers
    WORKER_PIDS[:] = [w.pid for w in getattr(loader._iterator, "_workers", ())]
    for batch in itertools.islice(in_memory(), 2):
        train(batch)
    return {"(c) PyTorch, JPEG folder": lambda: timed_epoch(loader, train, steps),
            "(d) PyTorch, in memory": lambda: timed_epoch(in_memory(), train, steps),
            "PyTorch loader alone (processes)": lambda: timed_epoch(loader, lambda batch: None)}


def image_benchmark(steps: int, rounds: int, workers: int, threads: int,
                    spinning: str = "never") -> None:
    """Print the folder-of-images table (see the module docstring)."""
    count = max(IMAGE_COUNT, steps * IMAGE_BATCH)
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load average before "
          f"{os.getloadavg()[0]:.2f}; {count} JPEGs, {steps} timed steps an epoch, {rounds} "
          f"rounds, {workers} loader workers, {threads} threads, onnxruntime spinning "
          f"{spinning}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        folder = write_jpegs(Path(tmp) / "jpegs", count)
        cases, memory, job = graphcnn_image_cases(folder, Path(tmp), steps, workers, threads,
                                                  spinning)
        try:
            try:
                cases.update(torch_image_cases(folder, memory, steps, workers, threads))
            except ImportError as exc:
                print(f"PyTorch cases left out: {exc}")
            seconds, waits, cpus = ({name: [] for name in cases} for _ in range(3))
            done = {}
            for r in range(rounds):
                for name in (list(cases) if r % 2 == 0 else list(cases)[::-1]):
                    took, waited, done[name], cpu = cases[name]()
                    seconds[name].append(took)
                    waits[name].append(waited)
                    cpus[name].append(cpu)
                print(f"round {r + 1}: " + ", ".join(f"{n.split()[0]} {s[-1]:.1f} s"
                                                     for n, s in seconds.items()), flush=True)
        finally:
            job.data.close()
    print_image_table(seconds, waits, cpus, done)
    print(f"load average after {os.getloadavg()[0]:.2f}")


def print_image_table(seconds: dict, waits: dict, cpus: dict, steps: dict) -> None:
    """Medians over the rounds; the ratios per round (comparable: the same steps each). CPU
    seconds per step (per batch for a loader alone) are shown where they belong to the
    steps timed: not for the folder cases, whose loaders decode batches ahead."""
    print("\n| case | images/s | ms/step | waiting for the loader | CPU s/step |")
    print("|---|---|---|---|---|")
    per_step = {name: statistics.median(cpus[name]) / steps[name] for name in cpus}
    for name, times in seconds.items():
        mid = statistics.median(times)
        wait = statistics.median(w / t for w, t in zip(waits[name], times))
        cpu = "-" if "folder" in name else f"{per_step[name]:.2f}"
        print(f"| {name} | {steps[name] * IMAGE_BATCH / mid:.0f} | "
              f"{1000 * mid / steps[name]:.0f} | {wait:.0%} | {cpu} |")

    def ratios(top: str, bottom: str, minus: float = 0.0) -> str:
        tops = next((v for k, v in seconds.items() if k.startswith(top)), None)
        bottoms = next((v for k, v in seconds.items() if k.startswith(bottom)), None)
        if tops is None or bottoms is None:
            return "-"
        each = [a / b - minus for a, b in zip(tops, bottoms)]
        return f"{statistics.median(each):.2f} (rounds: {', '.join(f'{v:.2f}' for v in each)})"

    print(f"\ngraphcnn's time / PyTorch's, from the folder: {ratios('(a)', '(c)')}")
    print(f"graphcnn's loader overhead, (a)/(b) - 1: {ratios('(a)', '(b)', 1.0)}")
    print(f"PyTorch's loader overhead, (c)/(d) - 1: {ratios('(c)', '(d)', 1.0)}")
    print(f"in memory, graphcnn's step / PyTorch's: {ratios('(b)', '(d)')}")
    for side, memory in (("graphcnn", "(b)"), ("PyTorch", "(d)")):
        loader = next((k for k in per_step if k.startswith(f"{side} loader")), None)
        step = next((k for k in per_step if k.startswith(memory)), None)
        if loader and step:
            print(f"{side}'s loader CPU per batch / its step's CPU: "
                  f"{per_step[loader] / per_step[step]:.3f}")


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> None:
    from graphcnn.api import check_spec
    from graphcnn.spec import NetworkSpec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="steps per timed round "
                        "(default 50; with --images the timed steps of each epoch, default 4)")
    parser.add_argument("--images", action="store_true", help="train ResNet-18 from a folder "
                        "of JPEGs instead (CPU), against PyTorch's DataLoader")
    parser.add_argument("--rounds", type=int, default=6, help="--images: timed epochs per case")
    parser.add_argument("--workers", type=int, default=2, help="--images: loader workers, both")
    parser.add_argument("--spinning", choices=["never", "during-run"], default="never",
                        help="--images: onnxruntime's idle threads (graphcnn train: during-run)")
    parser.add_argument("--threads", type=int, default=None, help="threads for both (default: "
                        "each library's own default)")
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    parser.add_argument("--provider", choices=["cpu", "cuda"], default="cpu",
                        help="onnxruntime execution provider, and PyTorch's device")
    parser.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32",
                        help="graphcnn's --precision against PyTorch's autocast (+ GradScaler)")
    parser.add_argument("--cases", default=None, help="comma-separated: mnist1d_cnn, "
                        "small_resnet, resnet18_64 (default: all)")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="leave out the peak-memory table (tools/train_memory.py)")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="leave out the torch.compile column (its compilation takes minutes)")
    args = parser.parse_args(argv)
    if args.images:
        image_benchmark(args.steps or 4, args.rounds, args.workers,
                        args.threads or os.cpu_count(), args.spinning)
        return
    args.steps = args.steps or 50
    cases = {"mnist1d_cnn": (check_spec(ROOT / "specs" / "mnist1d_cnn.yaml"), 100),
             "small_resnet": (check_spec(NetworkSpec.from_text(RESNET, "small_resnet")), 64),
             "resnet18_64": (check_spec(ROOT / "specs" / "resnet18.yaml", overrides=IMAGE_SETS), 64)}
    cases = {k: v for k, v in cases.items() if not args.cases or k in args.cases.split(",")}
    try:
        models = torch_models()
    except ImportError:
        models = None
    compiled = args.compile and models is not None and args.provider == "cpu"
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; threads: {args.threads or 'default'}; "
          f"optimizer {args.optimizer}; provider {args.provider}; precision {args.precision}",
          flush=True)
    print("| network | batch | graphcnn + onnxruntime (ms/step) | PyTorch eager (ms/step) | ratio |"
          + (" torch.compile (ms/step) | ratio to compiled |" if compiled else ""))
    print("|---|---|---|---|---|" + ("---|---|" if compiled else ""))
    for name, (checked, batch) in cases.items():
        steps = args.steps if name == "mnist1d_cnn" else max(5, args.steps // 5)
        fns = [graphcnn_step(checked, batch, args.optimizer, args.threads, args.provider,
                             args.precision)]
        if models is not None:
            x, y = random_batch(checked, batch)
            fns += [torch_step(fresh(models[name]), x, y, args.optimizer, args.threads,
                               args.provider, precision=args.precision)]
        ours, *theirs = alternated(fns, steps)
        cells = f"{theirs[0]:.2f} | {ours / theirs[0]:.2f}" if theirs else "not installed | -"
        if compiled:  # a second alternation: inductor's kernels bring their own OpenMP threads
            fns[1:] = [torch_step(fresh(models[name]), x, y, args.optimizer, args.threads,
                                  args.provider, compile=True)]
            again, theirs = alternated(fns, steps)
            cells += f" | {theirs:.2f} | {again / theirs:.2f}"
        print(f"| {name} | {batch} | {ours:.2f} | {cells} |", flush=True)
    if args.memory and args.precision == "fp32":
        import train_memory  # a sibling script: tools/ is the script's own folder

        print(f"\nPeak memory of a training step ({train_memory.STEPS} steps, each side in a "
              "fresh process; tools/train_memory.py):\n", flush=True)
        print(train_memory.table(list(cases), 1, train_memory.STEPS, args.threads,
                                 args.optimizer, args.provider))

if __name__ == "__main__":
    main()
