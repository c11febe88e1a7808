"""Fuzzing the file readers: mutated .npz, .npy, .safetensors, torch.save (zip and legacy) and
.onnx files (inline and external data) are either read or refused with a GraphCnnError naming
the file; never another exception, a hang or a big allocation. tools/fuzz_files.py runs
thousands on demand; this runs a few hundred seeded ones."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from conftest import load_tool

fuzz = load_tool("fuzz_files")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fuzz")
    fuzz.workspace(path)
    return path


def test_seeds_read_whole(folder):
    """Unmutated, every seed reads."""
    for name, files in fuzz.seeds().items():
        assert fuzz.run_one(fuzz.Case(name, "none", files), folder) == "ok", name


@pytest.mark.parametrize("seed", range(6))
def test_mutated_files_read_or_refused_cleanly(folder, seed):
    outcomes, failures = fuzz.fuzz(100, seed, folder)
    assert not failures, [f"{case.seed}/{case.kind}: {why}" for case, why in failures[:5]]
    assert sum(outcomes.values()) == 100
    assert any("ok" in k for k in outcomes) and any("refused" in k for k in outcomes)


def test_every_mutation_kind_is_drawn():
    kinds = {(case.seed, case.kind) for case in fuzz.cases(400, 0)}
    assert {"truncate", "flip", "header", "dtype", "zip", "external-data"} == \
        {kind for _, kind in kinds}
    assert {seed for seed, _ in kinds} == set(fuzz.seeds())


def test_header_rewrites_change_what_they_name():
    rng = random.Random(0)
    npy = fuzz.seeds()["npy"]["f.npy"]
    assert fuzz.npy_header(npy, rng)[:8] == npy[:8] and fuzz.npy_header(npy, rng) != npy
    st = fuzz.seeds()["safetensors"]["f.safetensors"]
    assert fuzz.safetensors_header(st, rng, dtype_only=True)[8:] != st[8:]


def test_harness_reports_crashes_and_allocations(folder, monkeypatch):
    """The harness itself: another exception, or a big allocation, is a Failure."""
    case = fuzz.Case("npz", "none", fuzz.seeds()["npz"])

    def crash(path, seed):
        raise ZeroDivisionError("x")

    monkeypatch.setattr(fuzz, "read_everything", crash)
    with pytest.raises(fuzz.Failure, match="crash: ZeroDivisionError"):
        fuzz.run_one(case, folder)

    def hog(path, seed):
        np.ones(fuzz.PEAK_BYTES // 8 + 1)

    monkeypatch.setattr(fuzz, "read_everything", hog)
    with pytest.raises(fuzz.Failure, match="allocated"):
        fuzz.run_one(case, folder)
