"""onnxruntime's failures as graphcnn errors: which ONNX node failed and, in a model graphcnn
wrote, which spec node it belongs to (graphcnn names ONNX nodes after spec ids: lower/emitter.py).

Every run of a session goes through `run_session` (or catches into `run_failure` around
run_with_iobinding), and `session` turns a refused model into `load_failure`'s error, so `run`,
`bench` and `train` never show onnxruntime's traceback.
"""
from __future__ import annotations

import re

from ..errors import RunError


def run_session(sess, feeds: dict, outputs: list[str] | None = None) -> list:
    """sess.run, a failure inside onnxruntime raised as run_failure's RunError."""
    try:
        return sess.run(outputs, feeds, quiet_run())
    except Exception as exc:  # onnxruntime's own types (Fail, InvalidArgument, ...)
        raise run_failure(sess, exc) from None


def quiet_run():
    """RunOptions under which onnxruntime does not log a failing node itself: run_failure
    raises it, and the raw log line would print it a second time, unformatted."""
    import onnxruntime as ort

    options = ort.RunOptions()
    options.log_severity_level = 4
    return options


# How onnxruntime names what failed: a kernel at run time ("... while running Reshape node.
# Name:'c/grad/Reshape4' Status Message: ..."), a node while loading ("Node (c/grad/Reshape4)
# Op (Reshape) [ShapeInferenceError] ..."), a fed tensor ("Got invalid dimensions for input:
# c.weight ...").
FAILED_NODE = re.compile(r"Name:'([^']*)'|Node \(([^)]*)\)")
FAILED_INPUT = re.compile(r"for input: (\S+)")
STEP_OUTPUTS = {"loss", "correct", "counted"}  # the step's metrics (reserved ids: graph/names.py)


def run_failure(sess, exc: Exception) -> RunError:
    """onnxruntime's failure during a run, as failure() says it."""
    ours = "graphcnn_version" in sess.get_modelmeta().custom_metadata_map
    return failure(exc, ours, "onnxruntime failed")


def load_failure(model, exc: Exception) -> RunError:
    """onnxruntime's refusal of a model (a path, bytes or ModelProto), as failure() says it."""
    props = getattr(model, "metadata_props", ())
    ours = any(p.key == "graphcnn_version" for p in props)
    return failure(exc, ours, "onnxruntime cannot load the model")


def failure(exc: Exception, ours: bool, doing: str) -> RunError:
    """A RunError naming the ONNX node (or input) onnxruntime names and, in a model graphcnn
    wrote (`ours`), the spec node that name belongs to (RunError.node)."""
    text = " ".join(str(exc).split())
    node, fed = FAILED_NODE.search(text), FAILED_INPUT.search(text)
    if node:
        name = node.group(1) or node.group(2)
        where, spec = f" at ONNX node '{name}'", node_owner(name)
    elif fed:
        where, spec = f" on input '{fed.group(1)}'", parameter_owner(fed.group(1))
    else:
        where, spec = "", None
    spec = spec if ours else None
    return RunError(doing + where, node=spec, received=status_message(text),
                    hint="if graphcnn wrote this file as it is, please report this with the spec"
                    if spec and node else None)


def status_message(text: str) -> str:
    """What onnxruntime says went wrong, without its error-code prefix and source location
    ("/onnxruntime_src/...reshape_helper.h:91 onnxruntime::ReshapeHelper::ReshapeHelper(...)")."""
    text = re.sub(r"^(\[ONNXRuntimeError\] : \d+ : \w+ : |Error in execution: )", "", text)
    text = text.split("Status Message: ", 1)[-1].split("[ShapeInferenceError] ", 1)[-1]
    return re.sub(r"^\S+\.(h|cc|cpp|cu):\d+ \S+?\(.*?\) ", "", text)[:400]


def node_owner(name: str) -> str | None:
    """The spec node of an ONNX node graphcnn named: `<id>` (the node's result), `<id>/<Op><n>`,
    `<id>/grad/...` (its backward), `<id>.<param>/update/...` (its parameter's update); the
    step's loss (`loss/...`), gradient clipping (`clip_norm/update/...`: no parameter) and
    named outputs (`output/loss`, `output/<carried>.new`) belong to none."""
    head, _, rest = name.partition("/")
    if rest.startswith("update/"):
        return parameter_owner(head)
    if head == "loss" or head == "output" and (rest in STEP_OUTPUTS or rest.endswith(".new")):
        return None
    return head


def parameter_owner(name: str) -> str | None:
    """`<id>.<param>` or an optimizer moment `<id>.<param>.m` -> `<id>`; a data input -> None."""
    for moment in (".momentum", ".m", ".v"):
        name = name.removesuffix(moment)
    return name.rpartition(".")[0] or None
