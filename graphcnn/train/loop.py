"""The training loop: one onnxruntime session of the training-step model, run batch after batch.

The carried tensors (parameters, batch-norm statistics, optimizer moments) stay in OrtValues on
the session's device between steps: each step reads one set and writes the other through an
IOBinding, then the two sets swap. They are read back to numpy only at the end of an epoch, for
the evaluation and the checkpoint.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import RunError
from ..spec.training import ignored_label
from ..runtime import session
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .data import Batch, Dataset, epoch_batches, steps_per_epoch
from .trained_model import evaluation_model, prediction_loss, weight_names
from .recipe import Recipe

ORT_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(double)": np.float64,
             "tensor(int32)": np.int32}


def build_step(checked, recipe: Recipe, opset: int | None = None):
    """The training-step model for this recipe (imports the autodiff only when training)."""
    from .step import build_training_step

    return build_training_step(checked, batch=recipe.batch, loss=recipe.loss,
                               optimizer=recipe.optimizer, momentum=recipe.momentum,
                               weight_decay=recipe.weight_decay, betas=recipe.betas,
                               eps=recipe.eps, ignore_index=recipe.ignore_index, opset=opset)


class StepRunner:
    """Runs the training step on one device; carried tensors ping-pong between two buffers.
    On the CPU provider the session runs a copy of the step whose convs use onnxruntime's
    blocked NCHWc layout (graphcnn/runtime/blocked.py: 12-18% faster for the small ResNet);
    its worker threads spin only while a step runs (runtime/sessions.py says why)."""

    def __init__(self, step, values: dict[str, np.ndarray], provider: str = "cpu",
                 threads: int | None = None):
        import onnxruntime as ort

        self.ort, self.step = ort, step
        self.names = list(step.params) + list(step.state)
        self.sess = session(step.model, provider, threads, spinning="during-run", nchwc=True)
        self.device = "cuda" if self.sess.get_providers()[0].startswith("CUDA") else "cpu"
        self.current = {n: self._upload(values[n]) for n in self.names}
        self.spare = {n: self._upload(np.empty_like(values[n])) for n in self.names}
        self.binding = self.sess.io_binding()
        self.metrics = {o.name: ort.OrtValue.ortvalue_from_shape_and_type(
            [d for d in o.shape], ORT_TYPES[o.type], "cpu")
            for o in self.sess.get_outputs() if o.name in ("loss", "correct", "counted")}

    def _upload(self, array: np.ndarray):
        return self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    def run(self, batch: Batch, lr: float, step_no: int) -> tuple[float, float, float]:
        """One optimizer step; returns the batch's loss, its number of correct targets and
        the number of targets counted (the real rows, or their counted pixels)."""
        s, io = self.step, self.binding
        io.bind_cpu_input(s.data_input, batch.x)
        io.bind_cpu_input(s.label_input, batch.y)
        io.bind_cpu_input(s.mask_input, batch.mask)
        io.bind_cpu_input(s.lr_input, np.array(lr, dtype=np.float32))
        io.bind_cpu_input(s.step_input, np.array(step_no, dtype=np.int64))
        for name in self.names:
            io.bind_ortvalue_input(name, self.current[name])
            io.bind_ortvalue_output(f"{name}.new", self.spare[name])
        for name, value in self.metrics.items():
            io.bind_ortvalue_output(name, value)
        self.sess.run_with_iobinding(io)
        self.current, self.spare = self.spare, self.current
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


@dataclass
class TrainResult:
    values: dict[str, np.ndarray]
    history: list[dict] = field(default_factory=list)
    step: int = 0


class Evaluator:
    """Test loss and accuracy of the current tensors, through the inference lowering."""

    def __init__(self, checked, loss: str, provider: str = "cpu", chunk: int = 1000,
                 ignore_index: int | None = None):
        self.checked, self.loss, self.chunk = checked, loss, chunk
        self.ignore = ignored_label(ignore_index, checked.shape_of(checked.outputs[0]))
        self.sess = session(evaluation_model(checked), provider, nchwc=True)
        self.names = weight_names(checked)
        self.probabilities = checked.node(checked.outputs[0]).layer.probability_output

    def __call__(self, values: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray):
        weights = {n: values[n] for n in self.names}
        (name,) = self.checked.inputs
        totals = np.zeros(3)  # summed loss, correct targets, counted targets
        for start in range(0, len(x), self.chunk):
            out = self.sess.run(None, {name: x[start:start + self.chunk], **weights})[0]
            totals += prediction_loss(out, y[start:start + self.chunk], self.loss,
                                      self.probabilities, self.ignore)
        counted = max(totals[2], 1.0)
        return float(totals[0] / counted), float(totals[1] / counted)


def train(checked, recipe: Recipe, data: Dataset, *, checkpoint: str | Path | None = None,
          resume: str | Path | None = None, provider: str = "cpu", threads: int | None = None,
          progress: Progress | None = None, step=None, init=None) -> TrainResult:
    """Train for recipe.epochs epochs (counting those a resumed checkpoint already did).
    `init`: parameters by spec id to start from (a pretrained checkpoint) instead of the
    initialisation; parameters it lacks (a new head) keep their initial values."""
    from .step import initial_state

    progress = progress or Progress()
    step = step or build_step(checked, recipe)
    names = list(step.params) + list(step.state)
    rng = np.random.default_rng(recipe.seed)
    if resume is not None:
        ckpt = load_checkpoint(resume, names)
        rng.bit_generator.state = ckpt.rng_state
    else:
        start = initial_state(checked, step, recipe.seed)
        start.update({name: value for name, value in (init or {}).items() if name in start})
        ckpt = Checkpoint(start, 0, 0, rng.bit_generator.state)
    runner = StepRunner(step, ckpt.values, provider, threads)
    evaluate = Evaluator(checked, recipe.loss, provider, ignore_index=recipe.ignore_index)
    history, step_no = list(ckpt.history), ckpt.step
    per_epoch = steps_per_epoch(len(data.x), recipe.batch)
    progress.on_start(ckpt.epoch + 1, recipe.epochs, per_epoch)
    values = ckpt.values
    for epoch in range(ckpt.epoch + 1, recipe.epochs + 1):
        started = time.perf_counter()
        train_loss, train_acc, step_no = run_epoch(runner, data, recipe, rng, epoch, step_no,
                                                   progress, checkpoint)
        values = runner.values()
        record = epoch_record(epoch, step_no, train_loss, train_acc, evaluate, values, data,
                              time.perf_counter() - started)
        history.append(record)
        if checkpoint is not None:
            save_checkpoint(checkpoint, Checkpoint(values, epoch, step_no, rng.bit_generator.state,
                                                   history, recipe.model_dump()))
        progress.on_epoch(record)
    return TrainResult(values, history, step_no)


def run_epoch(runner: StepRunner, data: Dataset, recipe: Recipe, rng, epoch: int, step_no: int,
              progress: Progress, checkpoint) -> tuple[float, float, int]:
    total_loss = total_correct = counted = seen = 0.0
    started = time.perf_counter()
    for batch in epoch_batches(data.x, data.y, recipe.batch, rng):
        step_no += 1
        loss, correct, targets = runner.run(batch, recipe.lr, step_no)
        if not np.isfinite(loss):
            raise diverged(loss, epoch, step_no, checkpoint)
        total_loss += loss * targets  # the epoch's loss: a mean over all its targets
        total_correct += correct
        counted += targets
        seen += batch.real
        progress.on_step({"epoch": epoch, "step": step_no, "loss": loss,
                          "accuracy": correct / max(targets, 1.0),
                          "samples_per_s": seen / max(time.perf_counter() - started, 1e-9)})
    counted = max(counted, 1.0)
    return total_loss / counted, total_correct / counted, step_no


def diverged(loss: float, epoch: int, step_no: int, checkpoint) -> RunError:
    kept = f"; the last good checkpoint {checkpoint} is kept" if checkpoint and \
        Path(checkpoint).exists() else ""
    return RunError(f"training diverged: the loss is {loss} at step {step_no} (epoch {epoch})"
                    + kept, hint="try a smaller --lr, or gradient-friendlier data scaling")


def epoch_record(epoch, step_no, train_loss, train_acc, evaluate, values, data, seconds) -> dict:
    record = {"epoch": epoch, "step": step_no, "train_loss": train_loss,
              "train_accuracy": train_acc}
    if data.x_test is not None:
        test_loss, test_acc = evaluate(values, data.x_test, data.y_test)
        record.update(test_loss=test_loss, test_accuracy=test_acc)
    record["seconds"] = seconds
    return record
