"""`graphcnn train`: train a spec on data, checkpoint every epoch, export an inference model.

The work is graphcnn.train.job's; this command parses the flags, shows the progress bar and
prints the outcome."""
from __future__ import annotations

import shlex

from ..api import check_spec, load_spec
from ..fileio import UpdatedPath
from .args import (MAX_BATCH, MAX_EPOCHS, MAX_SEED, non_negative_int, positive_int,
                   spec_positional, weights_args, weights_options)
from .output import out
from .registry import command, configure


@command("train", "train a spec on images, MNIST-1D or an .npz and export the trained ONNX model")
def cmd_train(args) -> int:
    from ..train.job import fit, init_weights, save_trained
    from ..train.metrics import final_line, scores_line

    job = training_job(args)
    init = None
    if args.weights:
        init, report = init_weights(job, args.weights, **weights_options(args))
        for line in report:
            out(line)
    display = progress_display(job.recipe)
    try:
        with display as progress:
            result = fit(job, provider=args.provider, progress=progress, init=init)
    except KeyboardInterrupt:
        if args.resume or display.finished:  # this run's checkpoint, not a stale one
            out("stopped; continue with: " + continue_command(args, job))
        raise
    notes: list[str] = []
    written = save_trained(job, result, notes)
    out(final_line(result.history))
    if result.scores is not None:
        best = job.recipe.keep == "best"
        out(scores_line(result.scores, _best_epoch(job, result) if best else None))
    for line in notes:
        out(line)
    out("wrote " + ", ".join(str(p) for p in written))
    return 0


def continue_command(args, job) -> str:
    """The command that resumes this run: the same spec (its --set and --head-classes), the
    checkpoint (which holds the recipe, flags and data included) and the runtime flags."""
    words = ["graphcnn", "train", str(args.spec)]
    for override in getattr(args.spec, "overrides", ()):
        words += ["--set", override]
    if args.head_classes is not None:
        words += ["--head-classes", str(args.head_classes)]
    words += ["-o", str(job.output), "--resume", str(job.checkpoint)]
    if args.provider != "cpu":
        words += ["--provider", args.provider]
    if args.workers is not None:
        words += ["--workers", str(args.workers)]
    return shlex.join(words)


def training_job(args):
    """The checked job: the spec (with its --set overrides) and every recipe flag given."""
    from ..train.job import head_override, prepare

    spec = load_spec(args.spec)
    if args.head_classes is not None:  # the classifier replaced through a --set of its own
        head = head_override(check_spec(spec), args.head_classes)
        spec = load_spec(args.spec, [*getattr(args.spec, "overrides", ()), head])
    return prepare(spec, check_spec(spec), args.output, data=args.data, spec_path=args.spec,
                   label=str(args.spec), workers=args.workers, resume=args.resume,
                   epochs=args.epochs, batch=args.batch, optimizer=args.optimizer, lr=args.lr,
                   momentum=args.momentum, weight_decay=args.weight_decay, seed=args.seed,
                   val=args.val, max_bad=args.max_bad, keep=args.keep, patience=args.patience,
                   label_smoothing=args.label_smoothing, clip_norm=args.clip_norm,
                   no_decay_norm_bias=args.no_decay_norm_bias, precision=args.precision,
                   freeze=[p for text in args.freeze or () for p in text.split(",") if p] or None,
                   augment=given(random_resized_crop=args.random_resized_crop,
                                 pad_crop=args.pad_crop, hflip=args.hflip),
                   schedule=given(kind=args.schedule, warmup=args.warmup,
                                  milestones=args.milestones))


def given(**values) -> dict | None:
    """The nested section's keys that flags gave (None: no flag touched the section)."""
    return {k: v for k, v in values.items() if v is not None} or None


def _best_epoch(job, result):
    from ..train.best import best_epoch

    return best_epoch(result.history, job.recipe.loss)


