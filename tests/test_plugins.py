"""Third-party ops as plugins (graphcnn/layers/plugins.py, docs/extending.md).

tests/plugin_example is a package with one op, swish_beta (y = x sigmoid(beta_c x), beta learned
per channel), declared as an entry point of group `graphcnn.layers`. pip installs it into a
temporary target; graphcnn, run in a subprocess with that target on PYTHONPATH, finds it before
building the spec schema and uses it through schema, check, summary, compile, a training step,
train and draw. The op's numbers are checked against numpy and its backward rule against finite
differences, with the plugin loaded in this process through the entry-point API. The error
cases use distributions written by hand (a dist-info with an entry_points.txt).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import EntryPoint, distributions
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import pytest

from conftest import onnx_weights, ort_run
from graphcnn.layers import REGISTRY, Layer, plugins
from graphcnn.layers.base import RegistryError, register, unregister
from graphcnn.spec import NetworkSpec
from test_gradients import check_gradients

EXAMPLE = Path(__file__).parent / "plugin_example"
SPEC = """name: swish_net
inputs: {x: [1, 12]}
training: {epochs: 2, batch: 4, lr: 0.5}
nodes:
  - {id: conv, op: conv1d, channels: 3, kernel: 3}
  - {id: act, op: swish_beta, beta: 1.5}
  - {op: flatten}
  - {id: fc, op: linear, features: 2}
outputs: [fc]
"""
# Several CLI commands in one process (one import of graphcnn, one plugin discovery), each as
# `graphcnn ARGS` runs it; prints [[exit status, output], ...].
BATCH = """
import contextlib, io, json, sys
from graphcnn.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        results.append([main(argv), out.getvalue()])
print(json.dumps(results))
"""
CONSOLE_SCRIPT = "import sys; from graphcnn.cli import main; sys.exit(main())"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example pip-installed into a target folder (from a copy: pip builds in the tree)."""
    root = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(EXAMPLE, root / "source")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--no-build-isolation", "--disable-pip-version-check",
                    "--target", str(root / "site"), str(source)],
                   check=True, capture_output=True, timeout=300)
    return root / "site"


def graphcnn_env(*paths: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != plugins.DISABLE}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), env.get("PYTHONPATH", "")])
    return {**env, **extra}


def run_batch(commands: list[list], cwd: Path, *paths: Path) -> list[tuple[int, str]]:
    argv = json.dumps([[str(a) for a in c] for c in commands])
    done = subprocess.run([sys.executable, "-c", BATCH, argv], cwd=cwd, env=graphcnn_env(*paths),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return [tuple(r) for r in json.loads(done.stdout)]


def console(args: list, cwd: Path, *paths: Path, **extra: str) -> subprocess.CompletedProcess:
    """`graphcnn ARGS` as the console script runs it (plugins load while graphcnn imports)."""
    return subprocess.run([sys.executable, "-c", CONSOLE_SCRIPT, *map(str, args)], cwd=cwd,
                          env=graphcnn_env(*paths, **extra), capture_output=True, text=True,
                          timeout=300)


def test_installed_plugin_through_every_command(site, tmp_path):
    spec, data = tmp_path / "net.yaml", tmp_path / "d.npz"
    spec.write_text(SPEC)
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.standard_normal((16, 1, 12)).astype(np.float32), y=rng.integers(0, 2, 16))
    results = run_batch([["schema"], ["check", spec], ["summary", spec],
                         ["compile", spec, "-o", "m.onnx"],
                         ["compile", spec, "--training", "-o", "step.onnx"],
                         ["train", spec, "--data", data, "-o", "trained.onnx"],
                         ["draw", spec, "-o", "net.dot"]], tmp_path, site)
    assert [code for code, _ in results] == [0] * 7, results
    assert '"swish_beta"' in results[0][1] and json.loads(results[0][1])
    assert any(" act " in line and "swish_beta" in line and " 3 " in line
               for line in results[2][1].splitlines()), results[2][1]
    assert "swish_beta" in (tmp_path / "net.dot").read_text()
    step = onnx.load(str(tmp_path / "step.onnx"))
    assert "act.beta.new" in {o.name for o in step.graph.output}
    trained = onnx_weights(onnx.load(str(tmp_path / "trained.onnx")))["act.beta"]
    assert trained.shape == (3,) and not np.allclose(trained, 1.5)  # trained, from 1.5
    check_against_numpy(onnx.load(str(tmp_path / "m.onnx")))


