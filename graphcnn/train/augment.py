"""Training-time augmentation of one image, torchvision's transforms written in numpy/Pillow.

Each random transform takes a numpy Generator: the loader seeds one per image from (seed,
epoch, image number), so the draws do not depend on the order or the thread an image is
decoded in. The draws follow torchvision's algorithms (RandomResizedCrop.get_params,
RandomCrop with padding, RandomHorizontalFlip); the random numbers themselves are numpy's.
After augmentation the image goes through the same normalisation as at inference
(runtime/images.normalise: the model's `preprocess:` recipe).
"""
from __future__ import annotations

import math

import numpy as np

Box = tuple[int, int, int, int]  # top, left, height, width


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int,
                            scale: tuple[float, float], ratio: tuple[float, float]) -> Box:
    """torchvision's RandomResizedCrop.get_params: up to 10 draws of an area share in `scale`
    and a log-uniform aspect ratio in `ratio`; the first crop that fits wins, else a center
    crop clamped to `ratio`."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    return center_box(height, width, ratio)


def center_box(height: int, width: int, ratio: tuple[float, float]) -> Box:
    """RandomResizedCrop's fallback: the largest centered crop with an aspect within `ratio`."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        h, w = int(round(width / min(ratio))), width
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(im, box: Box, size: tuple[int, int], interpolation: str = "bilinear"):
    """torchvision's F.resized_crop on a PIL image: crop `box`, then resize to `size` (H, W)."""
    from ..runtime.images import resize

    top, left, h, w = box
    return resize(im.crop((left, top, left + w, top + h)), tuple(size), interpolation)


def pad_random_crop(data: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
    """torchvision's RandomCrop(size of the image, padding): zeros on every side, then a crop
    of the original size at a uniformly drawn offset (top, then left). data: [C, H, W]."""
    if padding == 0:
        return data
    height, width = data.shape[1:]
    padded = np.pad(data, ((0, 0), (padding, padding), (padding, padding)))
    top = int(rng.integers(0, 2 * padding + 1))
    left = int(rng.integers(0, 2 * padding + 1))
    return padded[:, top:top + height, left:left + width]


def random_hflip(data: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """torchvision's RandomHorizontalFlip: mirror left-right with probability p. data: [C, H, W]."""
    flip = rng.random() < p
    return data[:, :, ::-1] if flip else data
