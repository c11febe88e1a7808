"""`graphcnn predict --engine ray`: the batch job of deploy/batch.py on Ray Data.

The driver lists the images (the local engine's listing, so both runs see the same files);
Ray reads them (`read_binary_files`, tasks that reserve no CPU: reading waits on the disk), and
`map_batches` hands them to a pool of `PredictActor`s, each building its onnxruntime session
once and decoding its batch in its own threads. Each actor reserves `threads` CPUs and gives
onnxruntime that many threads, so actors x threads never exceeds a node's cores (more threads
than cores slows every session down, onnxruntime#16793). Ray writes the rows as a folder of
Parquet files, in a hidden folder renamed into place when the job is done.

Faults: Ray Data's actors restart when their process dies, and the batch they held is sent
again; a batch's rows are only written once its call returned, so every image is in the output
exactly once (tests/test_ray_predict.py kills an actor mid-run).
"""
from __future__ import annotations

import inspect
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import RunError
from .batch import Layout, Summary, arrow_table, decode, error_columns, missing, result_columns

INSTALL = "pip install 'graphcnn[ray]'"


def import_ray():
    """Ray, imported only for --engine ray."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RunError("--engine ray needs Ray, which is not installed", hint=INSTALL) from None
    return ray


class PredictActor:
    """One worker of the pool: a Predictor built once, called with batches of file bytes."""

    def __init__(self, model: bytes, provider: str, threads: int, layout: Layout):
        from .predictor import Predictor

        # no spinning: other actors on the node and this one's decoding want the cores
        self.predictor = Predictor(model, provider, threads, spinning="never")
        self.pool = ThreadPoolExecutor(threads, "graphcnn-decode")
        self.layout = layout

    def __call__(self, batch: dict):
        paths = [str(p) for p in batch["path"]]
        decoded = list(self.pool.map(lambda p, d: decode(self.predictor, p, bytes(d)),
                                     paths, batch["bytes"]))
        return arrow_table(result_columns(self.predictor, self.layout, decoded, paths),
                           self.layout)


def run_ray(model: bytes, paths: list[str], out: str | Path, layout: Layout, batch: int = 32,
            address: str | None = None, workers: int | None = None, threads: int | None = None,
            provider: str = "cpu", actor=PredictActor) -> Summary:
    """The job on a Ray cluster: `address` joins one, None starts a local one (or uses the one
    this process already started). `actor`: the pool's class (tests pass a failing one)."""
    ray = import_ray()
    started = _connect(ray, address)
    try:
        workers, threads = plan(_node_cpus(ray), workers, threads)
        start = time.perf_counter()
        ds = _dataset(ray, model, paths, layout, batch, workers, threads, provider, actor)
        _write(ds, Path(out))
        return _summary(Path(out), time.perf_counter() - start)
    finally:
        if started:
            ray.shutdown()


def _connect(ray, address: str | None) -> bool:
    """True when this call started Ray (and so stops it)."""
    if ray.is_initialized():
        return False
    import logging

    if address is None:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    else:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    return True


def _node_cpus(ray) -> list[int]:
    return [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]


def plan(node_cpus: list[int], workers: int | None, threads: int | None) -> tuple[int, int]:
    """(actors, threads per actor) that fit the nodes' cores: given both, they are checked;
    given one, the other fills the cores; given none, two threads per actor (one where a
    node has a single core) and as many actors as fit."""
    def fit(t: int) -> int:
        return sum(c // t for c in node_cpus)
    biggest = max(node_cpus, default=0)
    if threads is None:
        threads = next((t for t in range(biggest, 0, -1) if fit(t) >= workers), 1) \
            if workers else min(2, max(biggest, 1))
    workers = workers or max(fit(threads), 1)
    if threads < 1 or workers < 1 or fit(threads) < workers:
        raise RunError(f"{workers} workers x {threads} threads do not fit the cluster's cores",
                       received=f"CPUs per node: {node_cpus}",
                       hint="lower --workers or --threads-per-worker")
    return workers, threads


def _dataset(ray, model, paths, layout, batch, workers, threads, provider, actor):
    """The rows as a Ray Dataset: the files that exist read and predicted by the actor pool,
    the missing ones rows with their error (as the local run gives them)."""
    exists = {p: os.path.isfile(p) for p in paths}
    present = [p for p in paths if exists[p]]
    absent = [p for p in paths if not exists[p]]
    parts = []
    if present:
        files = ray.data.read_binary_files(present, include_paths=True, concurrency=workers,
                                           **_no_cpu(ray))
        parts.append(files.map_batches(
            actor, fn_constructor_args=(model, provider, threads, layout), batch_size=batch,
            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=threads,
            batch_format="numpy"))
    if absent:
        rows = error_columns(layout, absent, [missing(p) for p in absent])
        parts.append(ray.data.from_arrow(arrow_table(rows, layout)))
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _no_cpu(ray) -> dict:
    """Read tasks reserve no CPU (they wait on the disk; the actors hold the cores), so they
    are capped at one per actor (`concurrency`): uncapped, Ray started a worker process per
    pending read, 40 on 2 cores for 2,000 files, and the first batch came after 2 minutes
    instead of 16 s. `num_cpus` is a named argument since Ray 2.4x, `ray_remote_args` before."""
    named = "num_cpus" in inspect.signature(ray.data.read_binary_files).parameters
    return {"num_cpus": 0} if named else {"ray_remote_args": {"num_cpus": 0}}


def _write(ds, out: Path) -> None:
    """Ray writes the Parquet parts into a hidden folder beside `out`, renamed onto it when
    complete (a file left by a local run is replaced; a folder is refused before any work)."""
    from ..fileio import check_output, write_error

    check_output(out)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        ds.write_parquet(str(work / out.name))
        if out.is_file():
            out.unlink()
        os.rename(work / out.name, out)
    except OSError as exc:
        raise write_error(out, exc) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _summary(out: Path, seconds: float) -> Summary:
    import pyarrow.parquet as pq

    errors = pq.read_table(out, columns=["error"]).column("error")
    return Summary(len(errors), len(errors) - errors.null_count, seconds)
