"""Regenerate tests/golden/<spec>.txt: the text of `graphcnn summary specs/<spec>.yaml`.

Run after a deliberate change to a spec or to the summary table, then review the diff:
    python tools/update_goldens.py            # every architecture spec
    python tools/update_goldens.py unet vgg16 # just these
tests/test_architectures.py compares the same text and fails on any difference.
"""
from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing graphcnn
SPECS = ROOT / "specs"
GOLDEN = ROOT / "tests" / "golden"
ARCHITECTURES = sorted(p.stem for p in SPECS.glob("*.yaml"))  # every shipped spec


def summary_text(name: str) -> str:
    """What `graphcnn summary specs/<name>.yaml` prints (the CLI run in-process)."""
    from graphcnn.cli import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["summary", str(SPECS / f"{name}.yaml")])
    if code != 0:
        raise SystemExit(f"graphcnn summary {name}.yaml failed with exit code {code}")
    return buffer.getvalue()


def main(names: list[str]) -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name in names or ARCHITECTURES:
        path = GOLDEN / f"{name}.txt"
        text = summary_text(name)
        old = path.read_text() if path.exists() else None
        path.write_text(text)
        print(f"{path.relative_to(ROOT)}: {'unchanged' if old == text else 'written'}")


if __name__ == "__main__":
    main(sys.argv[1:])
