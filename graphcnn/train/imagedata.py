"""A dataset of image files (a folder of class folders, or a CSV), checked against the spec
before training: the classes against the network's output, the images' recipe against its
input, and one image decoded, so a wrong size or channel count fails at once.

The dataset answers the loop as an in-memory Dataset does (train/data.py), but streams: the
training images through ImageSource.batches, the held-out ones through ImageSource.chunks.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import DataError
from ..runtime.images import Recipe
from .data import Batch, split_off
from .folders import ImageList, csv_dataset, folder_dataset
from .images import BadImages, ImageSource, ImageTransform

CHUNK_BYTES = 64 * 2 ** 20  # the held-out set is evaluated in chunks up to this size


@dataclass
class ImageData:
    train: ImageSource
    val: ImageSource | None
    classes: list[str] | None
    bad: BadImages

    def __len__(self) -> int:
        return len(self.train)

    def batches(self, batch: int, rng: np.random.Generator, epoch: int) -> Iterator[Batch]:
        return self.train.batches(batch, rng, epoch)

    @property
    def has_held_out(self) -> bool:
        return self.val is not None

    def held_out(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The held-out images in chunks of `size`, fewer when that would pass 64 MB."""
        fits = CHUNK_BYTES // (4 * int(np.prod(self.val.transform.shape)))
        return self.val.chunks(max(1, min(size, fits)))

    def notes(self) -> list[str]:
        return self.bad.notes()

    def close(self) -> None:
        for source in (self.train, self.val):
            if source is not None:
                source.close()


def is_image_data(path: Path) -> bool:
    return path.is_dir() or path.suffix.lower() == ".csv"


def image_data(path: Path, checked, recipe, workers: int = 2) -> ImageData:
    """The dataset at `path` for the checked spec and its training recipe (val, augment,
    max_bad, seed, loss)."""
    from ..spec.labels import checked_labels

    classes = class_count(checked, recipe.loss)
    names = checked_labels(checked, required=False)
    if path.is_dir():
        train, val, names = folder_dataset(path, names)
    else:
        (train, names), val = csv_dataset(path, names), None
    check_classes(path, train, val, names, classes)
    train, val = held_out(path, train, val, recipe)
    transform = image_transform(checked, recipe)
    bad = BadImages(len(train) + (len(val) if val else 0), recipe.max_bad)
    probe(train, transform)
    return ImageData(ImageSource(train, transform, bad, workers),
                     ImageSource(val, transform, bad, workers) if val else None, names, bad)


def class_count(checked, loss: str) -> int:
    """The network's number of classes: its output must be class scores [N, C]."""
    shape = checked.shape_of(checked.outputs[0])
    if loss != "cross_entropy" or len(shape) != 1:
        raise DataError("image folders and CSVs give one class per image: they train networks "
                        "whose output is class scores [N, C] with loss cross_entropy",
                        received=f"output [N, {', '.join(map(str, shape))}], loss {loss}")
    return shape[0]


def check_classes(path: Path, train: ImageList, val: ImageList | None, names, classes: int):
    if names is not None and len(names) != classes:
        raise DataError(f"{path} has {len(names)} classes and the network's output {classes}",
                        hint="give the network one output per class (--head-classes K)")
    for images in (train, val):
        if images is not None and ((images.labels < 0) | (images.labels >= classes)).any():
            bad = int(images.labels[(images.labels < 0) | (images.labels >= classes)][0])
            raise DataError(f"{path} has a label out of range", expected=f"0..{classes - 1}",
                            received=str(bad))


def held_out(path: Path, train: ImageList, val: ImageList | None, recipe):
    """(training images, held-out images or None): the val/ folder, or `val` of the rest."""
    if recipe.val is None:
        return train, val
    if val is not None:
        raise DataError(f"{path} has a val/ folder of its own",
                        hint="leave out --val (or `val:` in the training section)")
    kept, held = split_off(train.labels, recipe.val, recipe.seed)
    return train.subset(kept), train.subset(held)


def image_transform(checked, recipe) -> ImageTransform:
    """The spec's `preprocess:` recipe (or, without one, the input's size and channels)."""
    (_, shape), = checked.inputs.items()
    shape = tuple(int(d) for d in shape)
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise DataError("images train networks whose input is [1 or 3, H, W]",
                        received=f"[{', '.join(map(str, shape))}]")
    section = getattr(checked.spec, "preprocess", None)
    image_recipe = Recipe.of(section) if section is not None else \
        Recipe(channels="L" if shape[0] == 1 else "RGB")
    if image_recipe.channel_count != shape[0]:
        raise DataError(f"`preprocess: {{channels: {image_recipe.channels}}}` gives "
                        f"{image_recipe.channel_count} channels and the input takes {shape[0]}")
    return ImageTransform(image_recipe, shape, exact=section is None, augment=recipe.augment,
                          seed=recipe.seed)


def probe(images: ImageList, transform: ImageTransform) -> None:
    """Decode the first images until one works; none of the first 5: the first one's error."""
    errors = []
    for path in images.paths[:5]:
        try:
            transform.evaluation(path)
            return
        except DataError as exc:
            errors.append(exc)
    raise errors[0]
