"""Atomic output: written in a hidden temporary folder beside the target, fsynced, then renamed
over it. A failure, Ctrl-C, SIGTERM or SIGHUP midway leaves the previous file untouched, never
a partial one, and removes the temporary.

Every output goes through `check_output` first, so no command can forget its rules: never onto
one of the running command's own inputs (the CLI declares them, `command_inputs`), never over
something that is not a regular file (a device such as /dev/null, a FIFO, a folder). An
overwritten file keeps its permission bits; a file system that refuses is a clean error."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .errors import OutputError, RunError


class OutputPath(str):
    """An argument the command writes (argparse `type=OutputPath`): checked by the CLI before
    any work, and never taken for one of the command's inputs."""


class UpdatedPath(str):
    """An input the command may rewrite in place (train --resume: the checkpoint it goes on
    writing), by writers that say so (`updating=True`); no other output may replace it."""


@dataclass(frozen=True)
class _Input:
    path: str  # os.path.realpath: symlinks and ./x spellings end up the same
    ident: tuple[int, int] | None  # (st_dev, st_ino): the same file through a hard link
    updatable: bool
    folder: bool = False  # a folder read whole (train --data DIR): nothing is written inside


_inputs: list[_Input] | None = None  # None: no command is running (library use)


def _read_umask() -> int:
    mask = os.umask(0o022)  # read once, at import: setting it races with threads' files
    os.umask(mask)
    return mask


_UMASK = _read_umask()
_written: list[str] | None = None  # what the running command has published (None: library use)
_stop: int | None = None  # a stop signal that reached the running command (cli's handlers)


def note_stop(signum: int) -> None:
    """A stop signal arrived. Its KeyboardInterrupt may be swallowed where it lands (Python
    prints "Exception ignored" for one raised inside a weakref callback or __del__): with
    the note, no output is published after it and the command still ends as stopped."""
    global _stop
    _stop = signum


def stop_signal() -> int | None:
    return _stop


@contextlib.contextmanager
def command_inputs() -> Iterator[None]:
    """While a command runs: the files it reads (`note_input`), which no output may replace."""
    global _inputs, _written, _stop
    saved = _inputs, _written, _stop
    _inputs, _written, _stop = [], [], None
    try:
        yield
    finally:
        _inputs, _written, _stop = saved  # a stop ends with its command


def written_files() -> list[str]:
    """The outputs the running command has already replaced (an interrupted `train` has
    written its checkpoint every epoch), each once, in the order first written."""
    return list(dict.fromkeys(_written or ()))


def note_input(path: str | Path, updatable: bool = False, whole_folder: bool = False) -> None:
    """Record a file the running command reads; outside a command this does nothing.
    `whole_folder`: a folder whose every file is read (a dataset), so no output may land
    anywhere inside it."""
    if _inputs is None:
        return
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
        ident, folder = (st.st_dev, st.st_ino), whole_folder and stat.S_ISDIR(st.st_mode)
    except OSError:
        ident, folder = None, False
    _inputs.append(_Input(real, ident, updatable, folder))


def check_output(target: str | Path, updating: bool = False) -> os.stat_result | None:
    """Refuse an output path before anything is written; returns the stat of the file it will
    replace (None: a new file)."""
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"output folder '{folder}' does not exist", received=str(target))
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise write_error(target, exc) from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise OutputError(f"the output {target} exists and is not a regular file "
                          f"({_kind(st.st_mode)}); it is never replaced",
                          hint="write to a file path")
    _refuse_own_input(target, st, updating)
    return st


def _refuse_own_input(target: Path, st: os.stat_result | None, updating: bool) -> None:
    real = os.path.realpath(target)
    ident = (st.st_dev, st.st_ino) if st is not None else None
    for source in _inputs or ():
        same = source.path == real or (ident is not None and source.ident == ident)
        if same and not (updating and source.updatable):
            raise OutputError(f"the output {target} is one of the command's own inputs",
                              received=source.path, hint="write to another file")
        if source.folder and real.startswith(source.path.rstrip(os.sep) + os.sep):
            # a file written into a data folder replaces an image or becomes one next run
            raise OutputError(f"the output {target} lies inside the command's input folder "
                              f"{source.path}", received=str(target),
                              hint="write outside the folder the command reads")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"


REASONS = {errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
           errno.EPERM: "operation not permitted",
           errno.ENOSPC: "no space left on the device (or no free inodes)",
           errno.EDQUOT: "disk quota exceeded"}


def write_error(target: Path, exc: OSError) -> OutputError:
    """An OSError of writing as a user-facing error naming the path and the reason."""
    reason = REASONS.get(exc.errno) or exc.strerror or str(exc)
    return OutputError(f"cannot write '{target}': {reason}", received=str(target))


@contextlib.contextmanager
def atomic_paths(*targets: str | Path, updating: bool = False) -> Iterator[list[Path]]:
    """Temporary paths named as the targets (a writer that derives a format or a companion
    file from the name sees the final one), in one hidden folder beside the first target;
    the targets must share a folder. On success each is renamed onto its target, in order."""
    targets = [Path(t) for t in targets]
    previous = [check_output(t, updating) for t in targets]
    work = None
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{targets[0].name}.", suffix=".tmp",
                                     dir=targets[0].parent))
        temps = [work / t.name for t in targets]
        yield temps
        for tmp, target, old in zip(temps, targets, previous):
            _publish(tmp, target, old)
    except OSError as exc:  # read-only, disk full, no inodes, ...: an error, not a crash
        raise write_error(targets[0], exc) from None
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def _publish(tmp: Path, target: Path, old: os.stat_result | None) -> None:
    if _stop is not None:  # stopped, though the interrupt itself was swallowed somewhere
        raise KeyboardInterrupt(_stop)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    if old is not None:  # an overwritten file keeps its permission bits
        os.chmod(tmp, stat.S_IMODE(old.st_mode))
    else:  # a new one gets what open() gives, whatever its writer chose (onnx's .data: 0600)
        os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, target)
    if _written is not None:
        _written.append(str(target))


@contextlib.contextmanager
def atomic_path(target: str | Path, updating: bool = False) -> Iterator[Path]:
    """Yields a temporary path; renames it to `target` on success."""
    with atomic_paths(target, updating=updating) as (tmp,):
        yield tmp


def write_atomic(target: str | Path, writer: Callable[[Path], None],
                 updating: bool = False) -> None:
    with atomic_path(target, updating) as tmp:
        writer(tmp)


def write_bytes_atomic(target: str | Path, data: bytes) -> None:
    write_atomic(target, lambda p: p.write_bytes(data))


def write_text_atomic(target: str | Path, text: str) -> None:
    write_bytes_atomic(target, text.encode("utf-8"))


def existing_file(path: str | Path, kind: str = "file", error: type = RunError) -> Path:
    """The path of a regular file that is there (a model, its inputs, an image), or the error
    (`error`, default RunError) that says what it is instead: a folder, a FIFO or a device
    would be read forever; a name the system refuses is not there."""
    p = Path(path)
    if is_file(p):
        return p
    if not exists(p):
        raise error(f"no such {kind}: {path}")
    raise error(f"{path} is " + ("a folder" if p.is_dir() else
                                 "not a regular file (a FIFO, socket or device)"),
                expected="a file")


def is_file(path: str | Path) -> bool:
    """Path.is_file that answers False for a name the system refuses (too long: ENAMETOOLONG;
    a NUL byte), where Python 3.11's raises."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def exists(path: str | Path) -> bool:
    """Path.exists, False for a name the system refuses (as is_file)."""
    try:
        return Path(path).exists()
    except (OSError, ValueError):
        return False
