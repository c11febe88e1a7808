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


def model_to_run(source: str | Path | NetworkSpec, weights: str | Path | None = None,
                 **options) -> tuple:
    """model_with_weights for an onnxruntime session: a model file taken as it is, with its
    weights in external data, comes back as its checked Path, the data left on disk. Past
    protobuf's 2 GiB a ModelProto cannot be serialized for onnxruntime; the file can be read."""
    from .runtime import existing_file, load_model
    from .runtime.modelio import has_external_data

    spec_like = isinstance(source, NetworkSpec) or str(source).endswith((".yaml", ".yml"))
    if weights is None and not spec_like and not getattr(source, "overrides", ()):
        path = existing_file(source)
        model = load_model(path, with_data=False)
        return (path, []) if has_external_data(model) else (model, [])
    return model_with_weights(source, weights, **options)


def training_job(source: str | Path | NetworkSpec, output: str | Path, *,
                 data: str | Path | None = None, epochs: int | None = None,
                 batch: int | None = None, optimizer: str | None = None, lr: float | None = None,
                 momentum: float | None = None, weight_decay: float | None = None,
                 seed: int | None = None, overrides: list[str] | None = None,
                 workers: int | None = None, head_classes: int | None = None,
                 resume: str | Path | None = None, **options):
    """A checked training job (graphcnn.train.job.TrainingJob), as `graphcnn train` builds it:
    the spec (with its `--set` `overrides`), its recipe (the `training:` section, with each
    option that is not None laid over it), the data ('mnist1d', an .npz with x, y and
    optionally x_test, y_test, a folder of class folders or a CSV of path,label rows) and the
    model path to write.

    Besides epochs, batch, optimizer, lr, momentum, weight_decay and seed, `options` takes
    every other `training:` key, under its flag's name with underscores:
    val (a share held out), max_bad, keep ('last' or 'best'), patience, augment (a dict:
    random_resized_crop [min, max], ratio, pad_crop, hflip; it replaces only the keys it
    holds), schedule (a dict: kind, warmup, milestones, step_size, gamma, min_lr, pct_start,
    div_factor, final_div_factor; likewise), label_smoothing, clip_norm, no_decay_norm_bias,
    freeze (ids, block instances or patterns: a list, or one comma-separated string), loss,
    betas, eps, ignore_index, precision ('fp32', 'bf16' or 'fp16': the step's compute in half
    where the provider has kernels) and loss_scale_window (fp16's good steps before the loss
    scale doubles). `workers`: the image loader's threads (default: up to 4);
    `head_classes`: give the last linear or conv this many outputs (--head-classes);
    `resume`: a checkpoint to continue, whose stored recipe replaces the spec's (the options
    given still override it), checked against the spec's step here. An unknown option is a
    TypeError, as for any keyword argument."""
    from .spec.training import TrainingSection
    from .train.job import head_override, prepare

    unknown = sorted(set(options) - set(TrainingSection.model_fields))
    if unknown:
        raise TypeError(f"training_job() got an unexpected keyword argument '{unknown[0]}'")
    if isinstance(options.get("freeze"), str):
        options["freeze"] = [part for part in options["freeze"].split(",") if part]
    spec = load_spec(source, overrides)
    if head_classes is not None:  # the classifier replaced through a --set of its own
        spec = load_spec(spec, [head_override(check_spec(spec), head_classes)])
    checked = check_spec(spec)
    spec_path = None if isinstance(source, NetworkSpec) else source
    return prepare(spec, checked, output, data=data, spec_path=spec_path,
                   label=spec.name if spec_path is None else str(source), workers=workers,
                   resume=resume, epochs=epochs, batch=batch, optimizer=optimizer, lr=lr,
                   momentum=momentum, weight_decay=weight_decay, seed=seed, **options)


def train_spec(source: str | Path | NetworkSpec, output: str | Path, *,
               data: str | Path | None = None, resume: str | Path | None = None,
               provider: str = "cpu", threads: int | None = None, progress=None,
               init: str | Path | None = None, weights_map: str | None = None,
               weights_key: str | None = None, partial: bool = False, **recipe):
    """Train a spec as `graphcnn train` does and write the same files: the trained model at
    `output`, its checkpoint (<stem>.ckpt.npz) and metrics (<stem>.metrics.csv, .json, .png)
    beside it, and for a held-out set the confusion matrix. `recipe` takes what
    `training_job` takes: any `training:` key (epochs, batch, optimizer, lr, momentum,
    weight_decay, seed, val, augment, schedule, label_smoothing, clip_norm,
    no_decay_norm_bias, freeze, keep, patience, max_bad, precision, ...), workers,
    head_classes and overrides. `init`: a checkpoint to start from (--init; through the spec's
    name maps, or `weights_map`, `weights_key`; `partial` leaves parameters it lacks, a new
    head, as initialised); its load report goes to `progress.on_note`. `progress` is a
    graphcnn.train.loop.Progress. Returns the TrainResult: final tensors, per-epoch history,
    steps taken, held-out scores.

    Not named `train`: graphcnn.train is the training package, and importing any of its
    modules rebinds that name on the graphcnn package."""
    from .train.job import fit, init_weights, save_trained

    job = training_job(source, output, data=data, resume=resume, **recipe)
    start = None
    if init is not None:
        start, report = init_weights(job, init, weights_map=weights_map,
                                     weights_key=weights_key, partial=partial)
        for line in report:
            if progress is not None:
                progress.on_note(line)
    result = fit(job, provider=provider, threads=threads, progress=progress, init=start)
    save_trained(job, result)
    return result
