"""The per-epoch metrics of a training run, written beside the trained model (CSV, JSON and a
PNG of the loss and accuracy curves when matplotlib is installed), and the one line that sums
the run up."""
from __future__ import annotations

from pathlib import Path

import numpy as np

METRIC_COLUMNS = ("epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
                  "test_top5", "lr", "seconds", "loader_wait", "skipped_steps")


def metrics_paths(model_path: str | Path) -> dict[str, Path]:
    """trained.onnx -> trained.metrics.csv, .json and .png beside it."""
    model_path = Path(model_path)
    return {ext: model_path.with_name(f"{model_path.stem}.metrics.{ext}")
            for ext in ("csv", "json", "png")}


def confusion_paths(model_path: str | Path) -> dict[str, Path]:
    """trained.onnx -> trained.confusion.csv and .png beside it."""
    model_path = Path(model_path)
    return {ext: model_path.with_name(f"{model_path.stem}.confusion.{ext}") for ext in ("csv", "png")}


def final_line(history: list[dict]) -> str:
    """The last epoch's losses and errors and the total training time, in one line."""
    last = history[-1]
    text = f"epoch {last['epoch']}: train loss {last['train_loss']:.4f}, " \
           f"train error {1 - last['train_accuracy']:.1%}"
    if "test_loss" in last:
        text += f", test loss {last['test_loss']:.4f}, test error {1 - last['test_accuracy']:.1%}"
    return text + f"; {sum(r['seconds'] for r in history):.1f} s of training"


def write_metrics(history: list[dict], model_path: str | Path, extra: dict | None = None) -> list[Path]:
    """The per-epoch metrics as CSV and JSON, and a PNG of the curves when matplotlib is there."""
    import json

    from ..fileio import write_text_atomic

    paths = metrics_paths(model_path)
    columns = [c for c in METRIC_COLUMNS if any(c in r for r in history)]
    lines = [",".join(columns)] + [",".join(_cell(r.get(c)) for c in columns) for r in history]
    write_text_atomic(paths["csv"], "\n".join(lines) + "\n")
    write_text_atomic(paths["json"], json.dumps({**(extra or {}), "epochs": history}, indent=2))
    written = [paths["csv"], paths["json"]]
    if history and plot_curves(history, paths["png"]):
        written.append(paths["png"])
    return written


def _cell(value) -> str:
    if value is None:
        return ""
    return str(value) if isinstance(value, int) else f"{value:.6g}"


def plot_curves(history: list[dict], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from ..fileio import write_atomic

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "test"):
        if f"{split}_loss" in history[0]:
            ax_loss.plot(epochs, [r[f"{split}_loss"] for r in history], label=split)
            ax_acc.plot(epochs, [r[f"{split}_accuracy"] for r in history], label=split)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    write_atomic(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
    return True


def scores_line(scores, epoch: int | None) -> str:
    """The held-out scores of the exported model, in one line."""
    text = f"validation{f' (epoch {epoch})' if epoch else ''}: loss {scores.loss:.4f}, " \
           f"accuracy {scores.accuracy:.2%}"
    return text + (f", top-5 {scores.top5:.2%}" if scores.top5 is not None else "")


def write_confusion(matrix, classes: list[str] | None, model_path: str | Path) -> tuple[list[Path], str | None]:
    """The confusion matrix (rows: true class, columns: predicted) as CSV, and as a PNG when
    matplotlib is installed; returns the files and a note when the PNG was left out."""
    import csv
    import io

    from ..fileio import write_text_atomic

    names = list(classes) if classes else [str(i) for i in range(len(matrix))]
    paths = confusion_paths(model_path)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["true \\ predicted", *names])
    writer.writerows([name, *map(int, row)] for name, row in zip(names, matrix))
    write_text_atomic(paths["csv"], text.getvalue())
    if plot_confusion(matrix, names, paths["png"]):
        return [paths["csv"], paths["png"]], None
    return [paths["csv"]], "no confusion matrix PNG: matplotlib is not installed " \
                           "(pip install 'graphcnn[plot]')"


def plot_confusion(matrix, names: list[str], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from ..fileio import write_atomic

    size = min(4 + 0.35 * len(names), 30)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    if len(names) <= 50:  # beyond that the tick labels overlap
        ax.set_xticks(range(len(names)), names, rotation=90)
        ax.set_yticks(range(len(names)), names)
    if len(names) <= 20:
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                    color="white" if count > matrix.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (held-out set)")
    fig.tight_layout()
    write_atomic(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
    return True
