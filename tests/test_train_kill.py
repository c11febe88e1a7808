"""Killing `graphcnn train` mid-epoch loses nothing: the last checkpoint is intact, no partial
model is written, and resuming finishes with the same weights as an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from graphcnn.train.checkpoint import load_checkpoint
from test_train_loop import TINY

ROOT = Path(__file__).resolve().parent.parent
# test_train_loop's tiny network, with small batches so that an epoch lasts long enough to be
# killed in the middle
SPEC = TINY.replace("training: {optimizer: sgd, lr: 0.05, momentum: 0.9, epochs: 3, batch: 32, seed: 1}",
                    "training: {optimizer: adam, lr: 0.01, epochs: 3, batch: 4, seed: 2}")
assert SPEC != TINY


def command(spec: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "graphcnn.cli", "train", str(spec), "--data", str(data),
            "-o", str(out), *extra]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def carried(path: Path):
    names = [n.split("/", 1)[1] for n in np.load(path).files if n.startswith("carried/")]
    return load_checkpoint(path, names), names


def test_kill_mid_epoch_then_resume_equals_straight_run(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 12)).astype(np.float32)
    y = x.reshape(-1, 3, 4).sum(axis=2).argmax(axis=1)
    np.savez(tmp_path / "d.npz", x=x[:3600], y=y[:3600], x_test=x[3600:], y_test=y[3600:])
    spec = tmp_path / "tiny.yaml"
    spec.write_text(SPEC)
    data = tmp_path / "d.npz"

    straight = subprocess.run(command(spec, data, tmp_path / "s.onnx"), env=env(),
                              capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr

    killed = tmp_path / "k.onnx"
    proc = subprocess.Popen(command(spec, data, killed), env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "k.ckpt.npz"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # well into the next epoch (900 steps each)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert not killed.exists(), "a killed run must not leave a model"
    state, _ = carried(ckpt)
    assert 1 <= state.epoch < 3

    resumed = subprocess.run(command(spec, data, killed, "--resume", str(ckpt)), env=env(),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a, names = carried(tmp_path / "s.ckpt.npz")
    b, _ = carried(ckpt)
    assert (a.epoch, a.step) == (b.epoch, b.step) == (3, 2700)
    for name in names:
        np.testing.assert_array_equal(b.values[name], a.values[name])


def test_ctrl_c_after_an_epoch_names_the_checkpoint_it_wrote(tmp_path):
    """Ctrl-C once a checkpoint is written: the message says which output changed (and the
    model from before is untouched), where it used to say that none had."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4000, 12)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    spec = tmp_path / "tiny.yaml"
    spec.write_text(SPEC.replace("epochs: 3", "epochs: 50"))
    out = tmp_path / "m.onnx"
    out.write_bytes(b"the previous model")
    proc = subprocess.Popen(command(spec, tmp_path / "d.npz", out), env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpt = tmp_path / "m.ckpt.npz"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and f"written before the stop: {ckpt}" in err
    assert out.read_bytes() == b"the previous model"
