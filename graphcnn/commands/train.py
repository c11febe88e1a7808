"""`graphcnn train`: train a spec on data, checkpoint every epoch, export an inference model.

The work is graphcnn.train.job's (through api.training_job); this command parses the flags,
shows the progress bar and prints the outcome."""
from __future__ import annotations

from ..api import training_job
from .args import spec_positional, weights_args, weights_options
from .output import out
from .registry import command, configure


@command("train", "train a spec on MNIST-1D or an .npz and export the trained ONNX model")
def cmd_train(args) -> int:
    from ..train.job import fit, init_weights, save_trained
    from ..train.metrics import final_line

    job = training_job(args.spec, args.output, data=args.data, epochs=args.epochs,
                       batch=args.batch, optimizer=args.optimizer, lr=args.lr,
                       momentum=args.momentum, weight_decay=args.weight_decay, seed=args.seed)
    init = None
    if args.weights:
        init, report = init_weights(job, args.weights, **weights_options(args))
        for line in report:
            out(line)
    try:
        with progress_display(job.recipe) as progress:
            result = fit(job, resume=args.resume, provider=args.provider, progress=progress,
                         init=init)
    except KeyboardInterrupt:
        if job.checkpoint.exists():  # the epochs finished so far are not lost
            out(f"stopped; continue with: graphcnn train {args.spec} -o {job.output} "
                f"--resume {job.checkpoint}")
        raise
    written = save_trained(job, result)
    out(final_line(result.history))
    out("wrote " + ", ".join(str(p) for p in written))
    return 0


@configure(cmd_train)
def _train_args(p):
    spec_positional(p, "spec", "a spec YAML file (its `training:` section gives the defaults)")
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
    weights_args(p, "--init")  # --init W.pth [--map] [--weights-key] [--partial]: fine-tuning


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
