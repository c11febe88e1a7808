"""Deployment transforms on compiled models: weights in and out, batchnorm folding, reduced
precision and int8 quantization, and benchmarking."""
