"""Images into model inputs: Pillow decoding and a model's preprocessing recipe.

The recipe computes what torchvision's weight transforms compute on a PIL image
(`ResNet50_Weights.IMAGENET1K_V1.transforms()` and the like): Resize (the shorter side to
`resize`, the longer one int(resize * long / short), or exactly [H, W]; Pillow's antialiased
filters), CenterCrop (torchvision's rounding, zero padding when the crop is larger), ToTensor
(x / 255, here mapped onto `range`) and Normalize. The image is first converted to RGB or L,
as torchvision's ImageFolder loader does; BGR reverses RGB. Bounded: an image whose header
declares more than MAX_PIXELS pixels is refused before it is decoded.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..fileio import existing_file

MAX_PIXELS = 200_000_000
Size = tuple[int, int]


@dataclass(frozen=True)
class Recipe:
    """How to turn an image into the model's input (the spec's `preprocess:` section). With
    `folded` the model normalises itself and takes uint8 pixels (compile --fold-preprocess)."""

    resize: int | Size | None = None
    crop: int | Size | None = None
    interpolation: str = "bilinear"
    range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channels: str = "RGB"
    folded: bool = False

    @classmethod
    def of(cls, section, folded: bool = False) -> "Recipe":
        """From a PreprocessSection (or anything with its fields)."""
        def seq(v):
            return tuple(v) if isinstance(v, (list, tuple)) else v
        return cls(seq(section.resize), seq(section.crop), section.interpolation,
                   tuple(section.range), seq(section.mean), seq(section.std), section.channels,
                   folded)

    @property
    def channel_count(self) -> int:
        return 1 if self.channels == "L" else 3

    def size_for(self, height: int, width: int) -> Size:
        """The (H, W) an image of this size becomes."""
        if self.crop is not None:
            return _pair(self.crop)
        return resized_size(height, width, self.resize)

    def fixed_size(self) -> Size | None:
        """The (H, W) every image becomes, or None when it depends on the image."""
        if self.crop is not None:
            return _pair(self.crop)
        return tuple(self.resize) if isinstance(self.resize, tuple) else None

    def describe(self) -> str:
        parts = [f"resize {_text(self.resize)}" if self.resize else "no resize",
                 f"crop {_text(self.crop)}" if self.crop else "no crop"]
        return ", ".join(parts)


def _pair(size) -> Size:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _text(size) -> str:
    return str(size) if isinstance(size, int) else "x".join(map(str, size))


def resized_size(height: int, width: int, resize) -> Size:
    """torchvision's _compute_resized_output_size: an int sets the shorter side and the longer
    one becomes int(resize * long / short); [H, W] is taken as it is."""
    if resize is None:
        return height, width
    if not isinstance(resize, int):
        return _pair(resize)
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(resize * long / short)
    return (new_long, resize) if width <= height else (resize, new_long)


def open_image(path: str | Path, mode: str = "RGB", data: bytes | None = None):
    """The decoded image in `mode` (RGB or L); every failure is a DataError naming the file.
    `data`: the file's bytes, already read (Ray reads them), decoded as the file would be."""
    import io

    from PIL import Image

    path = Path(path)
    if data is None:
        existing_file(path, "image", DataError)
    source = io.BytesIO(data) if data is not None else path
    try:
        with warnings.catch_warnings():  # the size is checked here, against MAX_PIXELS
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                _check_pixels(path, im.size)
                im.load()
                return _eight_bit(im).convert(mode)
    except DataError:
        raise
    except Image.DecompressionBombError:  # Pillow's own limit, checked as it opens the file
        pillow = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else MAX_PIXELS
        raise DataError(f"image {path} declares too many pixels (a decompression bomb?)",
                        expected=f"at most {min(MAX_PIXELS, pillow):,} pixels") from None
    except MemoryError:
        raise DataError(f"image {path} does not fit in memory") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, struct.error ... on bad files
        text = str(exc).replace(repr(source), repr(str(path)))  # bytes or file: one message
        raise DataError(f"cannot read image {path}: {text or type(exc).__name__}") from None


