"""The training step on CUDA as two captured CUDA graphs, one per direction of the ping-pong.

A step of the small ResNet is some 1,500 kernels of a few microseconds each: on an H100 it took
10.1 ms where PyTorch took 6.75, the GPU waiting for the host to launch each kernel.
onnxruntime's CUDA provider can capture a whole run as a CUDA graph and replay it with one
launch, provided that every node runs on the GPU and every input and output stays at the same
device address from run to run. The carried tensors ping-pong between two sets of buffers, so
the step is captured twice (run option `gpu_graph_id` 1: set A in, set B out; 2: B in, A out),
and the batch, labels, mask, learning rate and step number are copied into fixed device
buffers before each run. Where onnxruntime refuses the capture (a node on the CPU, an older
onnxruntime), the step runs uncaptured as before.

Off unless `GRAPHCNN_CUDA_GRAPH=1`: it has not yet run on a GPU (none was lent to the session
that wrote it); docs/cuda.md lists the check that turns it on by default.
"""
from __future__ import annotations

import os

import numpy as np

SWITCH = "GRAPHCNN_CUDA_GRAPH"


def wanted(provider: str) -> bool:
    return provider.lower() in ("cuda", "cudaexecutionprovider") and \
        os.environ.get(SWITCH, "0") == "1"


def graph_session(make, provider: str):
    """(session, captured?): `make(options)` builds the session; with CUDA graphs where the
    provider takes them, else without."""
    if wanted(provider):
        try:
            return make({"enable_cuda_graph": "1"}), True
        except Exception:  # noqa: BLE001 - a node on the CPU: onnxruntime refuses the capture
            pass
    return make(None), False


class FixedFeeds:
    """Device buffers for the step's per-batch inputs, written in place before each run, and
    the two runs' options (graph 1 reads set A, graph 2 set B)."""

    def __init__(self, ort, sess, step, base_options):
        shapes = {i.name: [d for d in i.shape] for i in sess.get_inputs()}
        kinds = {i.name: np.int64 if i.type == "tensor(int64)" else np.float32
                 for i in sess.get_inputs()}
        names = (step.data_input, step.label_input, step.mask_input, step.lr_input,
                 step.step_input)
        self.buffers = {n: ort.OrtValue.ortvalue_from_numpy(
            np.zeros(shapes[n], kinds[n]), "cuda", 0) for n in names}
        self.kinds = kinds
        self.options = [self._graph(ort, base_options, gid) for gid in (1, 2)]

    @staticmethod
    def _graph(ort, base, gid: int):
        options = ort.RunOptions()
        options.log_severity_level = base.log_severity_level
        options.add_run_config_entry("gpu_graph_id", str(gid))
        return options

    def write(self, io, values: dict[str, np.ndarray]) -> None:
        """Copy this step's inputs into the fixed buffers and bind them (same addresses)."""
        for name, value in values.items():
            buffer = self.buffers[name]
            buffer.update_inplace(np.ascontiguousarray(value, dtype=self.kinds[name]))
            io.bind_ortvalue_input(name, buffer)
