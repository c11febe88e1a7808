"""The public entry points the CLI and users call: check, compile, load a model, train."""
from __future__ import annotations

from pathlib import Path

from .graph import CheckedGraph, Limits, check
from .gcpause import gc_paused
from .spec import NetworkSpec
from .spec.expand import self_contained_text
from .spec.overrides import without_stale_labels


@gc_paused()
def load_spec(source: str | Path | NetworkSpec, overrides: list[str] | None = None) -> NetworkSpec:
    """A spec from a YAML file path, or the spec itself; with `overrides`, `--set` texts
    (`nodes.fc.features=10`, graphcnn.spec.overrides) applied. A path from the command line
    carries its own `--set`s (commands.args.SpecPath), so every command applies them."""
    overrides = overrides if overrides is not None else getattr(source, "overrides", None)
    if isinstance(source, NetworkSpec):
        return source.with_overrides(overrides)
    return NetworkSpec.from_yaml(source, overrides=overrides)


@gc_paused()
def check_spec(source: str | Path | NetworkSpec, limits: Limits | None = None,
               overrides: list[str] | None = None) -> CheckedGraph:
    """The checked graph; labels that `--set` left stale are dropped with a warning."""
    return without_stale_labels(check(load_spec(source, overrides), limits))


@gc_paused()
def compile_spec(source, *, seed: int = 0, opset: int | None = None, batch: int | None = None,
                 weights=None, overrides: list[str] | None = None):
    """Spec -> checked graph -> ONNX ModelProto (imports onnx only when called)."""
    from .lower.inference import lower

    spec = load_spec(source, overrides)
    checked = check_spec(spec)  # its spec: without labels that `overrides` left stale
    return lower(checked, seed=seed, opset=opset, batch=batch, weights=weights,
                 spec_text=self_contained_text(checked.spec))


def model_for(source: str | Path | NetworkSpec, overrides: list[str] | None = None):
    """An ONNX ModelProto to run: a spec (a NetworkSpec, or a .yaml/.yml path, with its
    `overrides`) is compiled in memory; any other path is read as an ONNX model and checked
    (runtime.load_model)."""
    return model_with_weights(source, overrides=overrides)[0]


def model_with_weights(source: str | Path | NetworkSpec, weights: str | Path | None = None, *,
                       weights_map: str | None = None, weights_key: str | None = None,
                       partial: bool = False, overrides: list[str] | None = None) -> tuple:
    """model_for, with a checkpoint's weights loaded (through the spec's name maps): into the
    spec as it is compiled, or into a graphcnn model's parameters (the spec it carries gives
    the ids and maps). Returns (ModelProto, the load report's lines)."""
    from .runtime import existing_file, load_model

    overrides = overrides if overrides is not None else getattr(source, "overrides", None)
    if isinstance(source, NetworkSpec) or str(source).endswith((".yaml", ".yml")):
        if weights is None:
            return compile_spec(source, overrides=overrides), []
        from .deploy.export import ExportOptions, export

        spec = load_spec(source, overrides)
        opts = ExportOptions(weights=str(weights), weights_map=weights_map,
                             weights_key=weights_key, partial=partial)
        checked = check_spec(spec)
        return export(checked, self_contained_text(checked.spec), opts)
    if overrides:  # a compiled model's structure is fixed
        from .errors import SpecError
        raise SpecError("--set changes a spec; this is an ONNX model", received=str(source),
                        hint="give the spec (.yaml) to change it")
    model = load_model(existing_file(source))
    if weights is None:
        return model, []
    from .deploy.weights import load_into_model

    report = load_into_model(model, weights, weights_map=weights_map, weights_key=weights_key,
                             partial=partial)
    return model, report.lines()


def training_job(source: str | Path | NetworkSpec, output: str | Path, *,
                 data: str | Path | None = None, epochs: int | None = None,
                 batch: int | None = None, optimizer: str | None = None, lr: float | None = None,
                 momentum: float | None = None, weight_decay: float | None = None,
                 seed: int | None = None, overrides: list[str] | None = None):
    """A checked training job (graphcnn.train.job.TrainingJob): the spec (with its `--set`
    `overrides`), its recipe (the `training:` section, with each override that is not None),
    the data ('mnist1d' or an .npz with x, y and optionally x_test, y_test) and the model path
    to write."""
    from .train.job import prepare

    spec = load_spec(source, overrides)
    checked = check_spec(spec)
    spec_path = None if isinstance(source, NetworkSpec) else source
    return prepare(spec, checked, output, data=data, spec_path=spec_path,
                   label=spec.name if spec_path is None else str(source), epochs=epochs,
                   batch=batch, optimizer=optimizer, lr=lr, momentum=momentum,
                   weight_decay=weight_decay, seed=seed)


def train_spec(source: str | Path | NetworkSpec, output: str | Path, *,
               data: str | Path | None = None, resume: str | Path | None = None,
               provider: str = "cpu", threads: int | None = None, progress=None, **recipe):
    """Train a spec as `graphcnn train` does and write the same files: the trained model at
    `output`, its checkpoint (<stem>.ckpt.npz) and metrics (<stem>.metrics.csv, .json, .png)
    beside it. `recipe` overrides the spec's `training:` keys (epochs, batch, optimizer, lr,
    momentum, weight_decay, seed); `progress` is a graphcnn.train.loop.Progress. Returns the
    TrainResult: final tensors, per-epoch history, steps taken.

    Not named `train`: graphcnn.train is the training package, and importing any of its
    modules rebinds that name on the graphcnn package."""
    from .train.job import fit, save_trained

    job = training_job(source, output, data=data, **recipe)
    result = fit(job, resume=resume, provider=provider, threads=threads, progress=progress)
    save_trained(job, result)
    return result