def _eight_bit(im):
    """A 16-bit grayscale image (PNG, TIFF) scaled to 0..255: Pillow's convert clips it,
    so a 0..65535 gradient would come out all white past its first 255 levels."""
    from PIL import Image

    if not (im.mode.startswith("I;16") or im.mode == "I"):
        return im
    values = np.asarray(im)
    if im.mode == "I" and values.min(initial=0) >= 0 and values.max(initial=0) <= 255:
        return im  # 32-bit integers that hold 8-bit values: nothing to scale
    wide = np.clip(values, 0, 65535).astype(np.uint32)
    scaled = (wide * 255 + 32767) // 65535  # rounded, as ImageMagick maps 16 bits to 8
    return Image.fromarray(scaled.astype(np.uint8), "L")


def _check_pixels(path: Path, size: Size) -> None:
    width, height = size
    if width * height > MAX_PIXELS:
        raise DataError(f"image {path} declares {width}x{height} pixels (a decompression bomb?)",
                        expected=f"at most {MAX_PIXELS:,} pixels")


def image_pixels(path: str | Path, recipe: Recipe, size: Size | None = None,
                 data: bytes | None = None) -> np.ndarray:
    """uint8 [C, H, W] in the recipe's channel order, resized and center-cropped; `size`
    resizes exactly to (H, W) instead (for a model without a recipe); `data`: the file's bytes."""
    im = open_image(path, "L" if recipe.channels == "L" else "RGB", data)
    im = resize(im, (size[0], size[1]) if size is not None else recipe.resize, recipe.interpolation,
                path)
    data = np.asarray(im, dtype=np.uint8)
    data = data[:, :, None] if data.ndim == 2 else data
    if recipe.crop is not None and size is None:
        data = center_crop(data, _pair(recipe.crop))
    if recipe.channels == "BGR":
        data = data[:, :, ::-1]
    return np.ascontiguousarray(data.transpose(2, 0, 1))


def resize(im, resize_to, interpolation: str = "bilinear", path: str | Path | None = None):
    """torchvision's Resize on a PIL image (Pillow's filters antialias when they shrink).
    The result's size is checked against MAX_PIXELS too: resizing the short side of a long thin
    image (a 1,000,000 x 1 strip of 1 KB, to 64) would make it 64,000,000 x 64."""
    from PIL import Image

    filters = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
    height, width = resized_size(im.height, im.width, resize_to)
    if (height, width) == (im.height, im.width):
        return im
    if height * width > MAX_PIXELS:
        raise DataError(f"image {path or ''}: resizing its {im.width}x{im.height} pixels to "
                        f"{resize_to} would make {width}x{height}",
                        expected=f"at most {MAX_PIXELS:,} pixels after the resize")
    return im.resize((width, height), filters[interpolation])


def center_crop(data: np.ndarray, crop: Size) -> np.ndarray:
    """torchvision's CenterCrop on [H, W, C]: zero padding first when the crop is larger."""
    height, width = data.shape[:2]
    ch, cw = crop
    if ch > height or cw > width:
        pad_h, pad_w = max(ch - height, 0), max(cw - width, 0)
        data = np.pad(data, ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2), (0, 0)))
        height, width = data.shape[:2]
    top = int(round((height - ch) / 2.0))
    left = int(round((width - cw) / 2.0))
    return data[top:top + ch, left:left + cw]


def normalise(pixels: np.ndarray, recipe: Recipe) -> np.ndarray:
    """float32 [C, H, W]: pixels / 255 mapped onto the recipe's range, then (x - mean) / std,
    in float32 and in torchvision's order of operations (so the results agree to rounding)."""
    x = pixels.astype(np.float32) / np.float32(255)
    low, high = recipe.range
    if (low, high) != (0.0, 1.0):
        x = x * np.float32(high - low) + np.float32(low)
    if recipe.mean is not None:
        x = x - np.asarray(recipe.mean, np.float32)[:, None, None]
    if recipe.std is not None:
        x = x / np.asarray(recipe.std, np.float32)[:, None, None]
    return x


def load_image(path: str | Path, recipe: Recipe, size: Size | None = None,
               data: bytes | None = None) -> np.ndarray:
    """The model input of one image, [C, H, W]: float32, or uint8 pixels for a folded model."""
    pixels = image_pixels(path, recipe, size, data)
    return pixels if recipe.folded else normalise(pixels, recipe)


def load_images(paths, recipe: Recipe, size: Size | None = None) -> np.ndarray:
    """[N, C, H, W] of images that come out the same size (else a DataError naming them)."""
    arrays = [load_image(p, recipe, size) for p in paths]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataError("these images come out at different sizes; run them one at a time",
                        received=", ".join(f"{p}: {list(a.shape[1:])}" for p, a in zip(paths, arrays)))
    return np.stack(arrays)
