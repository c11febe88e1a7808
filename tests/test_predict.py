"""Preprocessing and labels travel with the model; `graphcnn predict`; --fold-preprocess.

The recipe is checked against torchvision's weight transforms on PIL images (skipped without
torchvision); the folded model against the unfolded one fed the recipe's floats.
"""
from __future__ import annotations

import copy
import json
import struct
import sys
import zlib

import numpy as np
import onnx
import pytest

from conftest import ROOT, SPECS, ort_run
from graphcnn.api import check_spec, compile_spec, load_spec
from graphcnn.cli import main
from graphcnn.deploy.foldpre import fold_preprocess
from graphcnn.deploy.preprocess import model_metadata, read_labels, read_recipe
from graphcnn.errors import DataError, SpecError
from graphcnn.runtime import images
from graphcnn.runtime.images import Recipe, load_image
from graphcnn.spec import NetworkSpec
from graphcnn.spec import labels as labels_module
from graphcnn.spec.labels import spec_labels

IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
TINY = """name: tiny
inputs: {image: [3, 16, 20]}
nodes:
  - {id: conv, op: conv2d, channels: 4, kernel: 3, padding: PAD}
  - {op: relu}
  - {id: pool, op: global_avgpool}
  - {id: fc, op: linear, features: 3}
preprocess: {resize: 18, crop: [16, 20], mean: [0.5, 0.4, 0.3], std: [0.2, 0.3, 0.25]}
labels: [cat, dog, bird]
"""
SEGMENT = """name: seg
inputs: {image: [3, 12, 12]}
nodes:
  - {id: conv, op: conv2d, channels: 3, kernel: 3, padding: same}
preprocess: {resize: [12, 12]}
labels: [sky, road, tree]
"""


