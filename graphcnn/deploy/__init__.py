"""Deployment transforms on compiled models: weights in and out, batchnorm folding, reduced
precision, int8 quantization, dynamic spatial axes, and benchmarking.

Every model transform shares one contract: it takes a model and returns a new one, and never
mutates its argument (`fold_batchnorm`, `precision.convert`, `quantize_int8`, `apply_dynamic`,
and the session-only NCHWc rewrite `runtime.blocked.blocked_convs`). A caller may keep using
the model it passed in; tests/test_transforms.py holds each of them to it.
"""
