#!/usr/bin/env bash
# One prepared GPU check for a lent device machine (run from the repository root; ~5 minutes on an H100/H200):
#   the test suite on the GPU's host, then per-stage timings of the full method on full-size random
#   architectures in float32 and float16. Results go to $OUT (or ./outputs/device_check).
#   Then batched evaluation: images/s and peak GPU memory at batch 1/4/8/16 for every precision setting (float32,
#   mixed = CLIP float32 + VAE/UNet bfloat16, bfloat16, mixed-float16, float16) for ViT-B/16 and ViT-L/14
#   (benchmarks/bench_device.py -> $OUT/batching.json).
#   TINY=1 runs only that last step, on the CPU with tiny random models and no new venv: a check of the logic
#   (with $PYTHON, default `python`: the interpreter that has the suite installed).
set -uo pipefail
OUT=${OUT:-outputs/device_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if [ "${TINY:-0}" = 1 ]; then
  exec "${PYTHON:-python}" benchmarks/bench_device.py --tiny --backbones ViT-B-16 --settings float32 mixed --batches 1 2 \
    --images 2 --image-size 64x80 --out "$OUT/batching.json"
fi
python3 -m venv .venv-gpu && . .venv-gpu/bin/activate
pip install -q torch==2.14.1 torchvision==0.29.1 && pip install -q -e ".[test]" 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python -m pytest -q -m "not slow" -x 2>&1 | tail -5 | tee "$OUT/tests.txt"
for backbone in ViT-B-16 ViT-L-14; do
  for dtype in float32 float16 bfloat16; do
    python benchmarks/bench_pipeline.py --backbone "$backbone" --sd --device cuda --dtype "$dtype" \
      --repeats 5 --out "$OUT/bench_${backbone}_${dtype}.json" 2>&1 | grep -v WARN | tee -a "$OUT/bench.txt"
  done
done
python benchmarks/bench_refine.py --device cuda --tokens 4096 2>&1 | tee "$OUT/refine.txt"
python benchmarks/bench_vfm.py --device cuda --vfm dino-b8 dinov2-b14 dinov2-l14 --repeats 5 \
  --out "$OUT/bench_vfm.json" 2>&1 | grep -v WARN | tee "$OUT/vfm.txt"
python benchmarks/bench_device.py --device cuda --out "$OUT/batching.json" 2>&1 | grep -v WARN | tee "$OUT/batching.txt"