def image(path, h, w, mode="RGB", seed=0):
    from PIL import Image

    bands = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    data = np.random.default_rng(seed).integers(0, 256, (h, w, bands), dtype=np.uint8)
    Image.fromarray(data.squeeze(-1) if bands == 1 else data, mode).save(path)
    return path


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Odd sizes, portrait and landscape, grayscale and RGBA, one smaller than the crop."""
    folder = tmp_path_factory.mktemp("pictures")
    sizes = [(300, 400, "RGB"), (401, 257, "L"), (200, 199, "RGBA"), (130, 100, "RGB"),
             (256, 256, "RGB")]
    return [image(folder / f"p{i}.png", h, w, mode, i) for i, (h, w, mode) in enumerate(sizes)]


@pytest.fixture(scope="module")
def tv():
    sys.path.insert(0, str(ROOT / "tools"))
    from torchvision_check import Missing, import_torchvision

    try:
        return import_torchvision()
    except Missing as exc:
        pytest.skip(f"torchvision: {exc}")


def torch_of(transform, path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return transform(im.convert("RGB")).numpy()


@pytest.mark.parametrize("weights, recipe", [
    ("ResNet50_Weights", Recipe(256, 224, "bilinear", **IMAGENET)),
    ("EfficientNet_B0_Weights", Recipe(256, 224, "bicubic", **IMAGENET)),
    ("Inception_V3_Weights", Recipe(342, 299, "bilinear", **IMAGENET)),
])
def test_recipe_equals_torchvision_weight_transforms(tv, pictures, weights, recipe):
    transform = getattr(tv.models, weights).IMAGENET1K_V1.transforms()
    for path in pictures:
        want = torch_of(transform, path)
        got = load_image(path, recipe)
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=str(path))


def test_crop_larger_than_image_pads_and_exact_sizes_as_torchvision(tv, pictures):
    T = tv.transforms
    cases = [(Recipe(40, (60, 50), "nearest", **IMAGENET),
              [T.Resize(40, T.InterpolationMode.NEAREST), T.CenterCrop((60, 50))]),
             (Recipe((30, 45), None, "bicubic"), [T.Resize((30, 45), T.InterpolationMode.BICUBIC)])]
    for recipe, steps in cases:
        norm = [T.Normalize(recipe.mean, recipe.std)] if recipe.mean else []
        transform = T.Compose([*steps, T.ToTensor(), *norm])
        for path in pictures:
            np.testing.assert_allclose(load_image(path, recipe), torch_of(transform, path),
                                       rtol=0, atol=1e-6)


def test_bgr_gray_and_range(pictures):
    from PIL import Image

    path = pictures[0]
    rgb = load_image(path, Recipe(channels="RGB"))
    np.testing.assert_array_equal(load_image(path, Recipe(channels="BGR")), rgb[::-1])
    gray = np.asarray(Image.open(path).convert("L"), np.float32)[None] / 255
    np.testing.assert_allclose(load_image(path, Recipe(channels="L")), gray, atol=1e-7)
    np.testing.assert_allclose(load_image(path, Recipe(range=(-1.0, 1.0))), rgb * 2 - 1, atol=1e-6)
    folded = load_image(path, Recipe(resize=[8, 9], folded=True))
    assert folded.dtype == np.uint8 and folded.shape == (3, 8, 9)


def spec_file(tmp_path, text, name="tiny.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def metadata(model) -> dict:
    return {p.key: p.value for p in model.metadata_props}


def test_shipped_spec_carries_preprocess_and_imagenet_labels():
    """resnet18 compiled (random weights): its file says how to feed it and what it says."""
    spec = load_spec(SPECS / "resnet18.yaml")
    meta = metadata(compile_spec(spec))
    assert json.loads(meta["graphcnn.preprocess"]) == {
        "resize": 256, "crop": 224, "interpolation": "bilinear", "range": [0.0, 1.0],
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "channels": "RGB"}
    names = json.loads(meta["graphcnn.labels"])
    assert len(names) == 1000 and names[0] == "tench"
    assert meta["Image.BitmapPixelFormat"] == "Rgb8" and meta["Image.ColorSpaceGamma"] == "SRGB"
    assert meta["Image.NominalPixelRange"] == "Normalized_0_1"
    assert model_metadata(spec).items() <= meta.items()


def test_metadata_reads_back_and_trained_models_carry_it(tmp_path):
    from graphcnn.train.trained_model import export_model
    from conftest import onnx_weights

    spec = load_spec(spec_file(tmp_path, TINY.replace("PAD", "valid")))
    checked = check_spec(spec)
    model = compile_spec(spec)
    recipe = read_recipe(model)
    assert recipe == Recipe(18, (16, 20), "bilinear", (0.0, 1.0), (0.5, 0.4, 0.3), (0.2, 0.3, 0.25))
    assert read_labels(model) == ["cat", "dog", "bird"]
    trained = export_model(checked, onnx_weights(model), tmp_path / "t.onnx", spec_text=spec.to_yaml())
    assert read_recipe(trained) == recipe and read_labels(trained) == ["cat", "dog", "bird"]


def labels_spec(tmp_path, lines: bytes, features=3):
    (tmp_path / "names.txt").write_bytes(lines)
    text = TINY.replace("PAD", "same").replace("labels: [cat, dog, bird]", "labels: names.txt")
    return spec_file(tmp_path, text.replace("features: 3", f"features: {features}"))


@pytest.mark.parametrize("content, message", [
    (b"cat\n\ndog\n", "line 2 is blank"),
    (b"cat\0\ndog\nbird\n", "NUL byte"),
    (b"cat\n\xff\nbird\n", "not UTF-8"),
])
def test_labels_file_errors_are_located(tmp_path, content, message):
    path = labels_spec(tmp_path, content)
    with pytest.raises(SpecError) as info:
        spec_labels(load_spec(path))
    assert message in str(info.value) and f"{path}:9:" in str(info.value)


def test_labels_file_bounds_and_count(tmp_path, monkeypatch, capsys):
    path = labels_spec(tmp_path, b"cat\r\ndog\r\nbird")  # CRLF, no final newline
    assert spec_labels(load_spec(path)) == ["cat", "dog", "bird"]
    monkeypatch.setattr(labels_module, "MAX_LABELS_BYTES", 10)
    with pytest.raises(SpecError, match="too large"):
        spec_labels(load_spec(path))
    monkeypatch.setattr(labels_module, "MAX_LABELS", 2)
    monkeypatch.setattr(labels_module, "MAX_LABELS_BYTES", 100)
    with pytest.raises(SpecError, match="3 lines"):
        spec_labels(load_spec(path))
    monkeypatch.undo()
    with pytest.raises(SpecError, match="read from text"):
        spec_labels(NetworkSpec.from_text(path.read_text()))
    wrong = labels_spec(tmp_path, b"cat\ndog\nbird\n", features=4)
    assert main(["check", str(wrong)]) == 1
    assert f"{wrong}:9:" in capsys.readouterr().err  # 3 names for 4 classes, at labels:
    (tmp_path / "names.txt").unlink()
    assert main(["check", str(path)]) == 1
    assert "cannot read labels file" in capsys.readouterr().err


def predict(capsys, *args):
    code = main(["predict", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_predict_spec_and_compiled_model(tmp_path, pictures, capsys):
    spec = spec_file(tmp_path, TINY.replace("PAD", "same"))
    code, text, err = predict(capsys, spec, *pictures[:2], "--top", "2")
    assert code == 0 and "random weights" in err
    lines = text.splitlines()  # header, [image] rank label index score, the score's kind
    assert lines[0].split() == ["image", "rank", "label", "index", "score"]
    assert [line.split()[-3] in ("cat", "dog", "bird") for line in lines[1:-1]] == [True] * 4
    assert lines[1].startswith(str(pictures[0])) and lines[-1] == "score: probability"
    onnx_path = tmp_path / "tiny.onnx"
    assert main(["compile", str(spec), "-o", str(onnx_path), "--batch", "2"]) == 0
    capsys.readouterr()
    code, text, err = predict(capsys, onnx_path, *pictures[:3], "--json")  # 3 images, batch 2
    assert code == 0 and err == ""
    result = json.loads(text)
    assert [r["path"] for r in result] == [str(p) for p in pictures[:3]]
    for row in result:
        assert [t["label"] for t in row["top"]] and len(row["top"]) == 3
        assert abs(sum(t["score"] for t in row["top"]) - 1) < 1e-6  # softmax of the logits
        assert {t["label"] for t in row["top"]} == {"cat", "dog", "bird"}


def test_predict_softmax_output_not_twice_and_segmentation(tmp_path, pictures, capsys):
    probs = spec_file(tmp_path, TINY.replace("PAD", "valid").replace(
        "features: 3}", "features: 3}\n  - {id: probs, op: softmax}"), "probs.yaml")
    model = compile_spec(probs)
    x = load_image(pictures[0], read_recipe(model))[None]
    want = ort_run(model, {"image": x})[0][0]
    code, text, _ = predict(capsys, probs, pictures[0], "--json", "--top", "1")
    top = json.loads(text)[0]["top"][0]
    assert code == 0 and abs(top["score"] - want.max()) < 1e-6
    seg = spec_file(tmp_path, SEGMENT, "seg.yaml")
    code, text, _ = predict(capsys, seg, pictures[0], "--json")
    row = json.loads(text)[0]
    assert code == 0 and row["measure"] == "pixel share"
    assert abs(sum(t["score"] for t in row["top"]) - 1) < 1e-9
    assert {t["label"] for t in row["top"]} <= {"sky", "road", "tree"}


def test_predict_without_recipe_and_with_a_wrong_size(tmp_path, pictures, capsys):
    bare = TINY.replace("PAD", "same").split("preprocess:")[0]
    code, text, err = predict(capsys, spec_file(tmp_path, bare, "bare.yaml"), pictures[1])
    assert code == 0 and "resized to 16x20" in err
    assert text.splitlines()[1].split()[2] in ("0", "1", "2")  # indices without labels
    wrong = TINY.replace("PAD", "same").replace("crop: [16, 20]", "crop: 16")
    code, _, err = predict(capsys, spec_file(tmp_path, wrong, "wrong.yaml"), pictures[0])
    assert code == 1 and "16x16" in err and "16x20" in err


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares a size and holds no pixels: what a decompression bomb's header says."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_bad_images_exit_1_naming_the_file(tmp_path, pictures, capsys, monkeypatch):
    spec = spec_file(tmp_path, TINY.replace("PAD", "same"))
    (tmp_path / "bomb.png").write_bytes(png_header(30000, 30000))
    jpeg = tmp_path / "cut.jpg"
    from PIL import Image
    Image.open(pictures[0]).convert("RGB").save(jpeg)
    jpeg.write_bytes(jpeg.read_bytes()[:2000])
    (tmp_path / "text.png").write_text("not an image")
    for name in ("bomb.png", "cut.jpg", "text.png", "missing.png"):
        code, _, err = predict(capsys, spec, tmp_path / name)
        assert code == 1 and str(tmp_path / name) in err and "Traceback" not in err
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)  # our own limit, under Pillow's
    with pytest.raises(DataError, match="declares 400x300 pixels"):
        load_image(pictures[0], Recipe())


@pytest.mark.parametrize("pad", ["same", "valid"])
def test_folded_model_on_pixels_equals_model_on_preprocessed_floats(tmp_path, pad, pictures, capsys):
    spec = spec_file(tmp_path, TINY.replace("PAD", pad))
    model = compile_spec(spec, seed=3)
    recipe = read_recipe(model)
    folded, note = fold_preprocess(copy.deepcopy(model), recipe)
    onnx.checker.check_model(folded, full_check=True)
    assert ("Add in front" in note) == (pad == "same") and "conv 'conv'" in note
    assert folded.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    meta = metadata(folded)
    assert meta["graphcnn.preprocess_folded"] == "true"
    assert meta["Image.NominalPixelRange"] == "NominalRange_0_255"
    pixels = np.stack([images.image_pixels(p, recipe) for p in pictures])
    floats = np.stack([images.normalise(p, recipe) for p in pixels])
    want = ort_run(model, {"image": floats})[0]
    got = ort_run(folded, {"image": pixels})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert read_recipe(folded).folded
    onnx.save(folded, str(tmp_path / "folded.onnx"))  # predict feeds it pixels
    onnx.save(model, str(tmp_path / "plain.onnx"))
    scores = [[t["score"] for t in json.loads(predict(capsys, tmp_path / name, *pictures,
                                                      "--json")[1])[0]["top"]]
              for name in ("folded.onnx", "plain.onnx")]
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-5)


def test_fold_with_other_consumers_and_bgr(tmp_path):
    """The input feeds the conv and a skip branch: the branch gets the explicit normalisation."""
    text = """name: two