def check_against_numpy(model) -> None:
    """The compiled network, with a different beta per channel, against numpy."""
    beta = next(t for t in model.graph.initializer if t.name == "act.beta")
    np.testing.assert_allclose(onnx.numpy_helper.to_array(beta), 1.5)
    beta.CopyFrom(onnx.numpy_helper.from_array(np.array([0.5, 1.0, 2.5], np.float32), "act.beta"))
    w = onnx_weights(model)
    x = np.random.default_rng(1).standard_normal((2, 1, 12)).astype(np.float32)
    conv = np.stack([[np.correlate(row[0], w["conv.weight"][c, 0], "valid") + w["conv.bias"][c]
                      for c in range(3)] for row in x])
    act = conv / (1 + np.exp(-w["act.beta"][:, None] * conv))
    want = act.reshape(2, -1) @ w["fc.weight"].T + w["fc.bias"]
    np.testing.assert_allclose(ort_run(model, {"x": x})[0], want, rtol=1e-5, atol=1e-5)


@pytest.fixture
def example_loaded(monkeypatch):
    """The example loaded in this process through the entry-point API, and taken back."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    point = EntryPoint("swish_beta", "graphcnn_swish:SwishBeta", plugins.GROUP)
    yield plugins.load([point])[0]
    forget(["swish_beta"], "graphcnn_swish")


def forget(ops: list[str], *modules: str) -> None:
    for op in ops:
        unregister(op)
    plugins.LOADED[:] = [p for p in plugins.LOADED if not set(p.ops) & set(ops)]
    for module in modules:
        sys.modules.pop(module, None)


def test_backward_rule_matches_finite_differences(example_loaded):
    assert example_loaded.ops == ("swish_beta",)
    assert "swish_beta" in json.dumps(NetworkSpec.model_json_schema())  # the schema followed
    act = {"id": "s", "op": "swish_beta", "beta": 0.7}
    check_gradients([{"id": "pre", "op": "conv1d", "channels": 4, "kernel": 1}, act], {"x": [2, 7]})
    check_gradients([{"id": "pre", "op": "conv2d", "channels": 3, "kernel": 1}, act],
                    {"x": [2, 4, 5]})
    check_gradients([{"id": "pre", "op": "linear", "features": 5}, act], {"x": [6]})


def write_dist(root: Path, name: str, entry_points: str, modules: dict[str, str]) -> Path:
    """A distribution installed by hand: its dist-info (METADATA, entry_points.txt), modules."""
    info = root / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{plugins.GROUP}]\n{entry_points}\n")
    for module, text in modules.items():
        (root / f"{module}.py").write_text(text)
    return root


OP_NAMED = """from typing import Literal
from graphcnn.layers.base import Layer

class Op(Layer):
    op: Literal["{op}"] = "{op}"
