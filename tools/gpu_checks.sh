#!/usr/bin/env bash
# Every GPU check of the training issue (18) in one go, for a session that is lent a GPU:
# GPU time is scarce, so this runs each measurement once, side by side, and prints Markdown
# for docs/cuda.md. Needs onnxruntime-gpu (and torch with CUDA for the PyTorch columns).
#
#     bash tools/gpu_checks.sh [STEPS]      # about 6 minutes on an H100
#
# 1. the CUDA rows of bench_train (fp32; the step's two switches that wait for this check:
#    GRAPHCNN_CUDA_GRAPH=1, captured CUDA graphs; GRAPHCNN_WEIGHT_GRAD=conv, the weight
#    gradient as one cuDNN conv instead of the unfold), then fp16 and bf16 against torch AMP;
# 2. tools/check_cuda.py --precision (losses of fp16/bf16 steps against fp32 on CUDA);
# 3. the gradient tests on the CUDA provider, with both switches on, and the in-place updates'
#    (a step's new parameters written over the old ones in device memory).
# 4. compile --precision fp16|bf16 --provider cuda: the inference model's half compute there.
set -uo pipefail
cd "$(dirname "$0")/.."
steps=${1:-50}
nvidia-smi -L
bench() { python tools/bench_train.py --provider cuda --steps "$steps" --no-compile "$@"; }
echo "## fp32, as shipped"; bench
echo "## fp32, CUDA graphs"; GRAPHCNN_CUDA_GRAPH=1 bench --cases small_resnet,resnet18_64
echo "## fp32, weight gradient as a conv"; GRAPHCNN_WEIGHT_GRAD=conv bench --cases small_resnet,resnet18_64
echo "## fp32, both"; GRAPHCNN_CUDA_GRAPH=1 GRAPHCNN_WEIGHT_GRAD=conv bench --cases small_resnet,resnet18_64
for p in fp16 bf16; do
  echo "## $p against torch.autocast"; GRAPHCNN_CUDA_GRAPH=1 bench --precision "$p" --cases small_resnet,resnet18_64
done
echo "## precision check"; python tools/check_cuda.py --precision
echo "## gradient tests on CUDA, both switches on"
GRAPHCNN_CUDA_GRAPH=1 GRAPHCNN_WEIGHT_GRAD=conv GRAPHCNN_TEST_PROVIDER=cuda \
  python -m pytest -q -x tests/test_gradients.py tests/test_train_step.py tests/test_precision.py \
  tests/test_conv_phases.py
echo "## in-place updates on CUDA (captured graphs keep two buffers, so without them)"
GRAPHCNN_TEST_PROVIDER=cuda python -m pytest -q -x tests/test_in_place.py
echo "## compile --precision fp16 for CUDA: the report line says how much runs in half there"
for p in fp16 bf16; do
  graphcnn compile specs/resnet18.yaml --precision "$p" --provider cuda -o "/tmp/gpu_check_$p.onnx" \
    && graphcnn run "/tmp/gpu_check_$p.onnx" --provider cuda --batch 8
done
