"""`graphcnn train`: train a spec on data, checkpoint every epoch, export an inference model."""
from __future__ import annotations

from pathlib import Path

from ..api import check_spec, load_spec
from ..errors import DataError, RunError
from .output import out
from .registry import command, configure


@command("train", "train a spec on MNIST-1D or an .npz and export the trained ONNX model")
def cmd_train(args) -> int:
    from ..train.checkpoint import checkpoint_path
    from ..train.data import load_data
    from ..train.export import export_model, write_metrics
    from ..train.loop import train

    spec = load_spec(args.spec)
    checked = check_spec(spec)
    recipe = training_recipe(spec, args)
    output = Path(args.output)
    if not (output.parent if str(output.parent) else Path(".")).is_dir():
        raise RunError(f"output folder '{output.parent}' does not exist", received=str(output))
    data = load_data(data_source(recipe.data, args.spec), checked, recipe.loss)
    ckpt = checkpoint_path(output)
    try:
        with progress_display(recipe) as progress:
            result = train(checked, recipe, data, checkpoint=ckpt, resume=args.resume,
                           provider=args.provider, progress=progress)
    except KeyboardInterrupt:
        if ckpt.exists():  # the epochs finished so far are not lost
            out(f"stopped; continue with: graphcnn train {args.spec} -o {output} --resume {ckpt}")
        raise
    export_model(checked, result.values, output, spec_text=spec.to_yaml(), seed=recipe.seed)
    written = write_metrics(result.history, output, {"spec": str(args.spec),
                                                     "recipe": recipe.model_dump()})
    out(final_line(result.history))
    out(f"wrote {output}, {ckpt}, " + ", ".join(str(p) for p in written))
    return 0


@configure(cmd_train)
def _train_args(p):
    p.add_argument("spec", help="a spec YAML file (its `training:` section gives the defaults)")
    p.add_argument("--data", help="'mnist1d' or an .npz with x, y (and x_test, y_test)")
    p.add_argument("-o", "--output", required=True, help="the trained .onnx model to write")
    p.add_argument("--epochs", type=int, help="total epochs (a resumed run counts the done ones)")
    p.add_argument("--batch", type=int, help="rows per step (a last partial batch is filled up "
                   "with rows of the same epoch that get mask 0: they add nothing to the loss)")
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"])
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--momentum", type=float, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, help="L2 (sgd, adam) or decoupled (adamw) decay")
    p.add_argument("--seed", type=int, help="initialisation and shuffling seed")
    p.add_argument("--provider", default="cpu", help="cpu, cuda, or a full provider name")
    p.add_argument("--resume", help="a checkpoint (.ckpt.npz) to continue from")


def training_recipe(spec, args):
    from ..train.recipe import recipe_of

    return recipe_of(spec).override(
        data=args.data, epochs=args.epochs, batch=args.batch, optimizer=args.optimizer,
        lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay, seed=args.seed)


def data_source(data: str | None, spec_path: str) -> str | Path:
    """'mnist1d', or a path; a path from the spec's `training.data` is relative to the spec."""
    if data is None:
        raise DataError("no training data", hint="give --data mnist1d|FILE.npz or set "
                        "`training: {data: ...}` in the spec")
    if data == "mnist1d":
        return data
    path = Path(data)
    if not path.is_absolute() and not path.exists():
        path = Path(spec_path).parent / path
    if not path.is_file():
        raise DataError(f"no such data file: {data}")
    return path


def final_line(history: list[dict]) -> str:
    last = history[-1]
    text = f"epoch {last['epoch']}: train loss {last['train_loss']:.4f}, " \
           f"train error {1 - last['train_accuracy']:.1%}"
    if "test_loss" in last:
        text += f", test loss {last['test_loss']:.4f}, test error {1 - last['test_accuracy']:.1%}"
    return text + f"; {sum(r['seconds'] for r in history):.1f} s of training"


class progress_display:
    """A rich progress bar over all steps, with one printed line per finished epoch."""

    def __init__(self, recipe):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn,
                                   TimeElapsedColumn)

        self.recipe = recipe
        self.bar = Bar(TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                       BarColumn(), MofNCompleteColumn(),
                       TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.1%} "
                                  "{task.fields[rate]:,.0f} samples/s"),
                       TimeElapsedColumn(), console=Console(stderr=True))
        self.task = None

    def __enter__(self):
        from ..train.loop import Progress

        self.bar.__enter__()
        return Progress(on_start=self.start, on_step=self.step, on_epoch=self.epoch)

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def start(self, first_epoch: int, epochs: int, steps: int) -> None:
        total = max(epochs - first_epoch + 1, 0) * steps
        self.task = self.bar.add_task("train", total=total, epoch=first_epoch, epochs=epochs,
                                      loss=float("nan"), acc=0.0, rate=0.0)

    def step(self, info: dict) -> None:
        self.bar.update(self.task, advance=1, epoch=info["epoch"], loss=info["loss"],
                        acc=info["accuracy"], rate=info["samples_per_s"])

    def epoch(self, record: dict) -> None:
        every = max(1, self.recipe.epochs // 20)  # about 20 lines for a long run
        if record["epoch"] % every and record["epoch"] != self.recipe.epochs:
            return
        text = f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} " \
               f"acc {record['train_accuracy']:.1%}"
        if "test_loss" in record:
            text += f", test loss {record['test_loss']:.4f} acc {record['test_accuracy']:.1%}"
        self.bar.console.print(text + f" ({record['seconds']:.1f} s)")

