"""Print a SHA-256 per compiled model of every shipped spec, to check that a refactor leaves
the ONNX files byte-identical (inference, training step, and the model transforms).

    python tools/onnx_fingerprints.py > before.txt   # on the old tree
    python tools/onnx_fingerprints.py > after.txt    # on the new tree
    diff before.txt after.txt

Fingerprints depend on the installed onnx and onnxruntime (the default opset is the newest the
runtime runs, and shape inference fills value_info): compare only runs on one installation.
Uses the command line in-process, exactly as a user's `graphcnn compile` writes the file.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing graphcnn

VARIANTS = {
    "plain": [],
    "training": ["--training", "--batch", "2"],
    "portable": ["--portable"],
    "fp16": ["--precision", "fp16"],
    "fold_bn": ["--fold-bn"],
    "dynamic": ["--dynamic", "H,W"],
    "int8": ["--quantize", "int8"],
}


def fingerprint(spec: Path, flags: list[str], folder: Path) -> str:
    from graphcnn.cli import main

    target = folder / "model.onnx"
    target.unlink(missing_ok=True)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = main(["compile", str(spec), "-o", str(target), *flags])
        except Exception as exc:  # noqa: BLE001 (a bug of ours: the fingerprint says which)
            return f"raised {type(exc).__name__}"
    if code != 0:
        return f"exit {code}"
    data = target.read_bytes()
    for extra in sorted(folder.glob("model.onnx.*")):  # external data, if any
        data += extra.read_bytes()
    return hashlib.sha256(data).hexdigest()[:16]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", help="spec names (default: every shipped spec)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    args = parser.parse_args(argv)
    names = args.specs or sorted(p.stem for p in (ROOT / "specs").glob("*.yaml"))
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for variant in args.variants.split(","):
                spec = ROOT / "specs" / f"{name}.yaml"
                print(f"{name:20s} {variant:9s} {fingerprint(spec, VARIANTS[variant], Path(tmp))}",
                      flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
