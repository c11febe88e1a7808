"""Saving models: atomically, with external data past protobuf's 2 GiB limit."""
from __future__ import annotations

from pathlib import Path

import onnx
from google.protobuf.message import Message

from ..errors import CompileError, shown
from ..fileio import atomic_paths, write_atomic

PROTOBUF_LIMIT = 2 ** 31 - 1


def save_model(model: onnx.ModelProto, path: str | Path, pending=()) -> None:
    """Write `model` atomically, followed by `pending` parameters (lower(parameters=False),
    pending_parameters), which are drawn one at a time and written from their own memory.
    Nothing is written unless the model passes the ONNX full check."""
    path = Path(path)
    full_check(model, pending)
    head = without_initializers(model)
    if file_size(head, model) + sum(p.nbytes + 1024 for p in pending) < PROTOBUF_LIMIT:
        write_atomic(path, lambda tmp: write_streamed(head, model, tmp, pending))
        return
    for p in pending:  # past 2 GiB the weights go to external data: make them first
        tensor = model.graph.initializer.add()
        tensor.name, tensor.data_type = p.name, onnx.TensorProto.FLOAT
        tensor.dims.extend(p.shape)
        tensor.raw_data = p.values().tobytes()
    save_external(model, path)


def full_check(model: onnx.ModelProto, pending=()) -> None:
    """onnx.checker's full check (structure, SSA names, types, strict shape inference) of the
    model with each weight standing as a typed graph input: the same graph without copying the
    weights (which graphcnn writes itself from their shapes), so a model past 2 GiB or with
    weights still to be drawn is checked in milliseconds. A failure is a CompileError naming
    the spec node whose ONNX node it names."""
    skeleton = without_initializers(model)
    declared = {i.name for i in skeleton.graph.input}
    typed = [(t.name, t.data_type, list(t.dims)) for t in model.graph.initializer]
    typed += [(p.name, onnx.TensorProto.FLOAT, list(p.shape)) for p in pending]
    skeleton.graph.input.extend(onnx.helper.make_tensor_value_info(*t) for t in typed
                                if t[0] not in declared)
    try:
        onnx.checker.check_model(skeleton, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CompileError(f"the model fails the ONNX full check: {shown(text, 500)}",
                           node=_named_node(model, text),
                           hint="a spec id may equal a name graphcnn generates") from None


def _named_node(model: onnx.ModelProto, text: str) -> str | None:
    """The spec node id behind the first ONNX node or value named in `text` ('conv.weight')."""
    owner = {}
    for node in model.graph.node:
        spec_id = node.name.split("/")[0]
        for name in [node.name, *node.output]:
            owner.setdefault(name, spec_id)
    for quoted in text.split("'")[1::2]:
        if quoted in owner:
            return owner[quoted]
    return None


def file_size(head: onnx.ModelProto, model: onnx.ModelProto) -> int:
    """An upper bound of the serialized size. (upb's ByteSize() of the whole model serializes
    it: seconds and a full copy of the weights for a large model.)"""
    size = head.ByteSize()
    for tensor in model.graph.initializer:
        # from dims, not len(raw_data): reading raw_data copies the whole tensor into a bytes object
        size += _payload(tensor) + 1024 if tensor.HasField("raw_data") else tensor.ByteSize() + 16
    return size


def _payload(tensor: onnx.TensorProto) -> int:
    count = 1
    for d in tensor.dims:
        count *= d
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def write_streamed(head: onnx.ModelProto, model: onnx.ModelProto, path: Path, pending=()) -> None:
    """The model without its initializers, then one ModelProto(graph=GraphProto(initializer=[t]))
    per tensor. A protobuf parser merges concatenated messages (a repeated field appends), so the
    file reads back as the whole model, yet the weights are never held twice in memory as one
    SerializeToString() of the model would."""
    with open(path, "wb") as fh:
        fh.write(head.SerializeToString())
        for tensor in model.graph.initializer:
            data = tensor.SerializeToString()
            # ModelProto.graph (field 7) { GraphProto.initializer (field 5) { tensor } }, framed
            # by hand: building the message would copy the tensor once more
            inner = _field(5, len(data))
            fh.write(_field(7, len(inner) + len(data)) + inner)
            fh.write(data)
        for p, values in _prefetched(pending):
            header = tensor_header(p.name, p.shape, values.nbytes)
            inner = _field(5, len(header) + values.nbytes)
            fh.write(_field(7, len(inner) + len(header) + values.nbytes) + inner + header)
            fh.write(memoryview(values).cast("B"))  # the array's own memory: no bytes copy


PREFETCH_BYTES = 1 << 20  # smaller tensors are drawn inline: a thread hand-off costs more


def _prefetched(pending):
    """(parameter, values) pairs; a large tensor is drawn in a thread while the one before it is
    written: numpy's generator and file writes both release the GIL, so the two overlap. At most
    two tensors are held at once."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = {}
        for i, p in enumerate(pending):
            values = ahead.pop(i).result() if i in ahead else p.values()
            nxt = i + 1
            if nxt < len(pending) and pending[nxt].nbytes >= PREFETCH_BYTES:
                ahead[nxt] = pool.submit(pending[nxt].values)
            yield p, values
            del values


def tensor_header(name: str, shape, nbytes: int) -> bytes:
    """A float TensorProto up to its raw_data payload, in SerializeToString's field order:
    dims (1, varints), data_type (2) = FLOAT, name (8), raw_data (9) key and length."""
    out = bytearray()
    for d in shape:
        out += _varint(1 << 3) + _varint(d)
    out += _varint(2 << 3) + _varint(onnx.TensorProto.FLOAT)
    encoded = name.encode("utf-8")
    out += _field(8, len(encoded)) + encoded
    out += _field(9, nbytes)
    return bytes(out)


def _field(number: int, length: int) -> bytes:
    """The key and length of a length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(length)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    head = onnx.ModelProto()
    for field, value in model.ListFields():
        if field.name != "graph":
            _assign(head, field, value)
    for field, value in model.graph.ListFields():
        if field.name != "initializer":
            _assign(head.graph, field, value)
    return head


def _assign(msg, field, value) -> None:
    if isinstance(value, Message):
        getattr(msg, field.name).CopyFrom(value)
    elif isinstance(value, (str, bytes, int, float)):
        setattr(msg, field.name, value)
    else:  # a repeated field
        getattr(msg, field.name).extend(value)


def save_external(model: onnx.ModelProto, path: Path) -> None:
    """Weights go to `<name>.data` beside the model. Both are written in one temporary folder
    under their final names (onnx records the data file's name in the model and refuses a data
    file that exists already), then the data file is renamed into place, then the model."""
    data_name = path.name + ".data"
    with atomic_paths(path.parent / data_name, path) as (data_tmp, model_tmp):
        onnx.save_model(model, str(model_tmp.resolve()), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
        data_tmp.touch()  # no tensor past the threshold: still replace a previous data file
