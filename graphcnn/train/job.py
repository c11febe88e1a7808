"""A training job from a spec, as `graphcnn train` and `graphcnn.train(...)` run it.

`prepare` settles everything before the first step (the recipe: the spec's `training:` section
with the caller's overrides; the output folder; the data, checked against the spec), so a bad
flag or data file fails before any time is spent. `fit` runs the loop, checkpointing every
epoch; `save_trained` writes the trained inference model and the metrics beside it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, RunError, SpecError
from ..fileio import check_output, note_input
from ..graph import CheckedGraph
from ..lower.save import save_model
from ..spec import NetworkSpec
from .best import best_path
from .checkpoint import Checkpoint, checkpoint_path, stored_recipe
from .data import Dataset, load_data
from .imagedata import image_data, is_image_data
from .loop import Progress, TrainResult, build_step, resume_checkpoint, train
from .metrics import confusion_paths, metrics_paths, write_confusion, write_metrics
from .recipe import Recipe, recipe_of
from .trained_model import weight_names


@dataclass(frozen=True)
class TrainingJob:
    """Everything a run needs, checked. `label` names the spec in the metrics file."""

    spec: NetworkSpec
    checked: CheckedGraph
    recipe: Recipe
    data: Dataset
    output: Path
    label: str
    step: object | None = None  # the training step, built early when resuming
    resume: Checkpoint | None = None  # the checkpoint to continue, checked against the step

    @property
    def checkpoint(self) -> Path:
        return checkpoint_path(self.output)


def prepare(spec: NetworkSpec, checked: CheckedGraph, output: str | Path, *,
            data: str | Path | None = None, spec_path: str | Path | None = None,
            label: str = "", workers: int | None = None, resume: str | Path | None = None,
            **overrides) -> TrainingJob:
    """The job of training `checked` into `output`. `data` ('mnist1d', an .npz, a folder of
    class folders or a CSV) and the recipe `overrides` (any `training:` key, e.g. epochs,
    batch, lr, val, augment; None keeps the spec's value) replace the spec's `training:` keys;
    a relative data path that is not found from the working folder is read beside
    `spec_path`. `workers`: the image loader's threads (default: up to 4). `resume`: a
    checkpoint to continue: the recipe it stored takes the place of the spec's (flags still
    override it), and its tensors are checked against this spec's step before the data."""
    one_input(checked)
    base = recipe_of(spec) if resume is None else Recipe(**stored_recipe(resume))
    recipe = base.override(data=None if data is None else str(data), **overrides)
    source = data_source(recipe.data, spec_path)  # noted as an input before outputs are checked
    output = output_path(output)
    step, start = resumed(checked, recipe, resume) if resume is not None else (None, None)
    dataset = open_data(source, checked, recipe, workers)
    return TrainingJob(spec, checked, recipe, dataset, output, label, step, start)


def one_input(checked: CheckedGraph) -> None:
    """The training data feeds one input (x of an .npz, the images of a folder)."""
    if len(checked.inputs) != 1:
        raise SpecError("graphcnn train needs a spec with one input; this one has "
                        + ", ".join(checked.inputs))


def resumed(checked: CheckedGraph, recipe: Recipe, path: str | Path):
    """(the step, the checkpoint at `path` checked against it): names, shapes and dtypes
    from the headers, the metadata against its schema, before any data is read (the fp16
    loss scale: loop.resume_checkpoint)."""
    step = build_step(checked, recipe)
    start = resume_checkpoint(path, step)
    if start.epoch > recipe.epochs:  # equal: a finished run, exported again without training
        raise RunError(f"--resume {path} has already trained {start.epoch} epochs, more than "
                       f"the {recipe.epochs} asked for", hint=f"give --epochs {start.epoch + 1} or "
                       "more to train on, or the same count to export it as it is")
    return step, start


def open_data(source: str | Path, checked: CheckedGraph, recipe: Recipe, workers: int | None):
    """Arrays in memory ('mnist1d', .npz), or images streamed from a folder or a CSV."""
    if source != "mnist1d" and is_image_data(Path(source)):
        workers = min(4, os.cpu_count() or 1) if workers is None else workers
        return image_data(Path(source), checked, recipe, workers)
    return load_data(source, checked, recipe.loss, recipe.ignore_index, recipe.val, recipe.seed)


def training_recipe(spec, **flags) -> Recipe:
    """The spec's recipe with the flags that were given (not None) replacing its keys."""
    return recipe_of(spec).override(**flags)


def output_path(output: str | Path) -> Path:
    """The model path to write; its folder must exist (nothing is created behind the user)."""
    output = Path(output)
    if not (output.parent if str(output.parent) else Path(".")).is_dir():
        raise RunError(f"output folder '{output.parent}' does not exist", received=str(output))
    # the files written beside the model, refused now rather than after hours of training
    beside = [*metrics_paths(output).values(), *confusion_paths(output).values(),
              best_path(checkpoint_path(output))]
    for path in [output, *beside]:
        check_output(path)
    check_output(checkpoint_path(output), updating=True)  # may be the --resume checkpoint
    return output


