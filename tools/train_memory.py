"""Peak memory of a training step: graphcnn's step in onnxruntime beside the same network in
PyTorch eager, each measured in a fresh process, and `graphcnn summary --training`'s prediction.

    python tools/train_memory.py [--cases a,b] [--repeat R] [--steps N] [--threads T]
                                 [--optimizer sgd|adam] [--provider cpu|cuda]
    python tools/train_memory.py --options [--cases a,b]    # onnxruntime session options

Cases (as tools/bench_train.py): small_resnet (its RESNET spec, 3x32x32, batch 64), mnist1d_cnn
(specs/mnist1d_cnn.yaml, batch 100) and resnet18_64 (specs/resnet18.yaml at 3x64x64 with 10
classes, batch 64; PyTorch: torchvision's resnet18(num_classes=10)); SGD with momentum 0.9 (or
Adam), one step = forward, cross-entropy, backward, update, loss read back.

How a peak is measured on the CPU: the resident memory the step adds to its process. Each
measurement is a child process (this file with --child) that
1. imports its library and makes the batch (both sides: bench_train.random_batch's arrays);
2. trains a tiny network two steps with the same library, so that library code is paged in and
   its global state (thread pools, onnxruntime's environment, oneDNN's caches) exists;
3. reads VmRSS and RssFile from /proc/self/status and resets the peak VmHWM (writing 5 to
   /proc/self/clear_refs);
4. builds the step (graphcnn: the training-step model and the StepRunner that `graphcnn train`
   runs it with, parameters initialised; PyTorch: the module and its optimizer), then resets
   the peak again: what building needed only meanwhile (onnxruntime's NCHWc probe sessions,
   serialising the model) is not the step's; what it keeps is;
5. runs the steps (default 4: onnxruntime's first run traces its memory pattern, later runs
   allocate that block);
6. peak = VmHWM - VmRSS before building - (RssFile after - RssFile before): the growth of
   resident memory, less library code paged in after the baseline. Where the kernel refuses
   clear_refs, VmHWM is the process's whole-life peak (reported as "hwm_reset": false).
On CUDA: onnxruntime's Python API has no arena statistics, so the child logs at INFO severity
and sums what its arenas named Cuda took from the device ("Extended allocation by N bytes",
arenas never give memory back by default) and the initializers reserved there; PyTorch:
torch.cuda.max_memory_reserved() after empty_cache() and reset_peak_memory_stats() at the
baseline (its caching allocator's device memory: the arena's counterpart; max_memory_allocated
is reported beside it). The host's resident growth is reported too.

API (tools/bench_train.py calls these): graphcnn_peak(spec, batch, optimizer, threads) and
torch_peak(model, x, y, optimizer, threads) -> bytes; measure_graphcnn / measure_torch return
the details (build bytes, ms per step); predicted(spec, batch, optimizer) is the summary's
TrainingMemory (.peak).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing graphcnn
sys.path.insert(0, str(ROOT / "tools"))
MARK = "@@train_memory "
STEPS = 4
MIB = 1 << 20
RESNET18_SETS = ["inputs.image=[3,64,64]", "nodes.fc.features=10"]
TINY = """\
name: tiny
inputs: {image: [3, 8, 8]}
nodes:
  - {id: conv, op: conv2d, channels: 8, kernel: 3, padding: 1}
  - {op: batchnorm2d}
  - {op: relu}
  - {op: maxpool2d, kernel: 2}
  - {op: global_avgpool}
  - {id: logits, op: linear, features: 10}
"""
# onnxruntime session settings that --options compares (the child applies them, see variant())
OPTIONS = {
    "default (graphcnn train's session)": {},
    "memory pattern on (onnxruntime's default)": {"mem_pattern": True},
    "memory pattern off": {"mem_pattern": False},
    "CPU arena off": {"cpu_arena": False},
    "memory pattern and CPU arena off": {"mem_pattern": False, "cpu_arena": False},
    "arena kSameAsRequested (shared env arena)": {"same_as_requested": True},
    "memory pattern off, arena kSameAsRequested": {"mem_pattern": False,
                                                   "same_as_requested": True},
    "arena shrunk after the first run": {"shrink": "first"},
}


# ---- the API ---------------------------------------------------------------------------------

def graphcnn_peak(spec, batch: int, optimizer: str = "sgd", threads: int | None = None,
                  **kwargs) -> int:
    """Bytes: the peak of graphcnn's training steps (see the module docstring). `spec`: a
    CheckedGraph, a spec file's path or a spec's text; kwargs: measure_graphcnn's."""
    return measure_graphcnn(spec, batch, optimizer, threads, **kwargs)["peak"]


