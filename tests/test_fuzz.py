"""Fuzzing the spec pipeline: random specs (valid and broken) either pass check, then compile
and run in onnxruntime with our shapes, or are refused with a located GraphCnnError; never
another exception, never a hang. tools/fuzz_specs.py runs thousands on demand; the corpus
keeps the specs that once broke something."""
from __future__ import annotations

import signal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from conftest import ROOT, load_tool

fuzz = load_tool("fuzz_specs")
CORPUS = sorted((Path(__file__).parent / "fuzz_corpus").glob("*.yaml"))


def _hang(signum, frame):
    raise AssertionError("a spec took more than 20 s: a hang")


def outcome(text: str) -> str:
    old = signal.signal(signal.SIGALRM, _hang)
    signal.alarm(20)
    try:
        return fuzz.run_one(text)  # raises fuzz.Failure on a crash or an unlocated error
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(fuzz.spec_text())
def test_random_specs_pass_or_fail_cleanly(text):
    assert outcome(text).startswith(("ok", "refused", "big"))


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_corpus(path):
    assert outcome(path.read_text()).startswith(("ok", "refused", "big"))


def test_corpus_expectations():
    """The corpus specs that must compile still do (a refusal would hide a regression)."""
    assert outcome((ROOT / "tests/fuzz_corpus/conv_transpose_output_padding_into_end_pad.yaml")
                   .read_text()) == "ok"


def test_run_one_reports_crashes(monkeypatch):
    """The harness itself: a non-GraphCnnError escaping check is a Failure, not a pass."""
    from graphcnn import graph

    def boom(spec, limits=None):
        raise ZeroDivisionError("x")

    monkeypatch.setattr(graph, "check", boom)
    with pytest.raises(fuzz.Failure, match="crash"):
        fuzz.run_one("name: a\ninputs: {x: [1, 4]}\nnodes: [{op: relu}]\n")
