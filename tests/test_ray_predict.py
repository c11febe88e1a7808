"""`graphcnn predict --engine ray` on a local Ray cluster (2 CPUs, the size of CI's machine):
the rows of the local run, score for score, and every image exactly once when an actor dies
mid-run. Skipped where Ray is not installed (`pip install 'graphcnn[ray]'`)."""
from __future__ import annotations

import os
import sys

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray's own
ray = pytest.importorskip("ray", reason="the ray extra is not installed")
pq = pytest.importorskip("pyarrow.parquet")

from test_batch_predict import TINY, make_images  # noqa: E402

from graphcnn.api import compile_spec  # noqa: E402
from graphcnn.cli import main  # noqa: E402
from graphcnn.deploy.batch import Layout, list_images  # noqa: E402
from graphcnn.deploy.ray_job import PredictActor, run_ray  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module: starting Ray takes ~10 s here."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    (root / "tiny.yaml").write_text(TINY)
    import onnx
    onnx.save(compile_spec(root / "tiny.yaml", seed=4), str(root / "tiny.onnx"))
    make_images(root / "imgs", 40)
    (root / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    assert main(["predict", str(root / "tiny.onnx"), "--data", str(root / "imgs"),
                 "--out", str(root / "local.parquet"), "--batch", "8"]) == 0
    return root


def rows(path):
    return pq.read_table(path).sort_by("path")


def test_ray_run_gives_the_local_rows(cluster, data, capsys):
    out = data / "ray.parquet"
    assert main(["predict", str(data / "tiny.onnx"), "--data", str(data / "imgs"), "--out",
                 str(out), "--engine", "ray", "--workers", "2", "--threads-per-worker", "1",
                 "--batch", "8"]) == 0
    assert "41 rows (1 with an error)" in capsys.readouterr().out
    assert out.is_dir() and not [p for p in data.iterdir() if p.name.startswith(".ray")]
    local, remote = rows(data / "local.parquet"), rows(out)
    assert remote.num_rows == 41 and remote.equals(local)  # same rows, same bits


class DiesOnce(PredictActor):
    """An actor whose process exits on its second batch, once in the whole run (the marker
    file is created atomically, so only one actor of the pool dies)."""

    marker = ""

    def __call__(self, batch):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 2:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                os._exit(1)  # the worker process dies, mid-run, holding this batch
            except FileExistsError:
                pass
        return super().__call__(batch)


def test_a_worker_that_dies_loses_and_duplicates_nothing(cluster, data):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers can't import tests/
    DiesOnce.marker = str(data / "died")
    out = data / "fault.parquet"
    model = (data / "tiny.onnx").read_bytes()
    summary = run_ray(model, list_images(data / "imgs"), out, Layout(3), batch=4, workers=2,
                      threads=1, actor=DiesOnce)
    assert (data / "died").exists()  # an actor did die
    got = rows(out)
    paths = got.column("path").to_pylist()
    assert summary.rows == 41 and len(paths) == len(set(paths)) == 41
    assert got.equals(rows(data / "local.parquet"))