def torch_peak(model, x, y, optimizer: str = "sgd", threads: int | None = None,
               **kwargs) -> int:
    """Bytes: the peak of PyTorch's training steps on (x, y). `model`: 'small_resnet',
    'mnist1d_cnn' (bench_train.torch_models()), 'resnet18_64' (torchvision), a picklable
    callable that returns the module, or a picklable module; the child makes it after its
    baseline, so its parameters count, as graphcnn's do."""
    return measure_torch(model, x, y, optimizer, threads, **kwargs)["peak"]


def measure_graphcnn(spec, batch: int, optimizer: str = "sgd", threads: int | None = None, *,
                     overrides=(), provider: str = "cpu", steps: int = STEPS,
                     session: dict | None = None, prelude=()) -> dict:
    """{"peak", "build", "ms", ...}: `session` one of OPTIONS' settings; `prelude` Python files
    the child runs first (to measure a change to graphcnn before making it)."""
    source = spec_source(spec, overrides)
    return child_result({"side": "graphcnn", "spec": source, "batch": batch,
                         "optimizer": optimizer, "threads": threads, "provider": provider,
                         "steps": steps, "session": session or {}, "prelude": list(prelude)})


def measure_torch(model, x, y, optimizer: str = "sgd", threads: int | None = None, *,
                  provider: str = "cpu", steps: int = STEPS) -> dict:
    """{"peak", "build", "ms", ...} of PyTorch's steps (torch_peak says what `model` is)."""
    if hasattr(model, "parameters"):  # a module: unpickled in the child after its baseline
        try:
            model = ("pickled", pickle.dumps(model))
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            raise TypeError("torch_peak takes a model name ('small_resnet', 'mnist1d_cnn', "
                            "'resnet18_64') or a picklable function that builds the module; "
                            f"this module does not pickle ({exc})") from None
    return child_result({"side": "torch", "model": model, "x": x, "y": y,
                         "optimizer": optimizer, "threads": threads, "provider": provider,
                         "steps": steps})


def predicted(spec, batch: int, optimizer: str = "sgd", overrides=()):
    """graphcnn/train/memory.py's TrainingMemory of the benchmark's recipe (what `graphcnn
    summary --training` prints)."""
    from graphcnn.train.memory import training_memory

    checked = checked_graph(spec_source(spec, overrides))
    return training_memory(checked, batch, recipe(batch, optimizer))


def recipe(batch: int, optimizer: str):
    """tools/bench_train.py's recipe: lr 0.01, SGD with momentum 0.9 or Adam."""
    from graphcnn.train.recipe import Recipe

    return Recipe(batch=batch, optimizer=optimizer, lr=0.01,
                  momentum=0.9 if optimizer == "sgd" else 0.0)


def spec_source(spec, overrides=()) -> dict:
    """What the child rebuilds the checked graph from: a file with overrides, or a spec text."""
    if hasattr(spec, "spec") and hasattr(spec, "nodes"):  # a CheckedGraph: its spec as read,
        path = getattr(spec.spec, "_path", None)  # and its file, for the files it names
        return {"text": spec.spec.to_yaml(), "source": str(path) if path else None,
                "overrides": list(overrides)}
    if isinstance(spec, Path) or (isinstance(spec, str) and "\n" not in spec):
        return {"path": str(spec), "overrides": list(overrides)}
    return {"text": spec, "overrides": list(overrides)}


def checked_graph(source: dict):
    from graphcnn.api import check_spec, load_spec
    from graphcnn.spec import NetworkSpec

    if "path" in source:
        return check_spec(load_spec(source["path"], source["overrides"]))
    if source.get("source"):  # relative imports and labels resolve beside the file
        spec = NetworkSpec.from_yaml(source["source"], text=source["text"])
    else:
        spec = NetworkSpec.from_text(source["text"], "spec")
    return check_spec(spec, overrides=source["overrides"] or None)


def child_result(job: dict) -> dict:
    """Run `job` in a fresh interpreter; its result dict."""
    done = subprocess.run([sys.executable, __file__, "--child"], input=pickle.dumps(job),
                          capture_output=True, check=False)
    lines = [line for line in done.stdout.decode(errors="replace").splitlines()
             if line.startswith(MARK)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"train_memory child failed ({job['side']}):\n"
                           f"{done.stderr.decode(errors='replace')[-3000:]}")
    return json.loads(lines[-1][len(MARK):])


