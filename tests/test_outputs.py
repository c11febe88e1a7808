"""Every output: never onto one of the command's own inputs (however the path is spelled),
never over a device, FIFO or folder, permission bits kept, no temporary left by SIGTERM or
SIGHUP, a file system that refuses is a clean error, and models past 2 GiB compile and run."""
from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from graphcnn import fileio
from graphcnn.cli import main
from graphcnn.commands.registry import COMMANDS
from graphcnn.errors import OutputError

ROOT = Path(__file__).resolve().parent.parent
SPEC = """name: tiny
inputs: {x: [1, 12]}
nodes:
  - {id: conv, op: conv1d, channels: 4, kernel: 3}
  - {op: relu}
  - {op: flatten}
  - {id: logits, op: linear, features: 3}
outputs: [logits]
training: {optimizer: sgd, lr: 0.05, epochs: 1, batch: 16, seed: 1}
"""


def run_main(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.fixture
def work(tmp_path, monkeypatch):
    """tmp_path as the working folder, holding the spec, a compiled model and training data."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(SPEC)
    assert main(["compile", "s.yaml", "-o", "m.onnx"]) == 0
    x = np.random.default_rng(0).standard_normal((32, 1, 12)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=(x.sum(axis=(1, 2)) > 0).astype(np.int64))
    return tmp_path


def spellings(folder: Path, name: str) -> list[str]:
    """The same file as given, as ./name, through a symlink and through a hard link."""
    os.symlink(name, folder / f"link-{name}")
    os.link(folder / name, folder / f"hard-{name}")
    return [name, f"./{name}", f"link-{name}", f"hard-{name}"]


OWN_INPUT = [
    ("s.yaml", ["compile", "s.yaml", "-o", "{}"]),
    ("s.yaml", ["compile", "s.yaml", "--training", "-o", "{}"]),
    ("m.onnx", ["run", "m.onnx", "--output", "{}"]),
    ("m.onnx", ["export-weights", "m.onnx", "-o", "{}"]),
    ("s.yaml", ["draw", "s.yaml", "-o", "{}"]),
    ("s.yaml", ["diff", "s.yaml", "s.yaml", "--draw", "{}"]),
    ("s.yaml", ["export-torch", "s.yaml", "-o", "{}"]),
    ("d.npz", ["train", "s.yaml", "--data", "d.npz", "-o", "{}"]),
    ("s.yaml", ["train", "s.yaml", "--data", "d.npz", "-o", "{}"]),
]


@pytest.mark.parametrize("name, argv", OWN_INPUT,
                         ids=[" ".join(a[:2]) + f" {n}" for n, a in OWN_INPUT])
def test_command_never_writes_onto_its_input(work, capsys, name, argv):
    if argv[0] not in COMMANDS:
        pytest.skip(f"no {argv[0]} command here")
    before = (work / name).read_bytes()
    for spelling in spellings(work, name):
        code, err = run_main(capsys, *[a.format(spelling) for a in argv])
        assert code == 1 and "own input" in err and "Traceback" not in err, (spelling, err)
        assert (work / name).read_bytes() == before
    assert not list(work.glob(".*.tmp"))


def test_imported_spec_is_an_input_too(work, capsys):
    """A file the spec imports is no argument, yet an input no output may replace."""
    (work / "blocks.yaml").write_text("blocks:\n  act:\n    nodes:\n      - {op: relu}\n")
    (work / "t.yaml").write_text("imports: [blocks.yaml]\n" + SPEC)
    before = (work / "blocks.yaml").read_bytes()
    code, err = run_main(capsys, "compile", "t.yaml", "-o", "blocks.yaml")
    assert code == 1 and "own input" in err, err
    assert (work / "blocks.yaml").read_bytes() == before


def test_train_beside_files_never_replace_an_input(work, capsys):
    """The checkpoint written beside -o must not land on --data either."""
    shutil.copy(work / "d.npz", work / "m2.ckpt.npz")
    before = (work / "m2.ckpt.npz").read_bytes()
    code, err = run_main(capsys, "train", "s.yaml", "--data", "m2.ckpt.npz", "-o", "m2.onnx")
    assert code == 1 and "own input" in err, err
    assert (work / "m2.ckpt.npz").read_bytes() == before


def test_resume_rewrites_its_own_checkpoint(work, capsys):
    """--resume is the one input a command updates in place: the run goes on checkpointing."""
    assert main(["train", "s.yaml", "--data", "d.npz", "-o", "t.onnx"]) == 0
    code, err = run_main(capsys, "train", "s.yaml", "--data", "d.npz", "-o", "t.onnx",
                         "--epochs", "2", "--resume", "t.ckpt.npz")
    assert code == 0, err
    meta = np.load(work / "t.ckpt.npz")["meta"].tobytes().decode()  # JSON as uint8
    assert '"epoch": 2' in meta


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_non_regular_output_refused_before_any_work(work, capsys, kind):
    target = work / "out.npy"
    os.mkfifo(target) if kind == "fifo" else target.mkdir()
    code, err = run_main(capsys, "run", "m.onnx", "--output", target)
    assert code == 1 and "not a regular file" in err, err
    assert "time:" not in capsys.readouterr().out  # refused before the model ran
    assert stat.S_ISFIFO(target.stat().st_mode) if kind == "fifo" else target.is_dir()


def test_dev_null_is_refused_untouched(work, capsys, monkeypatch):
    def never(*args, **kwargs):  # were the check to fail, this stops the write before /dev
        raise AssertionError("an output under /dev was about to be written")

    monkeypatch.setattr(fileio.tempfile, "mkdtemp", never)
    code, err = run_main(capsys, "compile", "s.yaml", "-o", "/dev/null")
    assert code == 1 and "/dev/null" in err and "character device" in err, err
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_overwritten_file_keeps_its_permission_bits(work):
    os.chmod(work / "m.onnx", 0o640)
    assert main(["compile", "s.yaml", "-o", "m.onnx", "--seed", "3"]) == 0
    assert stat.S_IMODE((work / "m.onnx").stat().st_mode) == 0o640
    assert main(["compile", "s.yaml", "-o", "new.onnx"]) == 0  # a new file: the umask's bits
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((work / "new.onnx").stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_leave_no_temporary(tmp_path, signum, code):
    """Like Ctrl-C: the signal arrives while the model is written; the previous output stays,
    the hidden temporary goes, and the exit code is the one a shell reports."""
    spec = tmp_path / "big.yaml"
    spec.write_text("name: big\ninputs: {x: [2048]}\nnodes:\n" +
                    "".join(f"  - {{id: l{i}, op: linear, features: 2048}}\n" for i in range(8)))
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous")
    proc = subprocess.Popen([sys.executable, "-m", "graphcnn.cli", "compile", str(spec), "-o",
                             str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and not temporaries(tmp_path):
        time.sleep(0.002)
    assert proc.poll() is None, "compile ended before the signal could be sent"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "no output was changed" in err
    assert out.read_bytes() == b"previous"
    assert temporaries(tmp_path) == []


def temporaries(folder: Path) -> list[str]:
    """fileio's hidden temporaries: .<name>.<random>.tmp"""
    return [p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]


def test_proc_is_a_clean_error(work, capsys):
    code, err = run_main(capsys, "compile", "s.yaml", "-o", "/proc/self/x.onnx")
    assert code == 1 and "cannot write '/proc/self/x.onnx'" in err and "Traceback" not in err, err


@pytest.mark.parametrize("number, reason", [(errno.EROFS, "read-only"), (errno.ENOSPC, "no space"),
                                            (errno.EDQUOT, "quota"), (errno.EACCES, "permission")])
def test_file_system_refusals_are_clean_errors(work, capsys, monkeypatch, number, reason):
    def refuse(*args):
        raise OSError(number, os.strerror(number))

    before = (work / "m.onnx").read_bytes()
    monkeypatch.setattr(fileio.os, "replace", refuse)
    code, err = run_main(capsys, "compile", "s.yaml", "-o", "m.onnx", "--seed", "5")
    assert code == 1 and "cannot write 'm.onnx'" in err and reason in err, err
    assert "Traceback" not in err
    assert (work / "m.onnx").read_bytes() == before and temporaries(work) == []


def test_inode_exhaustion_while_creating_the_temporary(work, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio.tempfile, "mkdtemp", refuse)
    code, err = run_main(capsys, "draw", "s.yaml", "-o", "s.mmd")
    assert code == 1 and "no free inodes" in err and "Traceback" not in err, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_read_only_folder(work, capsys):
    folder = work / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        code, err = run_main(capsys, "compile", "s.yaml", "-o", "ro/m.onnx")
    finally:
        folder.chmod(0o700)
    assert code == 1 and "permission denied" in err, err


def test_library_use_has_no_own_input_rule(tmp_path):
    """Outside a command nothing is declared: the API writes where it is told."""
    path = tmp_path / "f.txt"
    path.write_text("old")
    fileio.note_input(path)  # ignored: no command runs
    fileio.write_text_atomic(path, "new")
    assert path.read_text() == "new"
    with pytest.raises(OutputError, match="not a regular file"):
        fileio.check_output(tmp_path)


# --- past protobuf's 2 GiB --------------------------------------------------------------

def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


@pytest.mark.slow
def test_model_past_2_gib_compiles_in_the_spec_folder_and_runs(tmp_path, monkeypatch, capsys):
    """A 23300 x 23300 linear layer: 2.17 GB of weights, past 2 GiB, which go to external data
    written beside the model under its final name; run and bench read the model from its path (54 s
    and 4.4 GB of memory at most here)."""
    if shutil.disk_usage(tmp_path).free < 8e9 or _mem_available() < 12e9:
        pytest.skip("needs 8 GB of free disk and 12 GB of available memory")
    monkeypatch.chdir(tmp_path)
    Path("big.yaml").write_text("name: big\ninputs: {x: [23300]}\n"
                                "nodes:\n  - {id: fc, op: linear, features: 23300}\n")
    code, err = run_main(capsys, "compile", "big.yaml", "-o", "big.onnx")
    assert code == 0, err
    assert Path("big.onnx.data").stat().st_size > 2 ** 31
    assert Path("big.onnx").stat().st_size < 2 ** 20 and temporaries(tmp_path) == []
    code, err = run_main(capsys, "run", "big.onnx")
    assert code == 0, err
    code, err = run_main(capsys, "bench", "big.onnx", "--batches", "1", "--repeat", "1",
                         "--warmup", "0")
    assert code == 0, err
