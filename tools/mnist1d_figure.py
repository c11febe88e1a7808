"""Figure 10.8 of the chapter, rebuilt: the MNIST-1D CNN and the fully connected network trained
with graphcnn.train_spec, as `graphcnn train` does (each spec's `training:` recipe), their train
and test error curves.

    python tools/mnist1d_figure.py [--out DIR] [--png docs/mnist1d_figure.png] [--epochs E]

Prints each network's final test error and wall time; writes the PNG (needs matplotlib).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing graphcnn
RUNS = {"cnn": ("Convolutional network (figure 10.7)", ROOT / "specs" / "mnist1d_cnn.yaml"),
        "mlp": ("Fully connected network", ROOT / "specs" / "mnist1d_mlp.yaml")}


def train(spec: Path, out: Path, epochs: int | None) -> tuple[list[dict], float]:
    """Trains through the Python API (writing the model and metrics files as `graphcnn train`
    does); returns the per-epoch metrics and the wall time."""
    from graphcnn import GraphCnnError, train_spec
    from graphcnn.train.metrics import final_line

    start = time.perf_counter()
    try:
        result = train_spec(spec, out, epochs=epochs)
    except GraphCnnError as exc:
        sys.exit(f"training {spec} failed: {exc}")
    seconds = time.perf_counter() - start
    print(final_line(result.history))
    return result.history, seconds


def plot(results: dict, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), sharey=True)
    for ax, (key, history) in zip(axes, results.items()):
        epochs = [r["epoch"] for r in history]
        for split, colour in (("train", "tab:orange"), ("test", "tab:blue")):
            ax.plot(epochs, [100 * (1 - r[f"{split}_accuracy"]) for r in history], colour,
                    label=f"{split} error")
        final = 100 * (1 - history[-1]["test_accuracy"])
        ax.axhline(final, color="tab:blue", ls=":", lw=1)
        ax.set(title=f"{RUNS[key][0]}\ntest error {final:.1f}%", xlabel="epoch",
               ylabel="error (%)", ylim=(0, 100))
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    print(f"wrote {png}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for the trained models (default: a temp folder)")
    parser.add_argument("--png", default=str(ROOT / "docs" / "mnist1d_figure.png"))
    parser.add_argument("--epochs", type=int, help="override the specs' epochs")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="mnist1d-"))
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for key, (title, spec) in RUNS.items():
        history, seconds = train(spec, out / f"{key}.onnx", args.epochs)
        results[key] = history
        last = history[-1]
        print(f"{key}: test error {100 * (1 - last['test_accuracy']):.1f}%, train error "
              f"{100 * (1 - last['train_accuracy']):.1f}% after {last['epoch']} epochs "
              f"({last['step']} steps), {seconds:.1f} s wall")
    plot(results, Path(args.png))


if __name__ == "__main__":
    main()
