"""Optimisation options against PyTorch: learning-rate schedules (torch.optim.lr_scheduler),
label smoothing, gradient clipping by global norm, weight decay without biases and norm
scales, frozen nodes (batchnorm in inference mode, no gradients), and --head-classes."""
from __future__ import annotations

import numpy as np
import pytest

from graphcnn.api import check_spec
from graphcnn.cli import main
from graphcnn.errors import CompileError
from graphcnn.spec import NetworkSpec
from graphcnn.spec.training import ScheduleSection
from graphcnn.train.data import Batch
from graphcnn.train.loop import StepRunner
from graphcnn.train.schedule import lr_at
from graphcnn.train.step import build_training_step, initial_state

torch = pytest.importorskip("torch")
sched = torch.optim.lr_scheduler

EPOCHS, PER_EPOCH = 5, 7


def torch_rates(make, per_step: bool) -> list[float]:
    """The rate of each step under a torch scheduler stepped every step or every epoch."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    scheduler, rates = make(opt), []
    for t in range(EPOCHS * PER_EPOCH):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        if per_step or (t + 1) % PER_EPOCH == 0:
            scheduler.step()
    return rates


def ours(**section) -> list[float]:
    schedule = ScheduleSection(**section)
    return [lr_at(schedule, 0.1, s, PER_EPOCH, EPOCHS) for s in range(1, EPOCHS * PER_EPOCH + 1)]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("section, make, per_step", [
    ({"kind": "step", "step_size": 2, "gamma": 0.5}, lambda o: sched.StepLR(o, 2, 0.5), False),
    ({"kind": "multistep", "milestones": [1, 3]}, lambda o: sched.MultiStepLR(o, [1, 3], 0.1), False),
    ({"kind": "cosine", "min_lr": 0.002}, lambda o: sched.CosineAnnealingLR(o, 35, 0.002), True),
    ({"kind": "cosine", "warmup": 1, "min_lr": 0.001}, lambda o: sched.SequentialLR(
        o, [sched.LinearLR(o, 1 / 7, 1.0, 6), sched.CosineAnnealingLR(o, 28, 0.001)], [7]), True),
    ({"kind": "onecycle"}, lambda o: sched.OneCycleLR(o, 0.1, total_steps=35,
                                                      cycle_momentum=False), True),
    ({"kind": "onecycle", "pct_start": 0.5, "div_factor": 10}, lambda o: sched.OneCycleLR(
        o, 0.1, total_steps=35, pct_start=0.5, div_factor=10, cycle_momentum=False), True),
], ids=["step", "multistep", "cosine", "cosine-warmup", "onecycle", "onecycle-args"])
def test_schedules_equal_torch(section, make, per_step):
    np.testing.assert_allclose(ours(**section), torch_rates(make, per_step), rtol=1e-12, atol=1e-15)


def test_constant_and_warmup_alone():
    assert ours() == [0.1] * 35
    rates = ours(warmup=2)  # 14 steps from 0.1/14 up to 0.1, then constant
    assert rates[:14] == pytest.approx([0.1 * (t + 1) / 14 for t in range(14)]) and rates[14:] == [0.1] * 21


# ---- one step against torch ----------------------------------------------------------------

NET = """name: net
inputs: {x: [2, 5]}
nodes:
  - {id: conv, op: conv1d, channels: 3, kernel: 3}
  - {id: bn, op: batchnorm1d}
  - {op: relu}
  - {op: flatten}
  - {id: fc, op: linear, features: 4}