# ---- the child ---------------------------------------------------------------------------------

def child(job: dict) -> dict:
    for path in job.get("prelude", ()):
        exec(compile(Path(path).read_text(), path, "exec"), {"__name__": "prelude"})
    side = GraphcnnSide(job) if job["side"] == "graphcnn" else TorchSide(job)
    side.warm_up()
    settle()
    with side.watching():
        before = status()
        reset_peak()
        step = side.build()
        settle()
        built = status()
        hwm_reset = reset_peak()
        times = timed(step, job["steps"])
        after = status()
    result = growth(before, built, after)
    result.update(ms=times, hwm_reset=hwm_reset, **side.device_peak())
    result.setdefault("peak", result["rss_peak"])
    return result


def settle() -> None:
    gc.collect()
    trim()


def timed(step, steps: int) -> list[float]:
    """Milliseconds of each step."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(1000 * (time.perf_counter() - start))
    return times


def growth(before: dict, built: dict, after: dict) -> dict:
    """Resident bytes the steps reached and building kept, less library code (file-backed
    pages) read in after the baseline."""
    def anonymous(now: dict, key: str) -> int:
        return now[key] - before["VmRSS"] - (now["RssFile"] - before["RssFile"])

    return {"rss_peak": anonymous(after, "VmHWM"), "build": anonymous(built, "VmRSS"),
            "paged": after["RssFile"] - before["RssFile"]}


def status() -> dict[str, int]:
    """/proc/self/status's sizes, in bytes."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            found[key] = 1024 * int(value.split()[0])
    return found


def trim() -> None:
    """Give the C heap's free pages back (glibc's malloc_trim): memory a library freed stays
    resident, and a later allocation reuses it unseen, so what building the step freed
    (onnxruntime's NCHWc probe sessions, the model's serialisation) would otherwise hide part
    of the steps' growth, by chance."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to give back this way
        pass


def reset_peak() -> bool:
    """Reset VmHWM to the current resident size (Linux 4.0+); False where that is refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class GraphcnnSide:
    """graphcnn's training step as `graphcnn train` runs it (StepRunner)."""

    def __init__(self, job: dict):
        import bench_train

        self.job = job
        self.checked = checked_graph(job["spec"])
        self.x, self.y = bench_train.random_batch(self.checked, job["batch"])
        self.log = None
        variant(job["session"])

    def runner(self, checked, x, y):
        import numpy as np

        from graphcnn.train.data import Batch
        from graphcnn.train.loop import StepRunner, build_step
        from graphcnn.train.step import initial_state

        job, batch = self.job, len(x)
        rec = recipe(batch, job["optimizer"])
        step = build_step(checked, rec)
        runner = StepRunner(step, initial_state(checked, step, 0), job["provider"], job["threads"])
        shrink(runner, job["session"].get("shrink"))
        data = Batch(x, y, np.ones(batch, np.float32), batch)
        counter = iter(range(1, 10 ** 9))
        return lambda: runner.run(data, rec.lr, next(counter))

    def warm_up(self) -> None:
        import bench_train
        from graphcnn.api import check_spec
        from graphcnn.spec import NetworkSpec

        tiny = check_spec(NetworkSpec.from_text(TINY, "tiny"))
        run = self.runner(tiny, *bench_train.random_batch(tiny, 4))
        run()
        run()

    def build(self):
        return self.runner(self.checked, self.x, self.y)

    def watching(self):
        return ArenaLog(self) if self.job["provider"] == "cuda" else _Nothing()

    def device_peak(self) -> dict:
        if self.log is None:
            return {}
        return {"peak": cuda_arena_bytes(self.log), "how": "onnxruntime Cuda arenas"}


SHARED_ARENA: list = []  # the environment's CPU arena, registered once per process


def variant(settings: dict) -> None:
    """Apply OPTIONS' session settings to every session graphcnn makes in this process."""
    if not settings:
        return
    import onnxruntime as ort

    import graphcnn.runtime.sessions as sessions

    made = sessions.session_options
    if settings.get("same_as_requested") and not SHARED_ARENA:  # grows by what is asked
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                 ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))
        SHARED_ARENA.append(info)

    def options(*args, **kwargs):
        opts = made(*args, **kwargs)
        if "mem_pattern" in settings:
            opts.enable_mem_pattern = settings["mem_pattern"]
        if "cpu_arena" in settings:
            opts.enable_cpu_mem_arena = settings["cpu_arena"]
        if settings.get("same_as_requested"):
            opts.add_session_config_entry("session.use_env_allocators", "1")
        return opts

    sessions.session_options = options


