"""Batch prediction over a whole dataset (`graphcnn predict MODEL --data D --out O`): the image
listing, the result rows and their writers, and the local engine. The Ray engine
(deploy/ray_job.py) lists with the same function and makes its rows with the same one, so the
two runs give the same rows, score for score.

Rows: `path` (absolute, as every node of a cluster reads it), then `label_i`, `index_i`,
`score_i` for i = 1..K, or with `raw` the first output flattened (`output`), and `error`: why an
image could not be used (its scores are then empty). A bad image is a row, never a failed job.
"""
from __future__ import annotations

import csv
import json
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, GraphCnnError, RunError
from ..train.folders import EXTENSIONS

Columns = dict[str, list]


@dataclass(frozen=True)
class Layout:
    """The columns of the result rows: the top `k` classes, or the raw first output."""

    k: int = 5
    raw: bool = False

    def names(self) -> list[tuple[str, str]]:
        """(column, type): type is one of string, int64, float64, list<float32>."""
        if self.raw:
            middle = [("output", "list<float32>")]
        else:
            middle = [(f"{name}_{i}", kind) for i in range(1, self.k + 1)
                      for name, kind in (("label", "string"), ("index", "int64"),
                                         ("score", "float64"))]
        return [("path", "string"), *middle, ("error", "string")]


@dataclass(frozen=True)
class Summary:
    rows: int
    errors: int
    seconds: float

    def line(self, out) -> str:
        rate = self.rows / self.seconds if self.seconds else 0.0
        return (f"wrote {out}: {self.rows:,} rows ({self.errors:,} with an error) in "
                f"{self.seconds:.1f} s, {rate:,.1f} images/s")


# -- the listing -------------------------------------------------------------------------------

def list_images(data: str | Path) -> list[str]:
    """The images of a dataset, as absolute paths: a folder (image files found recursively,
    sorted, hidden names skipped), a CSV whose first column is the path (relative to the CSV;
    a first row `path,...` is a header) or a Parquet file with a `path` column."""
    data = Path(data)
    if data.is_dir():
        found = sorted(str(p) for p in data.rglob("*") if _listed(p, data))
    elif data.suffix.lower() == ".csv":
        found = [str(data.parent / p) for p in _csv_paths(data)]
    elif data.suffix.lower() == ".parquet":
        found = [str(data.parent / p) for p in _parquet_paths(data)]
    else:
        raise DataError(f"--data {data}: not a folder, a .csv or a .parquet file")
    if not found:
        raise DataError(f"{data}: no images", expected=f"files ending in {', '.join(EXTENSIONS)}")
    return [os.path.abspath(p) for p in found]


def _listed(path: Path, root: Path) -> bool:
    hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
    return not hidden and path.suffix.lower() in EXTENSIONS and path.is_file()