outputs: [fc]
"""


@pytest.fixture(scope="module")
def net():
    return check_spec(NetworkSpec.from_text(NET, "net.yaml"))


def batch(n=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 2, 5)).astype(np.float32)
    return Batch(x, rng.integers(0, 4, n), np.ones(n, np.float32), n)


def our_step(checked, data, lr=0.5, **options):
    step = build_training_step(checked, batch=len(data.x), optimizer="sgd", **options)
    values = initial_state(checked, step, 0)
    runner = StepRunner(step, values, threads=1)
    loss, _, _ = runner.run(data, lr, 1)
    return values, runner.values(), loss, step


def torch_net(values, frozen_bn=False):
    conv, bn, fc = torch.nn.Conv1d(2, 3, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(9, 4)
    for module, prefix in ((conv, "conv"), (bn, "bn"), (fc, "fc")):
        for name, tensor in module.state_dict().items():
            if name in ("weight", "bias", "running_mean", "running_var"):
                tensor.copy_(torch.from_numpy(values[f"{prefix}.{name}"]))
    if frozen_bn:
        bn.eval()
        bn.requires_grad_(False)
    return torch.nn.Sequential(conv, bn, torch.nn.ReLU(), torch.nn.Flatten(), fc)


def torch_step(model, data, lr=0.5, smoothing=0.0, clip=None, decay=0.0, decay_1d=True):
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim > 1 or decay_1d], "weight_decay": decay},
              {"params": [p for p in params if p.ndim <= 1 and not decay_1d], "weight_decay": 0.0}]
    opt = torch.optim.SGD([g for g in groups if g["params"]], lr=lr)
    loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(data.x)),
                                             torch.from_numpy(data.y), label_smoothing=smoothing)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    return float(loss.detach())


def assert_same(model, values, skip=()):
    names = {"0": "conv", "1": "bn", "4": "fc"}
    for key, tensor in model.state_dict().items():
        index, name = key.split(".")
        if name != "num_batches_tracked" and f"{names[index]}.{name}" not in skip:
            np.testing.assert_allclose(values[f"{names[index]}.{name}"], tensor.numpy(),
                                       rtol=2e-5, atol=2e-6, err_msg=key)


@pytest.mark.parametrize("options", [
    {"label_smoothing": 0.1},
    {"clip_norm": 0.05},
    {"weight_decay": 0.1, "no_decay_norm_bias": True},
], ids=["label-smoothing", "clip-norm", "no-decay-norm-bias"])
def test_one_step_equals_torch(net, options):
    data = batch()
    before, after, loss, _ = our_step(net, data, **options)
    model = torch_net(before)
    expected = torch_step(model, data, smoothing=options.get("label_smoothing", 0.0),
                          clip=options.get("clip_norm"), decay=options.get("weight_decay", 0.0),
                          decay_1d=not options.get("no_decay_norm_bias", False))
    assert loss == pytest.approx(expected, rel=1e-5)
    assert_same(model, after)


def test_frozen_batchnorm_runs_in_inference_mode_between_trained_nodes(net):
    data = batch(seed=1)
    before, after, loss, step = our_step(net, data, freeze=["bn"])
    for name in ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
        np.testing.assert_array_equal(after[name], before[name])
    assert not any(n.endswith(".momentum") or n.startswith("bn.") and n.endswith((".m", ".v"))
                   for n in step.carried)
    model = torch_net(before, frozen_bn=True)
    assert loss == pytest.approx(torch_step(model, data), rel=1e-5)
    assert_same(model, after)  # conv's gradient went through the inference-mode batchnorm


def test_a_frozen_prefix_computes_no_gradients(net):
    _, after, _, step = our_step(net, batch(), freeze=["conv", "b*"])
    ops = [n.name for n in step.model.graph.node]
    assert not any(name.startswith(("conv/grad/", "bn/grad/")) for name in ops)
    assert any(name.startswith("fc/grad/") for name in ops)
    before = initial_state(net, step, 0)
    np.testing.assert_array_equal(after["conv.weight"], before["conv.weight"])
    assert not np.array_equal(after["fc.weight"], before["fc.weight"])
    with pytest.raises(CompileError, match="--freeze stage9: no node or block instance"):
        build_training_step(net, batch=2, freeze=["stage9"])


def test_freeze_names_block_instances():
    from graphcnn.train.freeze import frozen_ids
    from conftest import SPECS

    checked = check_spec(SPECS / "resnet18.yaml")
    ids = frozen_ids(checked, ["stage1", "stage2.block0"])
    assert "stage1.block1.conv2" in ids and "stage2.block0.add" in ids
    assert not any(i.startswith(("stage2.block1", "stage3")) for i in ids) and "stem.conv" not in ids


def test_head_classes_retargets_the_classifier(tmp_path, capsys):
    from PIL import Image
    from conftest import SPECS

    rng = np.random.default_rng(0)
    for name in ("ant", "bee", "cat", "dog"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(
                tmp_path / "data" / name / f"{i}.png")
    out = tmp_path / "four.onnx"
    code = main(["train", str(SPECS / "digits_cnn.yaml"), "--data", str(tmp_path / "data"),
                 "--head-classes", "4", "--epochs", "1", "--freeze", "conv1,bn1",
                 "--schedule", "cosine", "-o", str(out)])
    assert code == 0, capsys.readouterr()
    import onnx
    from graphcnn.deploy.preprocess import read_labels

    model = onnx.load(out)
    assert model.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 4
    assert read_labels(model) == ["ant", "bee", "cat", "dog"]
