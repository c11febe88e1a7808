"""Hardening, round three: what a sweep of hostile image folders, CSVs and checkpoints found.
Each case failed before its fix (a lost image, a traceback after a whole training run, a
multi-gigabyte resize of a 1 KB file, a damaged checkpoint trained on, a 16-bit image
clipped to white); docs/reliability.md lists them."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import SPECS
from graphcnn.cli import main
from graphcnn.errors import DataError
from graphcnn.runtime.images import MAX_PIXELS, Recipe, image_pixels, open_image

Image = pytest.importorskip("PIL.Image")


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def folder(tmp_path) -> Path:
    """imgs/<0|1>/<i>.png: 6 random 8x8 grayscale images per class."""
    rng = np.random.default_rng(0)
    for label in "01":
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
            Image.fromarray(pixels, "L").save(tmp_path / "imgs" / label / f"{i}.png")
    return tmp_path / "imgs"


@pytest.fixture
def spec(tmp_path) -> Path:
    """digits_cnn with two classes and one epoch."""
    text = (SPECS / "digits_cnn.yaml").read_text().replace("features: 10", "features: 2")
    path = tmp_path / "two.yaml"
    path.write_text(text.replace("epochs: 10", "epochs: 1"))
    return path


@pytest.mark.parametrize("inside", ["0/0.png", "m.onnx", "0/m.onnx"])
def test_train_never_writes_inside_its_image_folder(capsys, spec, folder, inside):
    """Before: `-o imgs/0/0.png` replaced a training image by the model, and the side files
    (m.metrics.png) became training images of the next run."""
    image = (folder / "0" / "0.png").read_bytes()
    code, _, err = cli(capsys, "train", spec, "--data", folder, "-o", folder / inside)
    assert code == 1 and "lies inside the command's input folder" in err, err
    assert (folder / "0" / "0.png").read_bytes() == image
    assert sorted(p.name for p in folder.rglob("*") if p.is_file()) == sorted(
        f"{i}.png" for i in range(6) for _ in "01")


def test_train_data_folder_from_the_spec_is_guarded_too(capsys, spec, folder, tmp_path):
    """The spec's `training.data` is no argument the command line saw."""
    text = spec.read_text().replace("training: {", f"training: {{data: {folder}, ")
    spec.write_text(text)
    code, _, err = cli(capsys, "train", spec, "-o", folder / "1" / "m.onnx")
    assert code == 1 and "lies inside the command's input folder" in err, err


def test_writing_beside_the_image_folder_is_fine(capsys, spec, folder, tmp_path):
    code, _, err = cli(capsys, "train", spec, "--data", folder, "-o", tmp_path / "imgs2.onnx")
    assert code == 0, err


def test_a_class_folder_named_in_other_bytes_is_refused_before_training(capsys, spec, folder):
    """Before: a traceback (UnicodeEncodeError) after the whole run, and only the checkpoint
    written. Linux hands such names to Python as lone surrogates."""
    odd = folder / os.fsdecode(b"\xe9t\xe9")
    odd.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), i * 50, np.uint8), "L").save(odd / f"{i}.png")
    out = folder.parent / "m.onnx"
    code, _, err = cli(capsys, "train", spec, "--data", folder, "-o", out)
    assert code == 1 and "its name is not UTF-8 text" in err and "\\udce9" in err, err
    assert not out.exists() and not (folder.parent / "m.ckpt.npz").exists()


@pytest.mark.parametrize("label, message", [
    ("99999999999999999999999", "row 3's label is out of range"),  # before: OverflowError
    ("\u00b2", "3 classes and the network's output 2"),  # before: ValueError from int('²')
])
def test_csv_labels_that_are_no_class_number(capsys, spec, folder, tmp_path, label, message):
    rows = [f"{folder}/0/{i}.png,{lab}" for i, lab in enumerate(["0", "1", label, "0"])]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    code, _, err = cli(capsys, "train", spec, "--data", tmp_path / "labels.csv",
                       "-o", tmp_path / "m.onnx")
    assert code == 1 and message in err and "Traceback" not in err, err


def test_predict_rows_of_files_named_in_other_bytes(capsys, spec, folder, tmp_path):
    """Before: UnicodeEncodeError from the CSV writer; now the bytes are escaped (\\xff)."""
    odd = folder / "1" / os.fsdecode(b"\xff\xfe.png")
    odd.write_bytes((folder / "1" / "0.png").read_bytes())
    code, _, err = cli(capsys, "predict", spec, "--data", folder / "1", "--out",
                       tmp_path / "rows.csv")
    assert code == 0, err
    text = (tmp_path / "rows.csv").read_text(encoding="utf-8")
    assert "\\xff\\xfe.png," in text and len(text.splitlines()) == 1 + 7


def test_predict_batch_zero_is_refused(capsys, spec, folder, tmp_path):
    """Before: --batch 0 silently meant the default (--batch -5 was refused)."""
    for extra in ([folder / "0" / "0.png"], ["--data", folder, "--out", tmp_path / "r.csv"]):
        code, _, err = cli(capsys, "predict", spec, *extra, "--batch", "0")
        assert code == 1 and "take positive numbers" in err, err


