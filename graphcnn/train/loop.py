"""The training loop: one onnxruntime session of the training-step model, run batch after batch.

The carried tensors (parameters, batch-norm statistics, optimizer moments) stay in OrtValues on
the session's device between steps, bound through an IOBinding: each step writes a tensor's
new value over the old one where the step model makes that safe (train/in_place.py: the
optimizers' updates), else reads one buffer and writes a second, and the two swap. They are
read back to numpy only at the end of an epoch, for the evaluation and the checkpoint.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import RunError
from ..runtime import session
from ..runtime.sessions import CPU_STEP_MEMORY_PATTERN, resolve_provider
from ..runtime.failures import quiet_run, run_failure
from . import loss_scale
from .best import BestKeeper
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .data import Batch, Dataset, steps_per_epoch
from .evaluate import Evaluator, Scores
from .graphs import FixedFeeds, graph_session
from .in_place import executed_in_place, optimized_graph_file
from .recipe import Recipe
from .schedule import lr_at

ORT_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(double)": np.float64,
             "tensor(int32)": np.int32}


def build_step(checked, recipe: Recipe, opset: int | None = None, provider: str = "cpu"):
    """The training-step model for this recipe (imports the autodiff only when training);
    `provider`: the one whose half kernels a precision: fp16/bf16 step uses."""
    from .step import build_training_step

    return build_training_step(checked, batch=recipe.batch, loss=recipe.loss,
                               optimizer=recipe.optimizer, momentum=recipe.momentum,
                               weight_decay=recipe.weight_decay, betas=recipe.betas,
                               eps=recipe.eps, ignore_index=recipe.ignore_index, opset=opset,
                               label_smoothing=recipe.label_smoothing, clip_norm=recipe.clip_norm,
                               no_decay_norm_bias=recipe.no_decay_norm_bias,
                               freeze=recipe.freeze, precision=recipe.precision,
                               loss_scale_window=recipe.loss_scale_window, provider=provider)


class StepRunner:
    """Runs the training step on one device; each carried tensor is updated in place where the
    step allows it (train/in_place.py), else ping-pongs between two buffers.
    On the CPU provider the session runs a copy of the step whose convs use onnxruntime's
    blocked NCHWc layout (graphcnn/runtime/blocked.py: 12-18% faster for the small ResNet);
    its worker threads spin only while a step runs (runtime/sessions.py says why)."""

    def __init__(self, step, values: dict[str, np.ndarray], provider: str = "cpu",
                 threads: int | None = None):
        import onnxruntime as ort

        self.ort, self.step = ort, step
        self.names = list(step.params) + list(step.state)
        pattern = CPU_STEP_MEMORY_PATTERN or resolve_provider(provider)[0] != "CPUExecutionProvider"

        def make(options, executed=None):
            return session(step.model, provider, threads, spinning="during-run", nchwc=True,
                           options=options, memory_pattern=pattern, optimized_to=executed)

        with optimized_graph_file() as executed:
            try:
                self.sess, captured = graph_session(lambda o: make(o, executed), provider)
            except RunError:  # raise what a session without the graph file says, if anything
                (self.sess, captured), executed = graph_session(make, provider), None
            # written over their inputs where the graph that runs still allows it
            # (train/in_place.py); the others ping-pong between two sets
            self.in_place = set() if captured or executed is None else \
                executed_in_place(executed, step.in_place)
        self.quiet = quiet_run()
        self.device = "cuda" if self.sess.get_providers()[0].startswith("CUDA") else "cpu"
        # captured CUDA graphs (train/graphs.py): inputs and outputs at fixed device addresses
        self.fixed = FixedFeeds(ort, self.sess, step, self.quiet) if captured else None
        # a copy: an OrtValue on the CPU shares the array's memory, and the caller keeps its own
        self.current = {n: self._upload(np.array(values[n])) for n in self.names}
        self.spare = {n: self._upload(np.empty_like(values[n])) for n in self.names
                      if n not in self.in_place}
        self.binding = self.sess.io_binding()
        self.parity = 0  # which of the two graphs runs next
        self.metrics = {o.name: ort.OrtValue.ortvalue_from_shape_and_type(
            [d for d in o.shape], ORT_TYPES[o.type], self.device if captured else "cpu")
            for o in self.sess.get_outputs() if o.name in ("loss", "correct", "counted", "skipped")}

    def _upload(self, array: np.ndarray):
        return self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    def run(self, batch: Batch, lr: float, step_no: int) -> tuple[float, float, float]:
        """One optimizer step; returns the batch's loss, its number of correct targets and
        the number of targets counted (the real rows, or their counted pixels)."""
        s, io, options = self.step, self.binding, self.quiet
        feeds = {s.data_input: batch.x, s.label_input: batch.y, s.mask_input: batch.mask,
                 s.lr_input: np.array(lr, dtype=np.float32),
                 s.step_input: np.array(step_no, dtype=np.int64)}
        if self.fixed is not None:
            self.fixed.write(io, feeds)
            options, self.parity = self.fixed.options[self.parity], 1 - self.parity
        else:
            for name, value in feeds.items():
                io.bind_cpu_input(name, value)
        for name in self.names:
            io.bind_ortvalue_input(name, self.current[name])
            io.bind_ortvalue_output(f"{name}.new", self.spare.get(name, self.current[name]))
        for name, value in self.metrics.items():
            io.bind_ortvalue_output(name, value)
        try:
            self.sess.run_with_iobinding(io, options)
        except Exception as exc:  # onnxruntime's: named by its ONNX node and spec node
            raise run_failure(self.sess, exc) from None
        self.current, self.spare = ({n: self.spare.get(n, v) for n, v in self.current.items()},
                                    {n: self.current[n] for n in self.spare})
        correct = self.metrics.get("correct")  # none for regression losses
        counted = self.metrics.get("counted")  # none when the targets are the real rows
        return (float(self.metrics["loss"].numpy()), float(correct.numpy()) if correct else 0.0,
                float(counted.numpy()) if counted else float(batch.real))

    def values(self) -> dict[str, np.ndarray]:
        return {n: v.numpy().copy() for n, v in self.current.items()}


@dataclass
class Progress:
    """What the loop tells its caller; every callback is optional."""

    on_start: Callable[[int, int, int], None] = lambda first_epoch, epochs, steps: None
    on_step: Callable[[dict], None] = lambda info: None
    on_epoch: Callable[[dict], None] = lambda record: None
    on_note: Callable[[str], None] = lambda line: None  # e.g. an image skipped, an early stop


@dataclass
class TrainResult:
    """The tensors to export (the last epoch's, or the best one's under `keep: best`), the
    per-epoch history, the steps taken, and the held-out scores of the exported tensors."""

    values: dict[str, np.ndarray]
    history: list[dict] = field(default_factory=list)
    step: int = 0
    scores: Scores | None = None


def train(checked, recipe: Recipe, data: Dataset, *, checkpoint: str | Path | None = None,
          resume: str | Path | Checkpoint | None = None, provider: str = "cpu",
          threads: int | None = None, progress: Progress | None = None, step=None,
          init=None) -> TrainResult:
    """Train for recipe.epochs epochs (counting those a resumed checkpoint already did), or
    until `patience` epochs bring no better held-out score. `data`: a Dataset, or anything with
    its methods (train/imagedata.ImageData). `resume`: a checkpoint's path, or the checkpoint
    read (train.job reads it before the data). `init`: parameters by spec id to start from (a
    pretrained checkpoint) instead of the initialisation; parameters it lacks (a new head)
    keep their initial values."""
    progress = progress or Progress()
    step = step or build_step(checked, recipe)
    keeper = BestKeeper(recipe, checkpoint, data.has_held_out)
    rng = np.random.default_rng(recipe.seed)
    ckpt = starting_point(checked, step, recipe, rng, resume, init)
    keeper.resume(ckpt.history, carried_shapes(step))
    runner = StepRunner(step, ckpt.values, provider, threads)
    evaluate = Evaluator(checked, recipe.loss, provider, ignore_index=recipe.ignore_index)
    history, step_no, values, scores = list(ckpt.history), ckpt.step, ckpt.values, None
    if ckpt.epoch < recipe.epochs:
        progress.on_start(ckpt.epoch + 1, recipe.epochs, steps_per_epoch(len(data), recipe.batch))
    else:
        progress.on_note(f"the checkpoint has trained all {recipe.epochs} epochs: nothing to train")
    for epoch in range(ckpt.epoch + 1, recipe.epochs + 1):
        if history and keeper.stop(history):
            break
        started = time.perf_counter()
        done = run_epoch(runner, data, recipe, rng, epoch, step_no, progress, checkpoint,
                         skipped_before=skipped_steps(history))
        values, step_no = runner.values(), done.step_no
        scores = evaluate(values, data.held_out(evaluate.chunk)) if data.has_held_out else None
        record = epoch_record(epoch, done, scores, time.perf_counter() - started)
        history.append(record)
        ckpt = Checkpoint(values, epoch, step_no, rng.bit_generator.state, history,
                          recipe.model_dump())
        if checkpoint is not None:
            save_checkpoint(checkpoint, ckpt)
        keeper.update(history, values, ckpt)
        progress.on_epoch(record)
        tell(progress, data)
    if history and keeper.stop(history) and history[-1]["epoch"] < recipe.epochs:
        progress.on_note(f"stopped early: no better held-out score in {recipe.patience} epochs")
    chosen = keeper.chosen(values)
    if data.has_held_out and (chosen is not values or scores is None):  # not the last epoch's
        scores = evaluate(chosen, data.held_out(evaluate.chunk))
    return TrainResult(chosen, history, step_no, scores)


def starting_point(checked, step, recipe: Recipe, rng, resume, init) -> Checkpoint:
    """The checkpoint to resume (the shuffle's state restored into `rng`), or the initial
    tensors (with `init`'s parameters laid over them)."""
    from .step import initial_state

    if resume is not None:
        ckpt = resume if isinstance(resume, Checkpoint) else resume_checkpoint(resume, step)
        rng.bit_generator.state = ckpt.rng_state
        return ckpt
    start = initial_state(checked, step, recipe.seed)
    start.update({name: value for name, value in (init or {}).items() if name in start})
    return Checkpoint(start, 0, 0, rng.bit_generator.state)


def resume_checkpoint(path, step) -> Checkpoint:
    """The checkpoint at `path`, checked against `step`'s carried tensors. The fp16 loss scale
    is the one thing it may hold or lack: a run resumed in another precision drops it, or
    starts a fresh one (as a new GradScaler would), so a run can switch into or out of fp16."""
    ckpt = load_checkpoint(path, {name: shape for name, shape in carried_shapes(step).items()
                                  if name not in loss_scale.STATE},
                           optional=dict.fromkeys(loss_scale.STATE, loss_scale.SHAPE))
    fresh = {name: value for name, value in loss_scale.initial_values().items()
             if name in step.carried and name not in ckpt.values}
    kept = {name: value for name, value in ckpt.values.items() if name in step.carried}
    return replace(ckpt, values={**kept, **fresh})


def carried_shapes(step) -> dict[str, tuple[int, ...]]:
    """What a checkpoint of this step holds: every carried tensor's name and shape."""
    shapes = step.shapes()
    return {name: shapes[name] for name in step.carried}


def tell(progress: Progress, data) -> None:
    for line in data.notes():
        progress.on_note(line)


@dataclass
class EpochTotals:
    loss: float
    accuracy: float
    step_no: int
    waited: float  # seconds the step waited for the loader
    lr: float  # the learning rate of the epoch's last step
    skipped: int | None = None  # fp16: steps an overflow skipped (None: no loss scaling)


def skipped_steps(history: list[dict]) -> int:
    """The fp16 steps that earlier epochs skipped (their records count them)."""
    return sum(int(record.get("skipped_steps", 0)) for record in history)


def run_epoch(runner: StepRunner, data, recipe: Recipe, rng, epoch: int, step_no: int,
              progress: Progress, checkpoint, skipped_before: int = 0) -> EpochTotals:
    """One pass over the data. The step's `step` input is the optimizer's step: the steps it
    applied, this one included. An fp16 step that an overflow skipped did not count, as
    GradScaler skips optimizer.step() (Adam's bias correction would otherwise run ahead by
    every skip of the loss scale's first steps); the learning-rate schedule counts every step,
    as a scheduler stepped each iteration does."""
    total_loss = total_correct = counted = seen = waited = 0.0
    skipped = 0 if "skipped" in runner.metrics else None
    lr = recipe.lr
    started = time.perf_counter()
    per_epoch = steps_per_epoch(len(data), recipe.batch)
    batches = data.batches(recipe.batch, rng, epoch)
    while True:
        asked = time.perf_counter()
        batch = next(batches, None)
        waited += time.perf_counter() - asked
        if batch is None:
            break
        step_no += 1
        lr = lr_at(recipe.schedule, recipe.lr, step_no, per_epoch, recipe.epochs)
        loss, correct, targets = runner.run(batch, lr, step_no - skipped_before - (skipped or 0))
        jumped = overflowed(runner)
        skipped = None if skipped is None else skipped + jumped
        if not np.isfinite(loss) and not jumped:  # fp16 skips an overflow and rescales
            raise diverged(loss, epoch, step_no, checkpoint)
        if np.isfinite(loss):
            total_loss += loss * targets  # the epoch's loss: a mean over all its targets
            total_correct += correct
            counted += targets
        seen += batch.real
        tell(progress, data)
        progress.on_step({"epoch": epoch, "step": step_no, "loss": loss,
                          "accuracy": correct / max(targets, 1.0), "waited": waited,
                          "samples_per_s": seen / max(time.perf_counter() - started, 1e-9)})
    counted = max(counted, 1.0)
    return EpochTotals(total_loss / counted, total_correct / counted, step_no, waited, lr,
                       skipped)


def overflowed(runner: StepRunner) -> int:
    """1 when the fp16 step just run was skipped (an inf or NaN gradient), else 0."""
    flag = runner.metrics.get("skipped")
    return int(flag.numpy()) if flag is not None else 0


def diverged(loss: float, epoch: int, step_no: int, checkpoint) -> RunError:
    kept = f"; the last good checkpoint {checkpoint} is kept" if checkpoint and \
        Path(checkpoint).exists() else ""
    return RunError(f"training diverged: the loss is {loss} at step {step_no} (epoch {epoch})"
                    + kept, hint="try a smaller --lr, or gradient-friendlier data scaling")


def epoch_record(epoch: int, done: EpochTotals, scores: Scores | None, seconds: float) -> dict:
    record = {"epoch": epoch, "step": done.step_no, "train_loss": done.loss,
              "train_accuracy": done.accuracy, **(scores.record() if scores else {})}
    record.update(lr=done.lr, seconds=seconds, loader_wait=done.waited)
    if done.skipped is not None:
        record["skipped_steps"] = done.skipped
    return record
