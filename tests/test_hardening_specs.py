"""Hardening, round three: what a sweep of hostile specs found. Each case failed before its
fix (a segfault, tracebacks, code run by a written file); docs/reliability.md lists them."""
from __future__ import annotations

import ast
import os

import pytest

from graphcnn.cli import main


def cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def spec(tmp_path, text: str, name: str = "s.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_nested_past_the_c_composers_stack(capsys, tmp_path):
    """30,000 brackets (60 KB): LibYAML's composer recursed in C and the process died
    (exit 139, nothing printed); the depth is now counted on the event stream first."""
    path = spec(tmp_path, "[" * 30_000 + "]" * 30_000 + "\n")
    code, err = cli(capsys, "check", path)
    assert code == 1 and too_deep(err) and f"{path}:1:" in err, err
    code, err = cli(capsys, "check", path, "--set", "name=" + "[" * 30_000 + "]" * 30_000)
    assert code == 1 and too_deep(err), err
    path = spec(tmp_path, "[" * 100 + "]" * 100 + "\n", "hundred.yaml")
    code, err = cli(capsys, "check", path)
    assert code == 1 and f"{path}:1:65: YAML nesting too deep; expected at most 64" in err, err


def too_deep(err: str) -> bool:
    """Ours at level 65; PyYAML 6.0.4's LibYAML stops at 1,000 itself while it scans ahead."""
    return "YAML nesting too deep" in err or "exceeded maximum nesting depth" in err


@pytest.mark.parametrize("op", ["[relu]", "{relu: 1}"])
def test_an_op_that_is_no_name(capsys, tmp_path, op):
    """Before: TypeError: unhashable type: 'list' (or 'dict')."""
    path = spec(tmp_path, f"name: g\ninputs: {{x: [3, 16, 16]}}\nnodes: [{{op: {op}}}]\n")
    code, err = cli(capsys, "check", path)
    assert code == 1 and f"{path}:3:10: an op is a name such as relu" in err, err


def test_an_op_that_is_no_name_through_a_block_argument(capsys, tmp_path):
    path = spec(tmp_path, "name: g\ninputs: {x: [3, 16, 16]}\nblocks:\n  b:\n"
                "    params: {act: relu}\n    nodes: [{op: act}]\n"
                "nodes:\n  - {id: s, block: b, args: {act: [relu]}}\n")
    code, err = cli(capsys, "check", path)
    assert code == 1 and "s: an op is a name such as relu" in err and "instantiated at" in err


@pytest.mark.parametrize("inputs, message", [
    ("{}", "a network needs at least one input"),  # before: StopIteration
    ("{x: [true, 32, 32]}", "true/false is not a size"),  # before: 1 channel
    ("{x: [3, '', 32]}", "an empty name is not a size"),  # before: a symbol named ''
])
def test_inputs_that_are_no_inputs(capsys, tmp_path, inputs, message):
    path = spec(tmp_path, f"name: g\ninputs: {inputs}\nnodes: [{{op: relu}}]\n")
    for command in ("check", "summary", "sizes", "lint"):
        code, err = cli(capsys, command, path)
        assert code == 1 and f"{path}:2:1:" in err and message in err, (command, err)


def test_an_empty_name_is_refused_at_check(capsys, tmp_path):
    """Before: check passed and compile failed the ONNX full check with no place."""
    path = spec(tmp_path, 'name: ""\ninputs: {x: [3]}\nnodes: [{op: relu}]\n')
    code, err = cli(capsys, "check", path)
    assert code == 1 and f"{path}:1:1: bad value for 'name'" in err, err


@pytest.mark.parametrize("text", [
    "name: g\nimports: [blocks/" + "a" * 300 + ".yaml]\ninputs: {x: [3]}\nnodes: [{op: relu}]\n",
    'extends: "' + "a" * 5000 + '"\n'])
def test_names_too_long_for_the_file_system(capsys, tmp_path, text):
    """Before: OSError: [Errno 36] File name too long, from Path.is_file."""
    code, err = cli(capsys, "check", spec(tmp_path, text))
    assert code == 1 and "not found" in err and "Traceback" not in err, err


def test_other_bytes_in_a_set_value_and_in_a_spec_file(capsys, tmp_path):
    code, err = cli(capsys, "check", spec(tmp_path, "name: g\ninputs: {x: [3]}\nnodes: [{op: relu}]\n"),
                    "--set", "name=" + os.fsdecode(b"\xff"))
    assert code == 1 and "--set:1:6: the text is not UTF-8" in err, err  # before: a traceback
    path = tmp_path / "latin.yaml"
    path.write_bytes(b"name: g\ninputs: {x: [3]}\n# caf\xe9\nnodes: [{op: relu}]\n")
    code, err = cli(capsys, "check", path)
    assert code == 1 and f"{path}:3:6: spec file is not UTF-8 text; received byte b'\\xe9'" in err


def test_export_torch_escapes_spec_text_in_docstrings(capsys, tmp_path):
    """A name or block name with three quotes and code after them: before, the written .py
    ran that code on import (before `import torch`); a NUL made it unparseable."""
    injected = '"""+str(__import__("os").system("touch PWNED"))+"""'
    path = spec(tmp_path, f"name: 'x{injected}\\'\ninputs: {{x: [3]}}\nblocks:\n"
                          f"  'b{injected}':\n    nodes: [{{op: relu}}]\n"
                          f"nodes:\n  - {{id: 'a\"\"\"b', op: relu}}\n"
                          f"  - {{id: s, block: 'b{injected}'}}\n")
    code, err = cli(capsys, "export-torch", path, "-o", tmp_path / "net.py")
    assert code == 0, err
    tree = ast.parse((tmp_path / "net.py").read_text())
    docs = [ast.get_docstring(n) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef)) and ast.get_docstring(n)]
    assert any(f"`x{injected}\\`" in d for d in docs) and any(f"Block `b{injected}`" in d for d in docs)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and getattr(n.func, "id", "") == "__import__"]
    assert calls == []
    nul = spec(tmp_path, 'name: "a\\0b"\ninputs: {x: [3]}\nnodes: [{id: "c\\0d", op: relu}]\n',
               "nul.yaml")
    assert cli(capsys, "export-torch", nul, "-o", tmp_path / "nul.py")[0] == 0
    ast.parse((tmp_path / "nul.py").read_text())


def test_compile_out_of_memory_names_the_node(capsys, tmp_path, monkeypatch):
    """Before: numpy's _ArrayMemoryError traceback for a layer check admits."""
    import graphcnn.lower.inference as inference

    def no_memory(*args):
        raise MemoryError

    monkeypatch.setattr(inference, "initial_value", no_memory)
    path = spec(tmp_path, "name: g\ninputs: {x: [3000]}\nnodes: [{id: fc, op: linear, features: 1000}]\n")
    code, err = cli(capsys, "compile", path, "-o", tmp_path / "g.onnx")
    assert code == 1 and "fc: not enough memory to draw weight 'fc.weight' (0.0 GiB)" in err, err
