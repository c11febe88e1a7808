"""Which images a dataset holds, and their classes: a folder of class folders, or a CSV.

    DIR/<class>/*.png|jpg|jpeg|bmp|webp   one folder per class (torchvision's ImageFolder: the
                                          classes sorted by name, the files found recursively)
    DIR/val/<class>/...                   optional: the held-out set (the classes are then DIR's
                                          other folders, or DIR/train/'s when there is one)
    FILE.csv                              `path,label` rows, paths relative to the CSV; labels
                                          are class numbers or class names (a header row optional)

Only names are read here, no pixels: a listing is cheap, and its mistakes (no images, an
empty class, an unknown label) are errors before training; unreadable files are found as they
are decoded (train/images.py).
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
INTEGER = re.compile(r"-?[0-9]+")  # ASCII digits: str.isdigit also takes "²"


@dataclass(frozen=True)
class ImageList:
    """Image files and their class numbers, in a fixed order (the order shuffles start from)."""

    paths: tuple[Path, ...]
    labels: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index) -> "ImageList":
        return ImageList(tuple(self.paths[i] for i in index), self.labels[index])


def is_image(path: Path) -> bool:
    return path.suffix.lower() in EXTENSIONS and path.is_file()


def class_folders(root: Path) -> dict[str, list[Path]]:
    """{class name: its image files} of one folder of class folders, every class non-empty."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root}: no class folders", expected="one folder of images per class, "
                        f"e.g. {root}/cat/1.png")
    for folder in folders:
        readable_name(folder)
    found = {f.name: sorted(p for p in f.rglob("*") if is_image(p)) for f in folders}
    empty = [name for name, files in found.items() if not files]
    if len(empty) == len(found):
        raise DataError(f"{root}: no images in its class folders",
                        expected=f"files ending in {', '.join(EXTENSIONS)}")
    if empty:
        raise DataError(f"{root}: class folder '{empty[0]}' holds no images"
                        + (f" (nor do {', '.join(empty[1:4])})" if len(empty) > 1 else ""),
                        expected=f"files ending in {', '.join(EXTENSIONS)} in every class folder")
    return found


def readable_name(folder: Path) -> None:
    """A class name goes into the model's metadata and the metrics as UTF-8 text: a folder
    name of other bytes (decoded by Python as lone surrogates) is refused before training."""
    try:
        folder.name.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"class folder {ascii(str(folder))}: its name is not UTF-8 text",
                        expected="class folder names in UTF-8 (they become the model's labels)",
                        hint="rename the folder") from None


def folder_dataset(root: Path, names: list[str] | None = None):
    """(training images, held-out images or None, class names) of a folder dataset. `names`:
    the spec's labels, which number the classes; without them the sorted folder names do."""
    base = root / "train" if (root / "train").is_dir() and (root / "val").is_dir() else root
    train = {k: v for k, v in class_folders(base).items() if base != root or k != "val"}
    names = names if names is not None else sorted(train)
    number = class_numbers(root, names, train)
    val = class_folders(root / "val") if (root / "val").is_dir() else None
    if val is not None:
        class_numbers(root / "val", names, val)
    return listed(train, number), listed(val, number) if val else None, list(names)


def class_numbers(root: Path, names: list[str], found: dict) -> dict[str, int]:
    number = {name: i for i, name in enumerate(names)}
    unknown = [name for name in found if name not in number]
    if unknown:
        raise DataError(f"{root}: class folder '{unknown[0]}' is not one of the spec's labels",
                        expected=", ".join(names[:10]) + (" ..." if len(names) > 10 else ""))
    return number


def listed(found: dict[str, list[Path]], number: dict[str, int]) -> ImageList:
    paths = [p for name in found for p in found[name]]
    labels = [number[name] for name in found for _ in found[name]]
    return ImageList(tuple(paths), np.array(labels, np.int64))


def csv_dataset(path: Path, names: list[str] | None = None):
    """(images, class names or None) of a CSV of `path,label` rows."""
    rows = csv_rows(path)
    labels = [label for _, label in rows]
    if all(INTEGER.fullmatch(label) for label in labels):
        row = next((i for i, label in enumerate(labels, 1) if abs(int(label)) >= 2 ** 31), None)
        if row is not None:  # the class-count check comes later, on int64 numbers
            raise DataError(f"{path}: row {row}'s label is out of range", received=labels[row - 1],
                            expected="a class number from 0")
        numbers = np.array([int(label) for label in labels], np.int64)
    else:
        names = names if names is not None else sorted(set(labels))
        number = {name: i for i, name in enumerate(names)}
        unknown = next((label for label in labels if label not in number), None)
        if unknown is not None:
            raise DataError(f"{path}: label '{unknown}' is not one of the spec's labels",
                            expected=", ".join(names[:10]) + (" ..." if len(names) > 10 else ""))
        numbers = np.array([number[label] for label in labels], np.int64)
    files = tuple(path.parent / p for p, _ in rows)
    return ImageList(files, numbers), names


def csv_rows(path: Path) -> list[tuple[str, str]]:
    """The (path, label) rows; a first row `path,label` is a header."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [row for row in csv.reader(fh) if row and any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if rows and [c.strip().lower() for c in rows[0]] == ["path", "label"]:
        rows = rows[1:]
    bad = next((i for i, row in enumerate(rows, 1) if len(row) != 2 or not row[0].strip()), None)
    if bad is not None:
        raise DataError(f"{path}: row {bad} is not `path,label`", received=",".join(rows[bad - 1]))
    if not rows:
        raise DataError(f"{path}: no rows", expected="`path,label` rows, one per image")
    return [(p.strip(), label.strip()) for p, label in rows]