"""


@pytest.mark.parametrize("module,args,says", [
    ("import numpy_misspelt\n", ["check", "net.yaml"],
     "ModuleNotFoundError: No module named 'numpy_misspelt'"),
    (OP_NAMED.format(op="relu"), ["schema"],
     "op 'relu' is already registered (by graphcnn.layers.activation.Relu)")],
    ids=["import-fails", "op-name-taken"])
def test_a_broken_plugin_stops_the_cli_with_one_line(tmp_path, module, args, says):
    root = write_dist(tmp_path / "site", "bad-plugin", "bad = bad_op:Op", {"bad_op": module})
    (tmp_path / "net.yaml").write_text(SPEC.replace("swish_beta, beta: 1.5", "relu"))
    done = console(args, tmp_path, root)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: plugin 'bad = bad_op:Op' (distribution bad-plugin 0.1, "
                                  "entry-point group graphcnn.layers) failed to load: ")
    assert says in done.stderr and f"set {plugins.DISABLE}=1" in done.stderr
    assert console(args, tmp_path, root, **{plugins.DISABLE: "1"}).returncode == 0


def hand_installed(root: Path) -> list[EntryPoint]:
    return [p for d in distributions(path=[str(root)]) for p in d.entry_points
            if p.group == plugins.GROUP]


def test_two_plugins_claiming_one_op_name(example_loaded, tmp_path, monkeypatch):
    root = write_dist(tmp_path, "copy-plugin", "swish_copy = swish_copy:Op",
                      {"swish_copy": OP_NAMED.format(op="swish_beta")})
    monkeypatch.syspath_prepend(str(root))
    with pytest.raises(plugins.PluginError) as caught:
        plugins.load(hand_installed(root))
    sys.modules.pop("swish_copy", None)
    assert REGISTRY["swish_beta"].__module__ == "graphcnn_swish"  # the first one's stays
    assert "plugin 'swish_copy = swish_copy:Op' (distribution copy-plugin 0.1" in str(caught.value)
    taken = "op 'swish_beta' is already registered (by graphcnn_swish.SwishBeta)"
    assert taken in str(caught.value)


@pytest.mark.parametrize("value,says", [
    ("math:pi", "it names a float, not a Layer subclass, a module or a function"),
    ("json", "it registered no op (decorate each Layer class with @register)")])
def test_an_entry_point_naming_no_op(value, says):
    with pytest.raises(plugins.PluginError, match=re.escape("failed to load: " + says)):
        plugins.load([EntryPoint("odd", value, plugins.GROUP)])


def test_a_module_or_a_function_registers_its_ops(tmp_path, monkeypatch):
    module = OP_NAMED.format(op="plugged_a").replace("class Op", "@register\nclass Op") \
        .replace("import Layer", "import Layer, register")
    function = OP_NAMED.format(op="plugged_b") + "\ndef setup():\n    register(Op)\n"
    function = function.replace("import Layer", "import Layer, register")
    root = write_dist(tmp_path, "two-plugin", "a = plugged_a\nb = plugged_b:setup",
                      {"plugged_a": module, "plugged_b": function})
    monkeypatch.syspath_prepend(str(root))
    try:
        loaded = plugins.load(hand_installed(root))
        assert [(p.name, p.ops, p.dist) for p in loaded] == [
            ("a", ("plugged_a",), "distribution two-plugin 0.1"),
            ("b", ("plugged_b",), "distribution two-plugin 0.1")]
        schema = json.dumps(NetworkSpec.model_json_schema())
        assert '"plugged_a"' in schema and '"plugged_b"' in schema
    finally:
        forget([op for op in ("plugged_a", "plugged_b") if op in REGISTRY],
               "plugged_a", "plugged_b")


class Late(Layer):
    op: Literal["late_op"] = "late_op"


def test_registering_after_the_schema_was_built():
    with pytest.raises(RegistryError, match="op 'late_op' registered after the spec schema was "
                       r"built .*ship the op as a plugin .* or call register\(cls, late=True\)"):
        register(Late)
    assert "late_op" not in REGISTRY
    register(Late, late=True)
    try:
        assert '"late_op"' in json.dumps(NetworkSpec.model_json_schema())
    finally:
        unregister("late_op")


def test_a_failing_plugin_leaves_none_of_its_ops(tmp_path, monkeypatch):
    half = OP_NAMED.format(op="half_op").replace("import Layer", "import Layer, register") + \
        "\ndef setup():\n    register(Op)\n    raise RuntimeError('second op broken')\n"
    root = write_dist(tmp_path, "half-plugin", "half = half_mod:setup", {"half_mod": half})
    monkeypatch.syspath_prepend(str(root))
    with pytest.raises(plugins.PluginError, match="RuntimeError: second op broken"):
        plugins.load(hand_installed(root))
    sys.modules.pop("half_mod", None)
    assert "half_op" not in REGISTRY and '"half_op"' not in json.dumps(
        NetworkSpec.model_json_schema())