def _csv_paths(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [row for row in csv.reader(fh) if row and row[0].strip()]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if rows and rows[0][0].strip().lower() == "path":
        rows = rows[1:]
    return [row[0].strip() for row in rows]


def _parquet_paths(path: Path) -> list[str]:
    pq = import_pyarrow(f"reading {path}").parquet
    try:
        table = pq.read_table(path, columns=["path"])
    except Exception as exc:  # pyarrow's own errors: not Parquet, no `path` column, ...
        raise DataError(f"cannot read the `path` column of {path}: {exc}") from None
    return [p for p in table.column("path").to_pylist() if p]


def import_pyarrow(why: str):
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise RunError(f"{why} needs pyarrow", hint="pip install 'graphcnn[predict]', or write "
                       "--out FILE.csv") from None
    return pyarrow


# -- images in, rows out -----------------------------------------------------------------------

def missing(path: str) -> str:
    return f"no such image: {path}"


def decode(predictor, path: str, data: bytes | None = None):
    """(the model input [C, H, W], None) or (None, why not): the file's bytes are read here
    unless given (Ray reads them), and decoded from bytes either way, so both engines see the
    same pixels and the same error text."""
    try:
        if data is None:
            data = Path(path).read_bytes()
        return predictor.load(path, data), None
    except FileNotFoundError:
        return None, missing(path)
    except OSError as exc:
        return None, f"cannot read image {path}: {exc.strerror or exc}"
    except GraphCnnError as exc:
        return None, str(exc)


def result_columns(predictor, layout: Layout, decoded, paths) -> Columns:
    """The rows of one batch: `decoded` holds (input, error) per path, in order."""
    kept = [i for i, (x, _) in enumerate(decoded) if x is not None]
    outputs = dict(zip(kept, predictor.predict([decoded[i][0] for i in kept])))
    columns: Columns = {name: [] for name, _ in layout.names()}
    for i, path in enumerate(paths):
        columns["path"].append(utf8_text(path))
        columns["error"].append(utf8_text(decoded[i][1]))
        _add_result(columns, predictor, layout, outputs.get(i))
    return columns


def _add_result(columns: Columns, predictor, layout: Layout, y) -> None:
    if layout.raw:
        columns["output"].append(None if y is None else y.astype(np.float32).ravel().tolist())
        return
    top = predictor.top(y, layout.k)["top"] if y is not None else []
    for rank in range(1, layout.k + 1):
        item = top[rank - 1] if rank <= len(top) else {}
        for key in ("label", "index", "score"):
            columns[f"{key}_{rank}"].append(item.get(key))


def error_columns(layout: Layout, paths, errors) -> Columns:
    """Rows of images that never reached a model (missing files)."""
    columns: Columns = {name: [None] * len(paths) for name, _ in layout.names()}
    columns["path"], columns["error"] = list(map(utf8_text, paths)), list(map(utf8_text, errors))
    return columns


def utf8_text(text: str | None) -> str | None:
    """A file name that is no UTF-8 (Python holds its bytes as lone surrogates) written with
    its bytes escaped, \\xe9: CSV and Parquet cells are UTF-8 text."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def arrow_table(columns: Columns, layout: Layout):
    """The rows as a pyarrow Table with the layout's fixed schema (an all-empty column keeps
    its type, so every part of a Ray run has the same schema)."""
    pa = import_pyarrow("writing Parquet")
    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(),
             "list<float32>": pa.list_(pa.float32())}
    schema = pa.schema([(name, types[kind]) for name, kind in layout.names()])
    return pa.table({name: pa.array(columns[name], schema.field(name).type)
                     for name in schema.names}, schema=schema)


# -- writers -----------------------------------------------------------------------------------

class ParquetRows:
    def __init__(self, path: Path, layout: Layout):
        self.layout, self.writer = layout, None
        self.path = path

    def write(self, columns: Columns) -> None:
        table = arrow_table(columns, self.layout)
        if self.writer is None:
            self.writer = import_pyarrow("writing Parquet").parquet.ParquetWriter(
                self.path, table.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is None:  # no batch at all: an empty file with the schema
            self.write(error_columns(self.layout, [], []))
        self.writer.close()


class CsvRows:
    """CSV, no pyarrow needed: empty cells for missing values, a raw output as a JSON list."""

    def __init__(self, path: Path, layout: Layout):
        self.fh = open(path, "w", newline="", encoding="utf-8")
        self.names = [name for name, _ in layout.names()]
        self.writer = csv.writer(self.fh)
        self.writer.writerow(self.names)

    def write(self, columns: Columns) -> None:
        for row in zip(*(columns[name] for name in self.names)):
            self.writer.writerow([_cell(v) for v in row])

    def close(self) -> None:
        self.fh.close()


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return json.dumps(value)
    return repr(value) if isinstance(value, float) else str(value)


def rows_writer(path: Path, layout: Layout):
    return CsvRows(path, layout) if path.suffix.lower() == ".csv" else ParquetRows(path, layout)


def check_out(out: str | Path, engine: str) -> None:
    suffix = Path(out).suffix.lower()
    allowed = (".parquet",) if engine == "ray" else (".parquet", ".csv")
    if suffix not in allowed:
        raise RunError(f"--out {out}: the {engine} engine writes " + " or ".join(allowed))
    if suffix == ".parquet":
        import_pyarrow("writing Parquet")


# -- the local engine --------------------------------------------------------------------------

def run_local(predictor, paths: list[str], out: str | Path, layout: Layout, batch: int = 32,
              decoders: int | None = None) -> Summary:
    """Every image through the model, `batch` at a time, decoded by `decoders` threads up to
    two batches ahead (Pillow releases the GIL); the rows written atomically to `out`."""
    from ..fileio import atomic_path

    start, rows, errors = time.perf_counter(), 0, 0
    decoders = decoders or min(4, os.cpu_count() or 1)
    with atomic_path(out) as tmp, ThreadPoolExecutor(decoders, "graphcnn-decode") as pool:
        writer = rows_writer(tmp, layout)
        try:
            for chunk, decoded in _ahead(pool, predictor, paths, batch):
                columns = result_columns(predictor, layout, decoded, chunk)
                writer.write(columns)
                rows += len(chunk)
                errors += sum(e is not None for e in columns["error"])
        finally:
            pool.shutdown(cancel_futures=True)  # Ctrl-C: no more decoding
            writer.close()
    return Summary(rows, errors, time.perf_counter() - start)


def _ahead(pool, predictor, paths, batch: int, depth: int = 2):
    """(paths, decoded) per batch, in order, with up to `depth` more batches in flight."""
    pending: deque = deque()
    for i in range(0, len(paths), batch):
        chunk = paths[i:i + batch]
        pending.append((chunk, [pool.submit(decode, predictor, p) for p in chunk]))
        if len(pending) > depth:
            chunk, futures = pending.popleft()
            yield chunk, [f.result() for f in futures]
    while pending:
        chunk, futures = pending.popleft()
        yield chunk, [f.result() for f in futures]
