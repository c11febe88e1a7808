"""Image files as training data: each image turned into the network's input by the model's own
recipe (augmented when training), in batches decoded by worker threads ahead of the step.

The loader keeps at most `ahead` batches decoded or in flight (a bounded queue), so a dataset
larger than memory trains; the step, not the loader, sets the pace as long as the workers keep
up (the loop measures how long it waited). Threads, not processes: Pillow decodes and resizes
with the GIL released, and a batch handed over needs no copy between processes.

Deterministic for a seed whatever the number of workers: the order is the epoch's shuffle
(the same one an .npz of the same images gets), batches are handed over in that order, and each
image's augmentation draws come from a generator seeded by (seed, epoch, image number).
An image that cannot be read or comes out at the wrong size is skipped (its row gets mask 0)
and listed; past `max_bad` of the dataset the run stops with the list.
"""
from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import DataError
from ..runtime.images import Recipe, image_pixels, normalise, open_image
from ..spec.training import AugmentSection
from .augment import pad_random_crop, random_hflip, random_resized_crop_box, resized_crop
from .data import Batch, batch_plans
from .folders import ImageList


@dataclass(frozen=True)
class ImageTransform:
    """One image file -> the network's input [C, H, W] (float32), as the exported model's
    recipe makes it; `exact`: no recipe in the spec, so images are resized to exactly the
    input's size (as `graphcnn predict` then does)."""

    recipe: Recipe
    shape: tuple[int, int, int]
    exact: bool = False
    augment: AugmentSection = AugmentSection()
    seed: int = 0

    def evaluation(self, path: Path) -> np.ndarray:
        return self._checked(path, normalise(self._pixels(path), self.recipe))

    def training(self, path: Path, epoch: int, number: int) -> np.ndarray:
        """With augmentation, drawn from (seed, epoch, number): the same for any worker."""
        if not self.augment.active:
            return self.evaluation(path)
        rng = np.random.default_rng([self.seed, epoch, number])
        a = self.augment
        pixels = self._random_crop(path, rng) if a.random_resized_crop else self._pixels(path)
        pixels = pad_random_crop(pixels, a.pad_crop, rng) if a.pad_crop else pixels
        pixels = random_hflip(pixels, a.hflip, rng) if a.hflip else pixels
        return self._checked(path, normalise(pixels, self.recipe))

    def _pixels(self, path: Path) -> np.ndarray:
        return image_pixels(path, self.recipe, self.shape[1:] if self.exact else None)

    def _random_crop(self, path: Path, rng) -> np.ndarray:
        im = open_image(path, "L" if self.recipe.channels == "L" else "RGB")
        a = self.augment
        box = random_resized_crop_box(rng, im.height, im.width, a.random_resized_crop, a.ratio)
        data = np.asarray(resized_crop(im, box, self.shape[1:], self.recipe.interpolation))
        data = data[:, :, None] if data.ndim == 2 else data
        data = data[:, :, ::-1] if self.recipe.channels == "BGR" else data
        return np.ascontiguousarray(data.transpose(2, 0, 1))

    def _checked(self, path: Path, x: np.ndarray) -> np.ndarray:
        if x.shape != self.shape:
            raise DataError(f"image {path} comes out at {list(x.shape)}; the network takes "
                            f"{list(self.shape)}", hint="set `preprocess: {resize: [H, W]}`")
        return x


class BadImages:
    """The unreadable images found so far ({path: why}), shared by the worker threads."""

    def __init__(self, total: int, max_share: float):
        self.limit, self.total = int(max_share * total), total
        self.found: dict[str, str] = {}
        self._unreported: list[str] = []
        self._lock = threading.Lock()

    def add(self, path: Path, why: str) -> None:
        with self._lock:
            if str(path) not in self.found:
                self.found[str(path)] = why
                self._unreported.append(str(path))

    def notes(self) -> list[str]:
        """One line per image found since the last call."""
        with self._lock:
            fresh, self._unreported = self._unreported, []
        return [f"skipped: {self.found[p]}" for p in fresh]

    def check(self) -> None:
        if len(self.found) > self.limit:
            listed = "; ".join(list(self.found.values())[:5])
            raise DataError(f"{len(self.found)} of {self.total} images cannot be used, more than "
                            f"max_bad allows ({self.limit}): {listed}",
                            hint="fix or remove them, or raise --max-bad (a share of the images)")


class ImageSource:
    """Images and labels read through a transform, batch by batch, `workers` threads ahead."""

    def __init__(self, images: ImageList, transform: ImageTransform, bad: BadImages,
                 workers: int = 2):
        self.images, self.transform, self.bad = images, transform, bad
        self.workers = workers
        self.pool = ThreadPoolExecutor(workers, "graphcnn-loader") if workers > 0 else None

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, batch: int, rng: np.random.Generator, epoch: int) -> Iterator[Batch]:
        """One shuffled pass, drawn from `rng` exactly as data.epoch_batches draws it."""
        def read(plan) -> Batch:
            index, real = plan
            rows = [self._row(int(i), lambda p, i=i: self.transform.training(p, epoch, int(i)))
                    for i in index]
            return self._batch(rows, index, real)
        for result in self._ahead(read, batch_plans(len(self), batch, rng)):
            self.bad.check()
            yield result

    def chunks(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The images in order, `size` at a time, for evaluation; unreadable ones left out."""
        def read(start: int):
            index = np.arange(start, min(start + size, len(self)))
            rows = [self._row(int(i), self.transform.evaluation) for i in index]
            kept = [i for i, row in zip(index, rows) if row is not None]
            return (np.stack([r for r in rows if r is not None]) if kept else None,
                    self.images.labels[kept])
        for x, y in self._ahead(read, range(0, len(self), size)):
            self.bad.check()
            if x is not None:
                yield x, y

    def _row(self, i: int, make: Callable[[Path], np.ndarray]) -> np.ndarray | None:
        path = self.images.paths[i]
        try:
            return make(path)
        except DataError as exc:
            self.bad.add(path, exc.message)  # the message names the file
            return None

    def _batch(self, rows: list, index: np.ndarray, real: int) -> Batch:
        mask = np.array([r is not None and k < real for k, r in enumerate(rows)], np.float32)
        blank = np.zeros(self.transform.shape, np.float32)
        x = np.stack([blank if r is None else r for r in rows])
        return Batch(x, self.images.labels[index], mask, real)

    def _ahead(self, read: Callable, items) -> Iterator:
        """read(item) for every item, in order, at most 2 x workers of them in flight."""
        if self.pool is None:
            yield from map(read, items)
            return
        items = iter(items)
        pending = deque(self.pool.submit(read, item) for item in islice(items, 2 * self.workers))
        try:
            while pending:
                done = pending.popleft().result()
                pending.extend(self.pool.submit(read, item) for item in islice(items, 1))
                yield done
        finally:  # the consumer stopped early (an error, a kill): drop what was queued
            for future in pending:
                future.cancel()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