def shrink(runner, when: str | None) -> None:
    """Shrink the CPU arena after the first run only (its per-tensor allocations, which the
    memory pattern's block does not reuse) or after every run."""
    if when is None:
        return
    import onnxruntime as ort

    plain, shrinking = runner.quiet, ort.RunOptions()
    shrinking.log_severity_level = plain.log_severity_level
    shrinking.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    run = runner.run

    def first_shrinks(*args):
        runner.quiet = shrinking
        try:
            return run(*args)
        finally:
            runner.quiet = plain if when == "first" else shrinking

    runner.run = first_shrinks


class TorchSide:
    """PyTorch eager: bench_train.torch_step (zero_grad, forward, loss, backward, step)."""

    def __init__(self, job: dict):
        self.job = job
        self.torch = __import__("torch")
        self.base = 0

    def warm_up(self) -> None:
        import numpy as np

        import bench_train

        nn = self.torch.nn
        tiny = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(8, 10))
        x, y = np.zeros((4, 3, 8, 8), np.float32), np.zeros(4, np.int64)
        run = bench_train.torch_step(tiny, x, y, self.job["optimizer"], self.job["threads"],
                                     self.job["provider"])
        run()
        run()
        del run, tiny
        gc.collect()
        if self.job["provider"] == "cuda":
            self.torch.cuda.synchronize()
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()
            self.base = self.torch.cuda.memory_reserved()

    def build(self):
        import bench_train

        job = self.job
        model = torch_model(job["model"])
        return bench_train.torch_step(model, job["x"], job["y"], job["optimizer"],
                                      job["threads"], job["provider"])

    def watching(self):
        return _Nothing()

    def device_peak(self) -> dict:
        if self.job["provider"] != "cuda":
            return {}
        cuda = self.torch.cuda
        return {"peak": cuda.max_memory_reserved() - self.base,
                "allocated_peak": cuda.max_memory_allocated(), "how": "torch max_memory_reserved"}


def torch_model(model):
    """The module a name, a builder or a pickled module stands for."""
    if isinstance(model, tuple) and model[0] == "pickled":
        return pickle.loads(model[1])
    if callable(model) and not isinstance(model, str):
        return model()
    if model == "resnet18_64":
        from torchvision_check import import_torchvision

        return import_torchvision().models.resnet18(num_classes=10)
    import bench_train

    return bench_train.fresh(bench_train.torch_models()[model])


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class ArenaLog:
    """onnxruntime's INFO log (its arenas' growth) into a file while the step is built and
    run; the side's .log holds it afterwards."""

    def __init__(self, side):
        self.side = side

    def __enter__(self):
        import onnxruntime as ort

        sys.stderr.flush()
        self.file = tempfile.TemporaryFile(mode="w+")
        self.saved = os.dup(2)
        os.dup2(self.file.fileno(), 2)
        ort.set_default_logger_severity(1)
        return self

    def __exit__(self, *exc):
        import onnxruntime as ort

        ort.set_default_logger_severity(2)  # onnxruntime's default: warnings
        os.dup2(self.saved, 2)
        self.file.seek(0)
        self.side.log = self.file.read()
        return False


ARENA_LINE = re.compile(r"Extending BFCArena for (\w+)\.|Extended allocation by (\d+) bytes|"
                        r"Reserving memory in BFCArena for (\w+) size: (\d+)")


def cuda_arena_bytes(log: str) -> int:
    """Device bytes the arenas named Cuda took (CudaPinned is host memory)."""
    total, arena = 0, None
    for match in ARENA_LINE.finditer(log):
        extending, extended, reserving, reserved = match.groups()
        if extending:
            arena = extending
        elif extended and arena == "Cuda":
            total += int(extended)
        elif reserving == "Cuda":
            total += int(reserved)
    return total


# ---- the table -------------------------------------------------------------------------------

def cases(names: list[str] | None = None) -> dict:
    """name -> (spec source for measure_graphcnn, overrides, batch, torch model name)."""
    import bench_train

    found = {"small_resnet": (bench_train.RESNET, (), 64, "small_resnet"),
             "mnist1d_cnn": (ROOT / "specs" / "mnist1d_cnn.yaml", (), 100, "mnist1d_cnn"),
             "resnet18_64": (ROOT / "specs" / "resnet18.yaml", RESNET18_SETS, 64, "resnet18_64")}
    return {k: v for k, v in found.items() if not names or k in names}