def _numbers(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def _scale_range(text: str) -> tuple[float, float]:
    """--random-resized-crop 0.08 or 0.08,1: the share of the area a crop covers."""
    parts = [float(v) for v in text.split(",")]
    if len(parts) not in (1, 2):
        raise ValueError(text)
    return (parts[0], parts[1] if len(parts) == 2 else 1.0)


@configure(cmd_train)
def _train_args(p):
    spec_positional(p, "spec", "a spec YAML file (its `training:` section gives the defaults)")
    p.add_argument("--data", help="a folder of class folders (PNG, JPEG, BMP, WebP; a val/ "
                   "folder beside them is the held-out set), a CSV of path,label rows, "
                   "'mnist1d', or an .npz with x, y (and x_test, y_test)")
    p.add_argument("-o", "--output", required=True, help="the trained .onnx model to write")
    p.add_argument("--epochs", type=positive_int(MAX_EPOCHS), help="total epochs (a resumed run counts the done ones)")
    p.add_argument("--batch", type=positive_int(MAX_BATCH), help="rows per step (a last partial batch is filled up "
                   "with rows of the same epoch that get mask 0: they add nothing to the loss)")
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"])
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--momentum", type=float, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, help="L2 (sgd, adam) or decoupled (adamw) decay")
    p.add_argument("--seed", type=non_negative_int(MAX_SEED), help="initialisation and shuffling seed")
    p.add_argument("--provider", default="cpu", help="cpu, cuda, or a full provider name")
    p.add_argument("--resume", type=UpdatedPath,  # the checkpoint goes on being written
                   help="a checkpoint (.ckpt.npz) to continue from")
    p.add_argument("--val", type=float, metavar="SHARE",
                   help="hold out this share of each class as the validation set (e.g. 0.2)")
    p.add_argument("--keep", choices=["last", "best"],
                   help="export the last epoch's model or the best validation epoch's")
    p.add_argument("--patience", type=positive_int(MAX_EPOCHS), metavar="EPOCHS",
                   help="stop after this many epochs without a better validation score")
    p.add_argument("--workers", type=non_negative_int(256), metavar="N",
                   help="image decoding threads (default: up to 4; 0: in the training thread)")
    p.add_argument("--max-bad", type=float, metavar="SHARE", help="the share of images that may "
                   "be unreadable (skipped and listed) before the run stops (default 0.01)")
    p.add_argument("--random-resized-crop", type=_scale_range, metavar="MIN[,MAX]",
                   help="augment: random crops covering MIN..MAX of the image's area, resized "
                   "to the input size")
    p.add_argument("--pad-crop", type=int, metavar="PIXELS",
                   help="augment: pad with zeros, then crop back at a random offset")
    p.add_argument("--hflip", type=float, metavar="P", help="augment: flip left-right with "
                   "probability P")
    p.add_argument("--schedule", choices=["constant", "step", "multistep", "cosine", "onecycle"],
                   help="how the learning rate moves (more keys: --set training.schedule.KEY=V)")
    p.add_argument("--warmup", type=float, metavar="EPOCHS", help="linear warmup of the rate")
    p.add_argument("--milestones", type=_numbers, metavar="E1,E2",
                   help="multistep: the epochs after which the rate is multiplied by gamma")
    p.add_argument("--label-smoothing", type=float, metavar="E",
                   help="cross_entropy against (1 - E) onehot + E / classes")
    p.add_argument("--clip-norm", type=float, metavar="NORM",
                   help="scale the gradients down to this global L2 norm")
    p.add_argument("--no-decay-norm-bias", action="store_true", default=None,
                   help="no weight decay on biases and normalisation scales (one-axis tensors)")
    p.add_argument("--freeze", action="append", metavar="IDS", help="keep these nodes fixed: "
                   "ids, block instances or patterns (stage1, 'stage*.block0'); repeatable")
    p.add_argument("--precision", metavar="fp32|bf16|fp16", help="forward and backward in half "
                   "where the provider has kernels (weights, optimizer state, batchnorm "
                   "statistics and the loss stay fp32; fp16 scales the loss dynamically); "
                   "the exported model is fp32")
    p.add_argument("--head-classes", type=positive_int(), metavar="K",
                   help="replace the classifier (the last linear or conv) with K outputs")
    weights_args(p, "--init")  # --init W.pth [--map] [--weights-key] [--partial]: fine-tuning


class progress_display:
    """A rich progress bar over all steps, with one printed line per finished epoch."""

    def __init__(self, recipe):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn,
                                   TimeElapsedColumn)

        self.recipe = recipe
        self.finished = 0  # epochs this run finished (and checkpointed)
        self.bar = Bar(TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                       BarColumn(), MofNCompleteColumn(),
                       TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.1%} "
                                  "{task.fields[rate]:,.0f} images/s, "
                                  "loader wait {task.fields[waited]:.1f} s"),
                       TimeElapsedColumn(),  # notes (paths, labels) print as written
                       console=Console(stderr=True, markup=False))
        self.task = None

    def __enter__(self):
        from ..train.loop import Progress

        self.bar.__enter__()
        return Progress(on_start=self.start, on_step=self.step, on_epoch=self.epoch,
                        on_note=lambda line: self.bar.console.print(line))

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def start(self, first_epoch: int, epochs: int, steps: int) -> None:
        total = max(epochs - first_epoch + 1, 0) * steps
        self.task = self.bar.add_task("train", total=total, epoch=first_epoch, epochs=epochs,
                                      loss=float("nan"), acc=0.0, rate=0.0, waited=0.0)

    def step(self, info: dict) -> None:
        self.bar.update(self.task, advance=1, epoch=info["epoch"], loss=info["loss"],
                        acc=info["accuracy"], rate=info["samples_per_s"], waited=info["waited"])

    def epoch(self, record: dict) -> None:
        self.finished += 1
        every = max(1, self.recipe.epochs // 20)  # about 20 lines for a long run
        if record["epoch"] % every and record["epoch"] != self.recipe.epochs:
            return
        text = f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} " \
               f"acc {record['train_accuracy']:.1%}"
        if "test_loss" in record:
            text += f", test loss {record['test_loss']:.4f} acc {record['test_accuracy']:.1%}"
        if "test_top5" in record:
            text += f" top-5 {record['test_top5']:.1%}"
        if "skipped_steps" in record:  # fp16: steps an overflow skipped (the scale halved)
            text += f", {record['skipped_steps']} skipped steps"
        self.bar.console.print(text + f" ({record['seconds']:.1f} s, loader wait "
                               f"{record['loader_wait']:.1f} s)")