def test_a_resize_that_would_explode_is_refused_before_allocating(tmp_path):
    """A 1,000,000 x 1 strip (1 KB of PNG) resized by its short side to 64 would be
    64,000,000 x 64 pixels: refused from the sizes, before Pillow allocates."""
    Image.new("L", (1_000_000, 1), 9).save(tmp_path / "strip.png")
    assert (tmp_path / "strip.png").stat().st_size < 10_000
    recipe = Recipe(resize=64, crop=(8, 8), channels="L")
    with pytest.raises(DataError, match=r"strip.png: resizing its 1000000x1 pixels to 64 would "
                                        r"make 64000000x64.*at most 200,000,000 pixels after"):
        image_pixels(tmp_path / "strip.png", recipe)
    assert 64_000_000 * 64 > MAX_PIXELS
    Image.new("L", (1000, 1), 9).save(tmp_path / "short.png")  # 64,000 x 64: fine
    assert image_pixels(tmp_path / "short.png", recipe).shape == (1, 8, 8)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    """Pillow's convert clips I;16 to 255: a 0..63000 gradient came out [0, 255, 255, ...]."""
    values = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    expected = (values.astype(np.uint32) * 255 + 32767) // 65535
    for mode in ("L", "RGB"):
        got = np.asarray(open_image(tmp_path / "g16.png", mode))
        got = got if got.ndim == 2 else got[:, :, 0]
        np.testing.assert_array_equal(got, expected)
    assert len(np.unique(expected)) == 64


def test_a_damaged_checkpoint_is_refused_not_trained_on(capsys, spec, folder, tmp_path):
    """Before: np.load's CRC check was skipped (the members are read in place), and a resumed
    run went on from the damaged weights."""
    out = tmp_path / "m.onnx"
    assert cli(capsys, "train", spec, "--data", folder, "-o", out)[0] == 0
    ckpt = tmp_path / "m.ckpt.npz"
    raw = bytearray(ckpt.read_bytes())
    with zipfile.ZipFile(ckpt) as zf:
        info = zf.getinfo("carried/conv2.weight.npy")
    data = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200
    raw[data:data + 16] = bytes(b ^ 0xFF for b in raw[data:data + 16])
    (tmp_path / "damaged.npz").write_bytes(bytes(raw))
    code, _, err = cli(capsys, "train", spec, "--data", folder, "--resume",
                       tmp_path / "damaged.npz", "--epochs", "2", "-o", tmp_path / "r.onnx")
    assert code == 1 and "is corrupt: tensor 'carried/conv2.weight' fails" in err, err


def test_resume_with_fewer_epochs_than_done(capsys, spec, folder, tmp_path):
    """Before: `epoch 4/2 ... loss nan`, exit 0, the outputs rewritten. Fewer epochs than the
    checkpoint did is an error; the same count exports the finished run without training."""
    out = tmp_path / "m.onnx"
    assert cli(capsys, "train", spec, "--data", folder, "--epochs", "2", "-o", out)[0] == 0
    ckpt = tmp_path / "m.ckpt.npz"
    before = ckpt.read_bytes()
    code, _, err = cli(capsys, "train", spec, "--data", folder, "--resume", ckpt,
                       "--epochs", "1", "-o", out)
    assert code == 1 and "has already trained 2 epochs, more than the 1 asked for" in err, err
    assert ckpt.read_bytes() == before
    out.unlink()
    code, _, err = cli(capsys, "train", spec, "--data", folder, "--resume", ckpt,
                       "--epochs", "2", "-o", out)
    assert code == 0 and "trained all 2 epochs: nothing to train" in err and out.exists(), err


def test_spec_epochs_bounded_as_the_flag(capsys, spec, folder, tmp_path):
    code, _, err = cli(capsys, "train", spec, "--data", folder, "--set",
                       "training.epochs=100000000", "-o", tmp_path / "m.onnx")
    assert code == 1 and "less than or equal to 1000000" in err, err


def test_predict_on_a_folder_or_fifo_says_what_it_is(capsys, spec, folder, tmp_path):
    """Before: "no such image" for a path that exists."""
    code, _, err = cli(capsys, "predict", spec, folder)
    assert code == 1 and f"{folder} is a folder; expected a file" in err, err
    os.mkfifo(tmp_path / "pipe.png")
    code, _, err = cli(capsys, "predict", spec, tmp_path / "pipe.png")
    assert code == 1 and "is not a regular file" in err and "FIFO" in err, err


def test_freezing_every_layer_is_refused(capsys, spec, folder, tmp_path):
    """Before: accepted, and a model written from a run that trained nothing."""
    code, _, err = cli(capsys, "train", spec, "--data", folder, "--freeze", "*",
                       "-o", tmp_path / "m.onnx")
    assert code == 1 and "--freeze leaves no parameter to train" in err, err


def test_a_section_check_reads_once(capsys, spec, folder, tmp_path):
    """Before: "bad value for --augment: Value error, ...; received [0.5, 0.1]; received
    {'random_resized_crop': ..., 'ratio': ..., ...}" (no --augment flag exists)."""
    code, _, err = cli(capsys, "train", spec, "--data", folder, "--random-resized-crop",
                       "0.5,0.1", "-o", tmp_path / "m.onnx")
    assert code == 1 and err.strip() == (
        "error: bad value for the augment settings: random_resized_crop is [low, high] with "
        "low <= high; received [0.5, 0.1]"), err


def test_a_scalar_in_an_npz_is_named_as_one(capsys, spec, tmp_path):
    np.savez(tmp_path / "d.npz", x=np.float32(1.0), y=np.int64(0))
    code, _, err = cli(capsys, "train", spec, "--data", tmp_path / "d.npz", "-o", tmp_path / "m.onnx")
    assert code == 1 and "x is a single number" in err, err
