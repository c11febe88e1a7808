"""The per-epoch metrics of a training run, written beside the trained model (CSV, JSON and a
PNG of the loss and accuracy curves when matplotlib is installed), and the one line that sums
the run up."""
from __future__ import annotations

from pathlib import Path

METRIC_COLUMNS = ("epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
                  "seconds")


def metrics_paths(model_path: str | Path) -> dict[str, Path]:
    """trained.onnx -> trained.metrics.csv, .json and .png beside it."""
    model_path = Path(model_path)
    return {ext: model_path.with_name(f"{model_path.stem}.metrics.{ext}")
            for ext in ("csv", "json", "png")}


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
