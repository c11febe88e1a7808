"""A training job from a spec, as `graphcnn train` and `graphcnn.train(...)` run it.

`prepare` settles everything before the first step (the recipe: the spec's `training:` section
with the caller's overrides; the output folder; the data, checked against the spec), so a bad
flag or data file fails before any time is spent. `fit` runs the loop, checkpointing every
epoch; `save_trained` writes the trained inference model and the metrics beside it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, RunError
from ..graph import CheckedGraph
from ..lower.save import save_model
from ..spec import NetworkSpec
from .checkpoint import checkpoint_path
from .data import Dataset, load_data
from .loop import Progress, TrainResult, build_step, train
from .metrics import write_metrics
from .recipe import Recipe, recipe_of
from .trained_model import export_model


@dataclass(frozen=True)
class TrainingJob:
    """Everything a run needs, checked. `label` names the spec in the metrics file."""

    spec: NetworkSpec
    checked: CheckedGraph
    recipe: Recipe
    data: Dataset
    output: Path
    label: str

    @property
    def checkpoint(self) -> Path:
        return checkpoint_path(self.output)


def prepare(spec: NetworkSpec, checked: CheckedGraph, output: str | Path, *,
            data: str | Path | None = None, spec_path: str | Path | None = None,
            label: str = "", **overrides) -> TrainingJob:
    """The job of training `checked` into `output`. `data` ('mnist1d' or an .npz) and the
    recipe `overrides` (epochs, batch, optimizer, lr, momentum, weight_decay, seed; None keeps
    the spec's value) replace the spec's `training:` keys; a relative data path that is not
    found from the working folder is read beside `spec_path`."""
    recipe = training_recipe(spec, data=None if data is None else str(data), **overrides)
    output = output_path(output)
    dataset = load_data(data_source(recipe.data, spec_path), checked, recipe.loss,
                        recipe.ignore_index)
    return TrainingJob(spec, checked, recipe, dataset, output, label)


def training_recipe(spec, **flags) -> Recipe:
    """The spec's recipe with the flags that were given (not None) replacing its keys."""
    return recipe_of(spec).override(**flags)


def output_path(output: str | Path) -> Path:
    """The model path to write; its folder must exist (nothing is created behind the user)."""
    output = Path(output)
    if not (output.parent if str(output.parent) else Path(".")).is_dir():
        raise RunError(f"output folder '{output.parent}' does not exist", received=str(output))
    return output


def data_source(data: str | None, spec_path: str | Path | None) -> str | Path:
    """'mnist1d', or a path; a path from the spec's `training.data` is relative to the spec."""
    if data is None:
        raise DataError("no training data", hint="give --data mnist1d|FILE.npz or set "
                        "`training: {data: ...}` in the spec")
    if data == "mnist1d":
        return data
    path = Path(data)
    if not path.is_absolute() and not path.exists() and spec_path is not None:
        path = Path(spec_path).parent / path
    if not path.is_file():
        raise DataError(f"no such data file: {data}")
    return path


def fit(job: TrainingJob, *, resume: str | Path | None = None, provider: str = "cpu",
        threads: int | None = None, progress: Progress | None = None,
        init: dict | None = None) -> TrainResult:
    """Train for the recipe's epochs, writing the checkpoint beside the output every epoch;
    `resume` continues from a checkpoint; `init` (parameters by spec id, init_weights) starts
    from pretrained weights."""
    if resume is not None and init is not None:
        from ..errors import DataError

        raise DataError("--resume continues a run and --init starts one: give one of them")
    return train(job.checked, job.recipe, job.data, checkpoint=job.checkpoint, resume=resume,
                 provider=provider, threads=threads, progress=progress, init=init)


def init_weights(job: TrainingJob, path: str | Path, **options) -> tuple[dict, list[str]]:
    """A checkpoint's weights for the job's spec (through its name maps; options: weights_map,
    weights_key, partial), and the load report's lines."""
    from ..deploy.weights import load_weights

    arrays, report = load_weights(path, job.checked, spec=job.spec, map_name=options.get("weights_map"),
                                  key=options.get("weights_key"), partial=options.get("partial", False))
    return arrays, report.lines()


def save_trained(job: TrainingJob, result: TrainResult) -> list[Path]:
    """Export the trained inference model and write its metrics; returns every file the run
    wrote: the model, the checkpoint, then the metrics files."""
    export_model(job.checked, result.values, job.output, spec_text=_spec_text(job.spec),
                 seed=job.recipe.seed)
    written = write_metrics(result.history, job.output, {"spec": job.label,
                                                         "recipe": job.recipe.model_dump()})
    return [job.output, job.checkpoint, *written]


def save_training_step(spec, checked, output: str | Path, *, batch: int | None = None,
                       opset: int | None = None):
    """`graphcnn compile --training`: write the training-step model of the spec's recipe;
    `batch` overrides the recipe's (a training step always has a fixed batch). Returns the
    recipe and the step."""
    recipe = recipe_of(spec).override(batch=batch)
    step = build_step(checked, recipe, opset=opset)
    save_model(step.model, output)
    return recipe, step


def _spec_text(spec) -> str:
    """The self-contained spec a written model carries (its imported blocks inlined)."""
    from ..spec.expand import self_contained_text

    return self_contained_text(spec)