def mib(size: float) -> str:
    return f"{size / MIB:,.1f}"


def table(names, repeat: int, steps: int, threads, optimizer: str, provider: str) -> str:
    import bench_train

    rows = ["| network | batch | predicted (summary --training) | graphcnn measured | PyTorch "
            "measured | graphcnn / PyTorch | predicted / graphcnn measured |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name, (spec, sets, batch, model) in cases(names).items():
        guess = predicted(spec, batch, optimizer, sets).peak
        x, y = bench_train.random_batch(checked_graph(spec_source(spec, sets)), batch)
        ours, theirs = [], []
        for _ in range(repeat):
            ours.append(graphcnn_peak(spec, batch, optimizer, threads, overrides=sets,
                                      provider=provider, steps=steps))
            try:
                theirs.append(torch_peak(model, x, y, optimizer, threads, provider=provider,
                                         steps=steps))
            except RuntimeError as exc:  # torch missing or failing: the column says so
                print(f"{name}: PyTorch left out: {str(exc).splitlines()[-1]}", file=sys.stderr)
        rows.append(f"| {name} | {batch} | {mib(guess)} MiB | {', '.join(map(mib, ours))} MiB | "
                    + (f"{', '.join(map(mib, theirs))} MiB | " + ", ".join(
                        f"{a / b:.2f}" for a, b in zip(ours, theirs)) if theirs else "- | -")
                    + " | " + ", ".join(f"{guess / a:.2f}" for a in ours) + " |")
        print(rows[-1], file=sys.stderr, flush=True)
    return "\n".join(rows)


def options_table(names, steps: int, threads, optimizer: str) -> str:
    """Each OPTIONS setting: its peak (a child each) and its ms per step, all settings' steps
    alternating in one child (bench_train.alternated), as ratios to the default."""
    rows = ["| network | onnxruntime session | peak | peak / default | ms/step | time / "
            "default |", "|---|---|---:|---:|---:|---:|"]
    for name, (spec, sets, batch, _) in cases(names).items():
        peaks = [graphcnn_peak(spec, batch, optimizer, threads, overrides=sets, steps=steps,
                               session=settings) for settings in OPTIONS.values()]
        times = child_result({"side": "times", "spec": spec_source(spec, sets), "batch": batch,
                              "optimizer": optimizer, "threads": threads})["ms"]
        for label, peak, ms in zip(OPTIONS, peaks, times):
            rows.append(f"| {name} | {label} | {mib(peak)} MiB | {peak / peaks[0]:.2f} | "
                        f"{ms:.1f} | {ms / times[0]:.2f} |")
            print(rows[-1], file=sys.stderr, flush=True)
    return "\n".join(rows)


def alternated_times(job: dict) -> dict:
    """The child of options_table's timing: one StepRunner per OPTIONS setting."""
    import bench_train

    runs = []
    for settings in OPTIONS.values():
        import graphcnn.runtime.sessions as sessions

        plain = sessions.session_options
        side = GraphcnnSide({**job, "provider": "cpu", "session": settings, "steps": 0})
        runs.append(side.build())
        sessions.session_options = plain
    steps = max(2, 200 // job["batch"])
    return {"ms": bench_train.alternated(runs, steps, rounds=5)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=None, help="comma-separated: small_resnet, "
                        "mnist1d_cnn, resnet18_64 (default: all)")
    parser.add_argument("--repeat", type=int, default=2, help="measurements of each side")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    parser.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--options", action="store_true", help="compare onnxruntime session "
                        "settings for graphcnn's step: peak and ms/step (CPU)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        job = pickle.loads(sys.stdin.buffer.read())
        result = alternated_times(job) if job["side"] == "times" else child(job)
        print(MARK + json.dumps(result), flush=True)
        return
    import bench_train

    names = args.cases.split(",") if args.cases else None
    print(f"CPU: {bench_train.cpu_model()}, {os.cpu_count()} cores; threads: "
          f"{args.threads or 'default'}; optimizer {args.optimizer}; provider {args.provider}; "
          f"{args.steps} steps per measurement", flush=True)
    if args.options:
        print(options_table(names, args.steps, args.threads, args.optimizer))
    else:
        print(table(names, args.repeat, args.steps, args.threads, args.optimizer,
                    args.provider))


if __name__ == "__main__":
    main()