def data_source(data: str | None, spec_path: str | Path | None) -> str | Path:
    """'mnist1d', or a path; a path from the spec's `training.data` is relative to the spec."""
    if data is None:
        raise DataError("no training data", hint="give --data mnist1d|FILE.npz|FOLDER|FILE.csv or set "
                        "`training: {data: ...}` in the spec")
    if data == "mnist1d":
        return data
    path = Path(data)
    if not path.is_absolute() and not path.exists() and spec_path is not None:
        path = Path(spec_path).parent / path
    if not path.exists():
        raise DataError(f"no such data file or folder: {data}")
    note_input(path, whole_folder=True)  # the spec's training.data: no argument the CLI saw
    return path


def fit(job: TrainingJob, *, resume: str | Path | None = None, provider: str = "cpu",
        threads: int | None = None, progress: Progress | None = None,
        init: dict | None = None) -> TrainResult:
    """Train for the recipe's epochs, writing the checkpoint beside the output every epoch;
    `resume` continues from a checkpoint (default: the one `prepare` read and checked);
    `init` (parameters by spec id, init_weights) starts from pretrained weights."""
    resume = job.resume if resume is None else resume
    if resume is not None and init is not None:
        raise DataError("--resume continues a run and --init starts one: give one of them")
    try:
        step = step_for(job, provider, progress)
        return train(job.checked, job.recipe, job.data, checkpoint=job.checkpoint,
                     resume=resume, provider=provider, threads=threads, progress=progress,
                     init=init, step=step)
    finally:
        job.data.close()  # the image loader's threads


def step_for(job: TrainingJob, provider: str, progress: Progress | None):
    """The job's step; in fp16/bf16 built for `provider`'s half kernels (the one `prepare`
    built to check a checkpoint carries the same tensors) and its share of half compute told."""
    if job.recipe.precision == "fp32":
        return job.step
    step = build_step(job.checked, job.recipe, provider=provider)
    if progress is not None:
        progress.on_note(step.report.line())
    return step


def head_override(checked: CheckedGraph, classes: int) -> str:
    """The `--set` that gives the network `classes` outputs (--head-classes): the node whose
    parameters come last before the output (through parameter-free nodes such as softmax,
    pooling, flatten), a linear layer's features or a conv's channels."""
    node = checked.node(checked.outputs[0])
    while not node.params and len(node.inputs) == 1 and node.inputs[0] not in checked.inputs:
        node = checked.node(node.inputs[0])
    key = next((k for k in ("features", "channels") if k in type(node.layer).model_fields), None)
    top = {n.id for n in checked.spec.nodes} if checked.spec is not None else set()
    if not node.params or key is None or node.id not in top:
        raise SpecError(f"--head-classes: {node.id} ({node.layer.op}) is not a linear or conv "
                        "node of the spec's top level", hint="use --set nodes.ID.features=K")
    return f"nodes.{node.id}.{key}={classes}"


def init_weights(job: TrainingJob, path: str | Path, **options) -> tuple[dict, list[str]]:
    """A checkpoint's weights for the job's spec (through its name maps; options: weights_map,
    weights_key, partial), and the load report's lines."""
    from ..deploy.weights import load_weights

    arrays, report = load_weights(path, job.checked, spec=job.spec, map_name=options.get("weights_map"),
                                  key=options.get("weights_key"), partial=options.get("partial", False))
    return arrays, report.lines()


def save_trained(job: TrainingJob, result: TrainResult, notes: list[str] | None = None) -> list[Path]:
    """Export the trained inference model (the class names of a folder dataset become its
    labels when the spec has none) and write its metrics and the held-out set's confusion
    matrix; returns every file the run wrote: the model, the checkpoint, then the metrics.
    `notes` gets a line for what was left out (a PNG without matplotlib)."""
    export_trained(job, result.values)
    extra = {"spec": job.label, "recipe": job.recipe.model_dump()}
    skipped = getattr(getattr(job.data, "bad", None), "found", None)
    if skipped:
        extra["skipped_images"] = skipped
    written = write_metrics(result.history, job.output, extra)
    if result.scores is not None and result.scores.confusion is not None:
        files, note = write_confusion(result.scores.confusion, job.data.classes, job.output)
        written += files
        if note and notes is not None:
            notes.append(note)
    return [job.output, job.checkpoint, *written]


def export_trained(job: TrainingJob, values) -> None:
    from ..lower.inference import lower
    from ..lower.metadata import LABELS
    from onnx import helper

    weights = {name: values[name] for name in weight_names(job.checked)}
    model = lower(job.checked, seed=job.recipe.seed, weights=weights, spec_text=_spec_text(job.spec))
    props = {p.key: p.value for p in model.metadata_props}
    if job.data.classes and LABELS not in props:
        helper.set_model_props(model, {**props, LABELS: json.dumps(job.data.classes,
                                                                   ensure_ascii=False)})
    save_model(model, job.output)


def save_training_step(spec, checked, output: str | Path, *, batch: int | None = None,
                       opset: int | None = None, precision: str | None = None,
                       provider: str = "cpu"):
    """`graphcnn compile --training`: write the training-step model of the spec's recipe;
    `batch` and `precision` override the recipe's (a training step always has a fixed batch),
    and a half precision computes where `provider` has the kernels. Returns the recipe and the
    step."""
    recipe = recipe_of(spec).override(batch=batch, precision=precision)
    step = build_step(checked, recipe, opset=opset, provider=provider)
    save_model(step.model, output)
    return recipe, step


def _spec_text(spec) -> str:
    """The self-contained spec a written model carries (its imported blocks inlined)."""
    from ..spec.expand import self_contained_text

    return self_contained_text(spec)