inputs: {image: [3, 8, 8]}
nodes:
  - {id: conv, op: conv2d, channels: 3, kernel: 1}
  - {id: add, op: add, inputs: [conv, image]}
preprocess: {range: [-1, 1], mean: [0.1, 0.2, 0.3], std: [0.5, 0.6, 0.7], channels: BGR}
"""
    model = compile_spec(spec_file(tmp_path, text, "two.yaml"), seed=1)
    recipe = read_recipe(model)
    folded, note = fold_preprocess(copy.deepcopy(model), recipe)
    assert "Mul and Add in front of 'add'" in note
    assert metadata(folded)["Image.BitmapPixelFormat"] == "Bgr8"
    pixels = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    floats = np.stack([images.normalise(p, recipe) for p in pixels])
    np.testing.assert_allclose(ort_run(folded, {"image": pixels})[0],
                               ort_run(model, {"image": floats})[0], rtol=1e-5, atol=1e-6)


def test_run_feeds_uint8_pixels_to_a_folded_model(tmp_path, capsys):
    """`graphcnn run` on a --fold-preprocess model draws uint8 pixels for its uint8 input
    (it drew floats, which onnxruntime refused)."""
    text = """name: px
inputs: {image: [3, 8, 8]}
nodes:
  - {id: conv, op: conv2d, channels: 2, kernel: 3}
preprocess: {mean: [0.5, 0.5, 0.5], std: [0.2, 0.2, 0.2]}
"""
    spec = spec_file(tmp_path, text, "px.yaml")
    out = tmp_path / "px.onnx"
    assert main(["compile", str(spec), "--fold-preprocess", "-o", str(out)]) == 0
    assert onnx.load(str(out)).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    capsys.readouterr()
    assert main(["run", str(out)]) == 0
    assert "conv: shape [1, 2, 6, 6]" in capsys.readouterr().out
